"""Feeding DALI: one epoch's batches of (encoded bytes, crop window, flip, label, index, box, jitter).

:class:`EpochFeed` is the ``source`` of the pipeline's ``external_source`` (with
``cycle="raise"``). DALI calls ``next()`` once per batch, ahead of the consumer
(prefetch); raising ``StopIteration`` ends the epoch, after which the pipeline
must be ``reset()``. With the default ``cycle`` DALI never re-iterates the source
and every epoch after the first comes back empty.

DALI also calls ``iter()`` right when the source raises ``StopIteration``, i.e.
before the consumer knows which epoch comes next, so ``iter()`` changes nothing
here: the loader starts each epoch explicitly with :meth:`EpochFeed.start`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from loader import rng as rng_streams
from loader.augment.settings import Augment
from loader.errors import DatasetError
from loader.format.recordguard import RecordRejected
from loader.load.sampler import crop_windows

__all__ = ["EpochPlan", "EpochFeed"]

# Per-sample side data that travels through DALI with the batch (float32 each):
# the colour jitter (JitterParams.to_array) and the exact-eval geometry (EvalGeometry.to_fields).
_JITTER_FIELDS, _GEOMETRY_FIELDS = 8, 14


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch of one rank yields: record indices in order, from ``start_batch`` on."""

    epoch: int
    records: np.ndarray          # global record indices, in this rank's order
    positions: np.ndarray        # each record's position in the epoch order (keys the augment RNG)
    batch_size: int
    start_batch: int = 0


class EpochFeed:
    """Iterable over the batches of the current plan, for DALI's ``external_source``."""

    def __init__(self, dataset, *, train: bool, seed: int, history: int = 8, guard=None,
                 replace_bad: bool = False, augment: Augment | None = None, image_size: int = 224):
        self._dataset = dataset
        self._augment = augment if augment is not None else Augment()
        self._image_size = image_size
        self._guard = guard      # loader.format.recordguard.RecordGuard: keeps damaged records from DALI
        # on_error="replace": a bad record's slot takes the next good record of this rank's
        # epoch order (cyclically), so batches stay full and the choice depends only on the plan.
        self._replace_bad = replace_bad
        self.replaced: dict[int, int] = {}   # bad record -> the record that took its first slot
        self._train = train
        self._seed = seed
        self.plan: EpochPlan | None = None
        self._next_batch = 0
        self._stopped = False
        # Index arrays of the batches handed to DALI but maybe not yet returned:
        # where to look when a decode fails (DALI runs ahead of the consumer).
        self.in_flight: collections.deque[np.ndarray] = collections.deque(maxlen=history)

    def start(self, plan: EpochPlan) -> None:
        """Serve ``plan`` from its ``start_batch`` on (call before the pipeline runs or resets)."""
        self.plan = plan
        self._next_batch = plan.start_batch
        # A remote dataset (RemoteDataset.read_ahead) downloads this epoch's shards ahead, in the plan's order.
        if hasattr(self._dataset, "read_ahead"):
            self._dataset.read_ahead(plan.records[plan.start_batch * plan.batch_size:])
        self._stopped = False
        self.in_flight.clear()

    def __iter__(self):
        return self

    def _substitute(self, pos: int) -> int:
        """The first good record after epoch position ``pos`` of this rank's plan, cyclically."""
        records = self.plan.records
        bad = int(records[pos])
        for step in range(1, len(records)):
            j = int(records[(pos + step) % len(records)])
            if self._good(j):
                self.replaced.setdefault(bad, j)
                return j
        raise RecordRejected(bad, "no good record is left in this rank's epoch to replace it with")

    def _good(self, j: int) -> bool:
        """Whether record ``j`` may stand in for a bad one: it passes the guard and can be read."""
        try:
            return self._guard.good(j)
        except DatasetError:     # it cannot be read at all (a damaged LMDB page, cut short): bad too
            why: dict[int, str] = {}
            self._dataset.read_batch([j], unreadable=why)
            self._guard.bad.setdefault(j, why.get(j, "it cannot be read"))
            return False

    def stop(self) -> None:
        """End the current epoch early: the next ``next()`` raises StopIteration."""
        self._stopped = True

    def __next__(self):
        plan = self.plan
        if plan is None or self._stopped:
            raise StopIteration
        lo = self._next_batch * plan.batch_size
        if lo >= len(plan.records):
            raise StopIteration
        self._next_batch += 1
        records = plan.records[lo:lo + plan.batch_size]
        ds = self._dataset
        if self._guard is None or not self._replace_bad:
            data = ds.read_batch(records)   # a record it cannot read raises DatasetError naming it
            if self._guard is not None:
                self._guard.check(records, data)   # raises RecordRejected: DALI never sees the record
        else:
            # on_error="replace": a record that cannot be read at all (damaged LMDB page, cut short,
            # missing) is replaced like one whose bytes fail the guard.
            unreadable: dict[int, str] = {}
            data = ds.read_batch(records, unreadable=unreadable)
            for i, why in unreadable.items():
                self._guard.bad.setdefault(i, why)
            if bad := self._guard.bad_positions(records, data):
                records = records.copy()
                for k in bad:
                    records[k] = self._substitute(lo + k)
                data = ds.read_batch(records)
        self.in_flight.append(records)
        heights, widths = ds.heights[records], ds.widths[records]
        aug, n = self._augment, len(records)
        geometry = np.zeros((n, _GEOMETRY_FIELDS), np.float32)
        jitter = np.zeros((n, _JITTER_FIELDS), np.float32)
        if self._train:
            # One generator per batch, keyed by the batch's first epoch position:
            # the same crops whatever the prefetch depth, and after a resume.
            rng = rng_streams.batch_rng(self._seed, plan.epoch, plan.positions[lo], rng_streams.CROP)
            anchor, shape, flip = crop_windows(heights, widths, rng, scale=aug.scale, ratio=aug.ratio,
                                               hflip=aug.hflip)
            if aug.color_jitter.enabled:
                # Its own stream, so that jitter on or off leaves the crops as they are.
                p = aug.color_jitter.draw(
                    rng_streams.batch_rng(self._seed, plan.epoch, plan.positions[lo], rng_streams.JITTER), n)
                jitter[:] = p.to_array()
        elif aug.eval_mode == "torchvision":
            from loader.augment.torchvision_eval import eval_geometry

            g = eval_geometry(heights, widths, self._image_size, aug.crop_fraction)
            anchor, shape, geometry[:] = g.anchor, g.shape, g.to_fields()
            flip = np.zeros(n, np.uint8)
        else:
            anchor, shape, flip = crop_windows(heights, widths, None, crop_fraction=aug.crop_fraction)
        return (data, anchor.astype(np.float32), shape.astype(np.float32), flip.astype(np.int32),
                ds.labels[records].astype(np.int64), records.astype(np.int64), geometry, jitter)
