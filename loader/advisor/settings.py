"""What ``loader advise`` sweeps and how: :class:`AdviseSettings`, validated once, here.

``loader advise --help`` documents each field through its CLI option; a bad
value raises :class:`~loader.errors.ArgumentError` naming the field (the
fields ``loader bench`` has too are checked by :func:`loader.measure.check_shared`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from loader.errors import ArgumentError
from loader.measure import check_choice, check_fraction, check_int, check_number, check_shared

__all__ = ["AdviseSettings", "default_batch_sizes"]

OPTIMIZERS = ("sgd", "adamw")


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
    """The sweep: batch sizes x image sizes, each measured in ``rounds`` rounds of ``repeats``.

    A repeat runs the model, the loader and the end-to-end loop in turn,
    ``steps`` timed steps after ``warmup`` untimed ones. A round is
    ``repeats`` of them for one row; the rounds go round-robin over the rows
    (every row once, then every row again), so a slow spell of a shared
    machine spreads over the rows instead of deciding one. Rates are the
    medians over all of a row's measurements, reported with their range; when
    the ranges overlap more than the choice allows, the advice says so.

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
    repeats: int = 1
    trial_images: int | None = None
    validation_split: float = 0.2
    base_batch_size: int | None = None
    base_lr: float | None = None
    tolerance: float = 0.05
    threads: int | None = None
    prefetch: int = 2
    seed: int = 0
    rounds: int = 3

    def __post_init__(self):
        def set_(name, value):   # frozen: resolved defaults are filled in once, here
            object.__setattr__(self, name, value)

        check_int("max_batch_size", self.max_batch_size, 1)
        if self.batch_sizes is None:
            set_("batch_sizes", default_batch_sizes(self.max_batch_size))
        batch_sizes, image_sizes = check_shared(self)   # the fields `loader bench` has too: one home
        set_("batch_sizes", tuple(sorted(set(batch_sizes))))
        set_("image_sizes", tuple(dict.fromkeys(image_sizes)))
        check_int("steps", self.steps, 1)
        check_int("rounds", self.rounds, 1)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_number("base_lr", self.base_lr, optional=True)
        check_fraction("safety_margin", self.safety_margin)
        check_fraction("tolerance", self.tolerance)
        check_fraction("validation_split", self.validation_split, zero=False)
        check_int("trial_images", self.trial_images, 1, optional=True)
        check_int("base_batch_size", self.base_batch_size, 1, optional=True)
        if (self.base_batch_size is None) != (self.base_lr is None):
            raise ArgumentError(f"base_batch_size and base_lr go together: give both or neither, got "
                                f"base_batch_size={self.base_batch_size!r}, base_lr={self.base_lr!r}",
                                param="base_lr" if self.base_lr is None else "base_batch_size")

    def lr_for(self, batch_size: int) -> float | None:
        """The linear scaling rule (Goyal et al. 2017): ``base_lr * batch_size / base_batch_size``, or None."""
        if self.base_lr is None:
            return None
        return self.base_lr * batch_size / self.base_batch_size
