"""The ``loader advise`` run: check the model, sweep the rows, run the trials, conclude.

The first round measures the rows image size by image size, batch sizes
ascending, memory included; at an image size, the first row that is ``oom``
or ``over-budget`` ends the sweep (a larger batch needs more memory). Batch
sizes larger than the training subset are skipped with a note. The other
``rounds - 1`` rounds measure every row that fit again, round-robin
(:func:`loader.measure.interleaved`: all rows, then all rows again), so that
a busy spell of a shared machine falls on several rows rather than deciding
one; the figures are the medians over the rounds, with their range. Ctrl-C
raises :class:`AdviseInterrupted` carrying the result so far.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from loader.advisor.measure import OOM_ERRORS, Context, free_caches, measure_row, remeasure
from loader.advisor.modelspec import build_model, check_output, load_factory
from loader.advisor.recommend import recommend
from loader.advisor.results import AdviseResult, AdviseRow
from loader.advisor.settings import AdviseSettings
from loader.advisor.training import DEFAULT_LR, TrainStep, fresh_copy, seeded
from loader.advisor.trial import run_trial, trial_budget
from loader.errors import ArgumentError, LoaderError, one_line
from loader.measure import interleaved, resolve_run_device
from loader.units import MB, available_cores

__all__ = ["AdviseInterrupted", "advise"]


class AdviseInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`advise`: ``result`` holds what was measured so far."""

    def __init__(self, result: AdviseResult):
        super().__init__("interrupted")
        self.result = result


