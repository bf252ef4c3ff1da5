"""One decode actor of the service: loader's CPU graph for a sub-plan of one rank's epoch.

:class:`DecodeWorker` is a plain class; :mod:`loader.service.client` makes it a Ray actor (no Ray
import here). Per epoch the trainer hands it the rank's whole :class:`~loader.load.feed.EpochPlan`
and the batches that are its own (``k``, ``k + N``, ... with N actors), so it runs one DALI
pipeline per epoch, not one per batch. Batch ``k`` is the same bytes whichever process makes it:
its records are ``plan.records[k*B:(k+1)*B]`` and its crops are drawn from (seed, epoch, the
epoch position of its first record) (:mod:`loader.rng`), never from what came before; and
``on_error="replace"`` looks for a stand-in in the whole plan, as the local feed does.

The actor stops where the uint8 work stops: region decode (DALI), the resize and the flip
(:class:`~loader.load.finisher.CpuFinisher`, the local loader's own code, so the same pixels).
The colour jitter and the normalization, which need floats (4x the bytes), are the trainer's
(:mod:`loader.service.receive`). Errors come back as values (``{"error": exc}``): the trainer
raises them as the local loader would, and a Ray task failure means the actor itself died.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from loader.errors import DatasetError, LoaderError, ServiceError, one_line
from loader.format.dataset import open_dataset
from loader.format.recordguard import RecordGuard, RecordRejected
from loader.load.culprits import culprit, decode_error
from loader.load.feed import EpochFeed, EpochPlan
from loader.load.finisher import CpuFinisher
from loader.load.pipeline import build_pipeline
from loader.load.state import dataset_fingerprint

__all__ = ["DecodeWorker", "SubPlanFeed"]


class SubPlanFeed(EpochFeed):
    """An :class:`EpochFeed` that serves only some batches of its plan, in the order given."""

    def start_batches(self, plan: EpochPlan, batches) -> None:
        """Serve ``batches`` (indices into ``plan``'s batches, increasing) of ``plan``."""
        self._batches, self._at = [int(k) for k in batches], 0
        self.plan, self._stopped = plan, False
        self.in_flight.clear()
        if hasattr(self._dataset, "read_ahead"):     # a remote dataset: only this actor's shards, in its order
            b = plan.batch_size
            mine = [plan.records[k * b:(k + 1) * b] for k in self._batches]
            self._dataset.read_ahead(np.concatenate(mine) if mine else plan.records[:0])

    def __next__(self):
        if self.plan is None or self._stopped or self._at >= len(self._batches):
            raise StopIteration
        self._next_batch = self._batches[self._at]      # EpochFeed serves batch _next_batch
        self._at += 1
        return super().__next__()


class DecodeWorker:
    """The actor's state: one dataset, one record guard, one pipeline reused across epochs.

    ``options``: ``train``, ``augment``, ``image_size``, ``batch_size``, ``on_error``, ``prefetch``,
    ``num_threads``, ``cache_dir``, ``cache_limit`` (the loader's validated settings).
    """

    def __init__(self, source: str, options: dict):
        self._o = o = dict(options)
        self._ds = open_dataset(source, cache_dir=o["cache_dir"], cache_limit=o["cache_limit"])
        self._guard = RecordGuard(self._ds)
        self._finisher = CpuFinisher(o["num_threads"])
        aug = o["augment"]
        self._exact_eval = not o["train"] and aug.eval_mode == "torchvision"
        self._jitter = o["train"] and aug.color_jitter.enabled
        self._feed: SubPlanFeed | None = None
        self._pipe = None
        self._seed: int | None = None
        self._generation = None
        self._queue: list[int] = []
        self._error: LoaderError | None = None

    def pid(self) -> int:
        """This actor's process id (the fault tests kill it)."""
        return os.getpid()

    def fingerprint(self) -> str:
        """:func:`loader.load.state.dataset_fingerprint` of the dataset as this node opened it."""
        return dataset_fingerprint(self._ds)

    def start(self, generation: int, seed: int, plan: EpochPlan, batches) -> None:
        """Make ``batches`` of ``plan`` (with ``seed``) the ones the next :meth:`batch` calls return."""
        self._generation, self._queue, self._error = generation, [int(k) for k in batches], None
        try:
            if self._pipe is not None and (seed != self._seed or not self._drained()):
                self._pipe = None                     # another seed (a resumed seed=None run), or a stuck one
            if self._pipe is None:
                o = self._o
                self._feed = SubPlanFeed(self._ds, train=o["train"], seed=seed, history=o["prefetch"] + 4,
                                         guard=self._guard, replace_bad=o["on_error"] == "replace",
                                         augment=o["augment"], image_size=o["image_size"])
                self._feed.start_batches(plan, self._queue)
                self._seed = seed
                self._pipe = build_pipeline(
                    self._feed, batch_size=o["batch_size"], num_threads=o["num_threads"], device_id=None,
                    prefetch=o["prefetch"], seed=seed, image_size=o["image_size"], color_mode=o["augment"].color_mode,
                    exact_eval=self._exact_eval, jitter=self._jitter)
            else:
                self._feed.start_batches(plan, self._queue)
                self._pipe.reset()
        except LoaderError as e:                     # e.g. a shard that cannot be read: said at batch()
            self._pipe, self._error = None, e
        except Exception as e:  # noqa: BLE001 - said at batch(), where the trainer waits
            self._pipe, self._error = None, ServiceError(f"a decode actor could not start epoch {plan.epoch}: "
                                                         f"{one_line(e, 300)}")

    def _drained(self) -> bool:
        """End the running epoch (it may have been left mid-way): True once DALI has nothing in flight."""
        self._feed.stop()
        for _ in range(self._o["prefetch"] + 8):     # at most `prefetch` batches are in flight
            try:
                self._pipe.run()
            except StopIteration:
                return True
            except Exception:  # noqa: BLE001 - a bad record in a batch nobody will see
                continue
        return False

    def batch(self, generation: int, k: int) -> dict:
        """Batch ``k`` of the current plan: uint8 images ``[B, S, S, C]`` (resized, flipped), the record
        indices, the jitter rows (None without jitter), and the records found bad so far."""
        if generation != self._generation or not self._queue or self._queue[0] != k:
            want = self._queue[0] if self._queue else None
            raise RuntimeError(f"decode actor asked for batch {k} of generation {generation}, but its next is "
                               f"{want} of {self._generation} (internal error)")
        self._queue.pop(0)
        if self._error is not None:
            return {"error": self._error}
        try:
            outputs = self._pipe.run()
        except StopIteration:
            raise RuntimeError("DALI ended the actor's epoch early (internal error)") from None
        except RecordRejected as e:
            return self._failed(culprit(self._ds, e.index, e.reason))
        except DatasetError as e:
            return self._failed(e)
        except RuntimeError as e:
            return self._failed(decode_error(self._ds, self._feed.in_flight, e, batch_size=self._o["batch_size"],
                                             num_threads=self._o["num_threads"]))
        images, _labels, indices, flips, geometry, jit = outputs
        idx = np.asarray(indices.as_tensor()).reshape(-1).astype(np.int64)
        n, size, channels = len(idx), self._o["image_size"], self._o["augment"].channels
        out = np.empty((n, size, size, channels), np.uint8)
        geo = None
        if self._exact_eval:
            from loader.augment.torchvision_eval import EvalGeometry, resize_of

            geo = EvalGeometry.from_fields(np.asarray(geometry.as_tensor()), size,
                                           resize_of(size, self._o["augment"].crop_fraction))
        # Resized and flipped into uint8 NHWC (a channels-last NCHW view): what the local finisher
        # computes before its float steps, so the trainer's float steps see the same pixels.
        self._finisher([np.asarray(t) for t in images], np.asarray(flips.as_tensor()).reshape(n).tolist(),
                       torch.from_numpy(out).permute(0, 3, 1, 2), geometry=geo)
        return {"images": out, "indices": idx,
                "jitter": np.asarray(jit.as_tensor()).reshape(n, -1).copy() if self._jitter else None,
                "replaced": dict(self._feed.replaced), "bad": dict(self._guard.bad)}

    def _failed(self, error: LoaderError) -> dict:
        # DALI pipelines are not reusable after an error: the next start() builds a new one.
        self._pipe, self._queue = None, []
        return {"error": error}
