"""What ``loader advise`` sweeps and how: :class:`AdviseSettings`, validated once, here.

``loader advise --help`` documents each field through its CLI option; a bad
value raises :class:`~loader.errors.LoaderError` naming that option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from loader.errors import LoaderError

__all__ = ["AdviseSettings", "default_batch_sizes"]

OPTIMIZERS = ("sgd", "adamw")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def default_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two from 8 up to ``max_batch_size``.

    >>> default_batch_sizes(100)
    (8, 16, 32, 64)
    """
    out, b = [], 8
    while b <= max_batch_size:
        out.append(b)
        b *= 2
    return tuple(out) or (max_batch_size,)


@dataclass(frozen=True)
class AdviseSettings:
    """The sweep: batch sizes x image sizes; each measurement is ``repeats`` x ``steps`` timed steps.

    Each repeat runs the model, the loader and the end-to-end loop in turn,
    ``steps`` timed steps after ``warmup`` untimed ones; rates are the median
    over the repeats.

    ``batch_sizes=None``: :func:`default_batch_sizes` of ``max_batch_size``.
    Either way the sweep of an image size stops at the first batch size that
    runs out of memory or over the budget. ``memory_budget_mb`` (MB = 10^6
    bytes; ``None``: the device's free memory on CUDA, no budget on CPU) less
    ``safety_margin`` (a fraction) is what a row may use. ``trial_images``:
    run the accuracy trial with this image budget per batch size.
    ``base_batch_size`` and ``base_lr`` (both or neither) scale the learning
    rate linearly; without them the trial uses ``training.DEFAULT_LR``.
    ``tolerance`` (API only; 0.05): how close to the best end-to-end images/s
    the recommended batch must be.
    """

    batch_sizes: tuple[int, ...] | None = None
    max_batch_size: int = 1024
    image_sizes: tuple[int, ...] = (224,)
    device: str = "auto"
    optimizer: Literal["sgd", "adamw"] = "sgd"
    amp: bool = False
    memory_budget_mb: float | None = None
    safety_margin: float = 0.1
    steps: int = 10
    warmup: int = 2
    repeats: int = 3
    trial_images: int | None = None
    validation_split: float = 0.2
    base_batch_size: int | None = None
    base_lr: float | None = None
    tolerance: float = 0.05
    threads: int | None = None
    prefetch: int = 2
    seed: int = 0

    def __post_init__(self):
        def set_(name, value):   # frozen: resolved defaults are filled in once, here
            object.__setattr__(self, name, value)

        for opt, v, least in (("--max-batch-size", self.max_batch_size, 1), ("--steps", self.steps, 1),
                              ("--repeats", self.repeats, 1),
                              ("--warmup", self.warmup, 0), ("--prefetch", self.prefetch, 1),
                              ("--seed", self.seed, 0)):
            if not _is_int(v) or v < least:
                raise LoaderError(f"{opt} must be an integer >= {least}, got {v!r}")
        if self.batch_sizes is None:
            set_("batch_sizes", default_batch_sizes(self.max_batch_size))
        set_("batch_sizes", tuple(sorted(set(self.batch_sizes))))
        set_("image_sizes", tuple(dict.fromkeys(self.image_sizes)))
        for opt, vals, least in (("--batch-sizes", self.batch_sizes, 1), ("--image-size", self.image_sizes, 8)):
            if not vals or any(not _is_int(v) or v < least for v in vals):
                raise LoaderError(f"{opt} must be comma-separated integers >= {least}, got "
                                  f"{','.join(map(str, vals))!r}")
        if self.optimizer not in OPTIMIZERS:
            raise LoaderError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for opt, v in (("--memory-budget", self.memory_budget_mb), ("--base-lr", self.base_lr)):
            if v is not None and (not isinstance(v, (int, float)) or not v > 0 or math.isinf(v)):
                raise LoaderError(f"{opt} must be a positive number, got {v!r}")
        for opt, v in (("--safety-margin", self.safety_margin), ("--tolerance", self.tolerance)):
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise LoaderError(f"{opt} must be a fraction in [0, 1), got {v!r}")
        if not isinstance(self.validation_split, float) or not 0 < self.validation_split < 1:
            raise LoaderError(f"--validation-split must be a fraction in (0, 1), got {self.validation_split!r}")
        for opt, v in (("--trial", self.trial_images), ("--base-batch-size", self.base_batch_size),
                       ("--threads", self.threads)):
            if v is not None and (not _is_int(v) or v < 1):
                raise LoaderError(f"{opt} must be an integer >= 1, got {v!r}")
        if (self.base_batch_size is None) != (self.base_lr is None):
            raise LoaderError("--base-batch-size and --base-lr go together: give both or neither")

    def lr_for(self, batch_size: int) -> float | None:
        """The linear scaling rule (Goyal et al. 2017): ``base_lr * batch_size / base_batch_size``, or None."""
        if self.base_lr is None:
            return None
        return self.base_lr * batch_size / self.base_batch_size
