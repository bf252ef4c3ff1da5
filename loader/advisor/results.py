"""What ``loader advise`` returns and writes: frozen dataclasses whose ``to_dict()`` is the JSON schema.

``--json FILE`` writes :meth:`AdviseResult.to_dict`::

    {"device", "model", "image_size",
     "rows": [{"batch_size", "image_size", "status", "step_ms", "model_images_per_sec",
               "loader_images_per_sec", "end_to_end_images_per_sec", "data_wait_fraction",
               "peak_memory_mb", "bound",
               "trial": {"images", "steps", "train_loss", "val_loss", "val_accuracy"} or null,
               "rounds", "model_images_per_sec_min", "model_images_per_sec_max",
               "loader_images_per_sec_min", "loader_images_per_sec_max",
               "end_to_end_images_per_sec_min", "end_to_end_images_per_sec_max"}],
     "recommendation": {"batch_size", "largest_fitting", "input_bound", "lr", "text",
                        "measurements_overlap"}}

Each ``*_images_per_sec`` is the median over every measurement of the row
(``rounds`` interleaved rounds of ``repeats`` each), ``*_min`` / ``*_max``
their range. ``measurements_overlap`` is true when those ranges are wider
than the differences that decided the recommended batch size: the text then
says so, and the batch size is the medians' pick, not a confident one.

``status`` is ``"ok"``, ``"oom"`` or ``"over-budget"``; figures that were not
measured (everything after the failure of an ``oom`` row, the loader and end-to-end
figures of an ``over-budget`` one) are ``null``, and so is ``bound`` then.
Memory is in MB (10^6 bytes). The dataclasses also carry what the figures were
computed from (the raw :class:`~loader.measure.Timing` of each
measurement, the records a trial read), which the JSON leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from loader.measure import Timing

__all__ = ["AdviceRecommendation", "AdviseResult", "AdviseRow", "Bound", "Status", "TrialResult"]

Status = Literal["ok", "oom", "over-budget"]
Bound = Literal["input", "compute"]


@dataclass(frozen=True)
class TrialResult:
    """A fresh copy of the model trained on ``images`` training images in ``steps`` steps, then validated.

    ``train_loss``: mean loss of the last tenth of the steps (at least one),
    weighted by images. ``val_loss`` / ``val_accuracy`` (top-1, 0..1): over
    every record of the validation split, eval augmentation.
    """

    images: int
    steps: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float = 0.0
    initial_digest: str = ""        # training.state_digest of the copy before its first step
    val_images: int = 0
    # Distinct global record indices read for training / validation (sorted); not in the JSON.
    train_records: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), compare=False, repr=False)
    val_records: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"images": self.images, "steps": self.steps, "train_loss": self.train_loss,
                "val_loss": self.val_loss, "val_accuracy": self.val_accuracy}


@dataclass(frozen=True)
class AdviseRow:
    """One (batch size, image size): the model alone, the loader alone, both together, and memory.

    Each measurement runs ``repeats`` times per round, in ``rounds`` rounds
    interleaved with the other rows': ``model_images_per_sec`` is the median of
    ``t.count / t.seconds`` over ``model_timings`` (``step_ms`` the median of
    ``t.seconds / t.steps``), ``model_images_per_sec_min`` / ``_max`` their
    range; ``loader_images_per_sec`` and ``end_to_end_images_per_sec`` likewise
    from their timings;
    ``data_wait_fraction`` = ``sum(data_wait_s) / sum(t.seconds for t in end_to_end_timings)``.
    ``peak_memory_mb`` = ``step_memory_mb`` (peak of the train steps) +
    ``loader_memory_mb`` (the loader's batches in flight).
    """

    batch_size: int
    image_size: int
    status: Status
    step_ms: float | None = None
    model_images_per_sec: float | None = None
    loader_images_per_sec: float | None = None
    end_to_end_images_per_sec: float | None = None
    data_wait_fraction: float | None = None
    peak_memory_mb: float | None = None
    bound: Bound | None = None
    trial: TrialResult | None = None
    # what the figures come from (not in the JSON)
    model_timings: tuple[Timing, ...] = ()        # one per repeat
    loader_timings: tuple[Timing, ...] = ()
    end_to_end_timings: tuple[Timing, ...] = ()
    data_wait_s: tuple[float, ...] = ()           # seconds in next(loader), per end-to-end repeat
    step_memory_mb: float | None = None
    loader_memory_mb: float | None = None
    error: str | None = None        # the out-of-memory message, or how the budget was exceeded
    rounds: int = 0                 # rounds that measured this row (0: none, an oom row)
    model_images_per_sec_min: float | None = None
    model_images_per_sec_max: float | None = None
    loader_images_per_sec_min: float | None = None
    loader_images_per_sec_max: float | None = None
    end_to_end_images_per_sec_min: float | None = None
    end_to_end_images_per_sec_max: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "image_size": self.image_size, "status": self.status,
                "step_ms": self.step_ms, "model_images_per_sec": self.model_images_per_sec,
                "loader_images_per_sec": self.loader_images_per_sec,
                "end_to_end_images_per_sec": self.end_to_end_images_per_sec,
                "data_wait_fraction": self.data_wait_fraction, "peak_memory_mb": self.peak_memory_mb,
                "bound": self.bound, "trial": None if self.trial is None else self.trial.to_dict(),
                "rounds": self.rounds,
                "model_images_per_sec_min": self.model_images_per_sec_min,
                "model_images_per_sec_max": self.model_images_per_sec_max,
                "loader_images_per_sec_min": self.loader_images_per_sec_min,
                "loader_images_per_sec_max": self.loader_images_per_sec_max,
                "end_to_end_images_per_sec_min": self.end_to_end_images_per_sec_min,
                "end_to_end_images_per_sec_max": self.end_to_end_images_per_sec_max}


@dataclass(frozen=True)
class AdviceRecommendation:
    """The advice in numbers and in words (``text``).

    ``batch_size``: the smallest fitting batch whose end-to-end images/s is
    within ``tolerance`` of the best fitting row at ``image_size`` (the
    trial's best image size, else the largest swept);
    ``largest_fitting``: the largest batch that fit at that image size (within
    the budget less ``safety_margin``); ``input_bound`` at ``batch_size``;
    ``lr``: the linearly scaled learning rate when a base was given. All
    ``None`` when nothing fit. ``measurements_overlap``: the rows' ranges
    (min-max of their measurements) are wider than the differences that chose
    ``batch_size``, which is then the medians' pick, not a confident one.
    """

    batch_size: int | None
    largest_fitting: int | None
    input_bound: bool | None
    lr: float | None
    text: str
    image_size: int | None = None
    tolerance: float = 0.05
    safety_margin: float = 0.1
    memory_budget_mb: float | None = None
    suggestions: tuple[str, ...] = ()
    measurements_overlap: bool = False

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "largest_fitting": self.largest_fitting,
                "input_bound": self.input_bound, "lr": self.lr, "text": self.text,
                "measurements_overlap": self.measurements_overlap}


@dataclass(frozen=True)
class AdviseResult:
    """Everything ``loader advise`` measured and concluded; ``to_dict()`` is the ``--json`` object.

    ``image_size``: the image size the recommendation is for (the first one
    swept when nothing fit). ``interrupted``: Ctrl-C stopped the run, the rows
    are what was measured until then. ``notes``: remarks for humans (skipped
    batch sizes and why).
    """

    device: str
    model: str
    image_size: int
    rows: tuple[AdviseRow, ...]
    recommendation: AdviceRecommendation
    interrupted: bool = False
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"device": self.device, "model": self.model, "image_size": self.image_size,
                "rows": [r.to_dict() for r in self.rows], "recommendation": self.recommendation.to_dict()}