def _resolve_device(device: str):
    import torch

    dev = resolve_run_device(device, "loader advise")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def advise(dst: str | Path, *, model: str | Callable, settings: AdviseSettings | None = None,
           progress: bool | Callable[[str], None] = True, **options) -> AdviseResult:
    """Measure ``model`` fed by ``ImageLoader`` on the packed dataset ``dst``; recommend a batch size.

    ``model``: ``"MODULE:CALLABLE"`` (imported like an entry point) or the
    callable itself; it is called with ``num_classes=`` when it takes it and
    must return a ``torch.nn.Module`` giving ``[batch, num_classes]``.
    ``settings`` (an :class:`AdviseSettings`) or its fields as keyword
    ``options``, not both. ``progress``: True prints a line per measurement to
    stderr; a callable receives the lines instead. Returns an
    :class:`~loader.advisor.results.AdviseResult` (``.to_dict()`` is the
    ``--json`` object). Ctrl-C raises :class:`AdviseInterrupted` with the
    result so far. Errors in the model spec raise
    :class:`~loader.advisor.modelspec.ModelSpecError` (a ``LoaderError``).

    >>> r = advise("photos.packed", model="torchvision.models:resnet18", image_sizes=(160,))  # doctest: +SKIP
    >>> r.recommendation.batch_size                                                         # doctest: +SKIP
    64
    """
    if settings is not None and options:
        raise ArgumentError(f"give settings= or keyword options, not both; got settings and {sorted(options)}",
                            param="settings")
    s = settings if settings is not None else AdviseSettings(**options)
    log = progress if callable(progress) else (
        (lambda m: print(f"[advise] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None))
    import torch

    from loader.format.dataset import open_dataset
    from loader.load.sampler import split_indices

    if isinstance(model, str):   # a bad spec fails before the seconds of importing torch and DALI
        spec, factory = model, load_factory(model)
    elif callable(model):
        spec, factory = f"{getattr(model, '__module__', '?')}:{getattr(model, '__qualname__', repr(model))}", model
    else:
        raise ArgumentError(f"model must be 'MODULE:CALLABLE' or a callable, got {type(model).__name__}",
                            param="model")
    device = _resolve_device(s.device)
    ds = open_dataset(dst)
    num_classes, n = len(ds.manifest.classes), len(ds)
    kind = "multi-label" if ds.multi_label else "unlabeled" if ds.label_source == "none" else None
    ds.close()
    if kind is not None:
        # The sweep trains with cross-entropy and the trial scores top-1: both need one class per image.
        raise LoaderError(f"{dst} is {kind}; loader advise trains a classifier and needs one class per "
                          f"image (a folder pack, or a label file with single labels)", param="dst")
    n_train = len(split_indices(n, s.validation_split, "training", s.seed))
    n_val = n - n_train
    if n_val == 0:
        raise LoaderError(f"validation_split {s.validation_split:g} of {n} records in {dst} leaves no validation "
                          f"records; give a larger validation_split", param="validation_split")

    with seeded(s.seed, torch.device("cpu")):   # the one set of initial weights every row and trial copies
        base = build_model(factory, num_classes, spec=spec).cpu()
    for size in s.image_sizes:
        probe = fresh_copy(base, device)
        check_output(probe, num_classes, size, device, spec=spec)
    # One train step before any measurement: torch's one-time set-up (autograd, kernels, thread
    # pools) would otherwise be counted in the first row's memory and time.
    size0 = s.image_sizes[0]
    try:
        TrainStep(probe, device, optimizer=s.optimizer, lr=DEFAULT_LR[s.optimizer], amp=s.amp)(
            torch.zeros(2, 3, size0, size0, device=device), torch.zeros(2, dtype=torch.int64, device=device))
        error = None
    except OOM_ERRORS as e:
        error = one_line(e, limit=300)
    del probe
    free_caches(device)
    if error is not None:
        raise LoaderError(f"model {spec}: a train step of 2 images at {size0} px already runs out of memory "
                          f"on {device} ({error})", param="model")

    budget = s.memory_budget_mb
    if budget is None and device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] / MB   # free now; the warm-up's cache was given back
    ctx = Context(dst=Path(dst), device=device, base_model=base, settings=s, memory_budget_mb=budget)
    cores = available_cores()
    notes: list[str] = []
    rows: list[AdviseRow] = []

    def result(interrupted: bool) -> AdviseResult:
        rec = recommend(rows, s, memory_budget_mb=budget, device=str(device), cores=cores)
        return AdviseResult(device=str(device), model=spec, image_size=rec.image_size or s.image_sizes[0],
                            rows=tuple(rows), recommendation=rec, interrupted=interrupted,
                            notes=tuple(dict.fromkeys(notes)))

    log(f"{spec}: {sum(p.numel() for p in base.parameters())} parameters, {num_classes} classes; {n} records "
        f"({n_train} training, {n_val} validation); device {device}; "
        f"budget {'none' if budget is None else f'{budget:.0f} MB'}")
    try:
        for size in s.image_sizes:
            for b in s.batch_sizes:
                if b > n_train:
                    notes.append(f"batch sizes above {n_train} (the training subset of {dst}) were skipped")
                    break
                row = measure_row(ctx, b, size, log)
                rows.append(row)
                if not row.ok:
                    break
        again = [i for i, r in enumerate(rows) if r.ok]
        for r, i in interleaved(again, s.rounds - 1):   # round-robin over the rows that fit
            if rows[i].rounds < r + 1:       # a round that ran out of memory before: measured no more
                continue
            rows[i], error = remeasure(ctx, rows[i], log, round_no=r + 2)
            if error is not None:
                notes.append(f"batch {rows[i].batch_size} at {rows[i].image_size} px ran out of memory in round "
                             f"{r + 2}; its figures come from {rows[i].rounds} round(s)")
        if s.rounds == 1 and len(again) > 1:
            notes.append("one round (rounds=1): each row was measured in one stretch, so a busy spell of the "
                         "machine looks like a difference between batch sizes; rounds=3 or more interleaves them")
        if s.trial_images is not None:
            fitting = [i for i, r in enumerate(rows) if r.ok]
            images = trial_budget(s.trial_images, [rows[i].batch_size for i in fitting])
            if images != s.trial_images:
                notes.append(f"trial budget rounded down from {s.trial_images} to {images} images, a multiple of "
                             f"every batch size, so every step is a full batch")
            for i in fitting:
                r = rows[i]
                rows[i] = dataclasses.replace(r, trial=run_trial(ctx, r.batch_size, r.image_size, images, log))
    except KeyboardInterrupt:
        raise AdviseInterrupted(result(True)) from None
    return result(False)
