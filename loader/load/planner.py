"""The epoch plan of one rank: which records, in which order, from (seed, epoch, rank, world size).

:class:`EpochPlanner` binds the pure numpy pieces of :mod:`loader.load.sampler` to one loader's
settings and dataset: the record subset (a validation split), the order (the global permutation or
``shuffle="block"``'s shard windows), this rank's share (with or without padding), and the rest of
an epoch resumed on another world size (``segments``, :mod:`loader.load.state`). ``ImageLoader``
asks it for plans and shares; it holds no DALI and no torch. :class:`EpochSetter` is
``ImageLoader.sampler`` (what trainers use of a ``DistributedSampler``); :func:`check_seed_agrees`
refuses a drawn seed on more than one rank.
"""

from __future__ import annotations

import warnings

import numpy as np

from loader.errors import ArgumentError
from loader.load.feed import EpochPlan
from loader.load.placement import env_int
from loader.load.sampler import (
    block_order,
    block_window,
    epoch_order,
    nodes_of,
    resumed_positions,
    share_size,
    split_indices,
)

__all__ = ["EpochPlanner", "EpochSetter", "check_seed_agrees"]


class EpochPlanner:
    """Plans for one loader: ``settings`` (a :class:`loader.load.settings.LoaderSettings`) over ``dataset``."""

    def __init__(self, settings, dataset, *, local_dataset: bool):
        self.settings, self.dataset = settings, dataset
        self._local = local_dataset          # read in place: shuffle="block" ignores cache_limit
        s = settings
        # The records this loader draws from: None is all of them (no O(records) index array
        # per rank); a validation split keeps its subset, int32 below 2**31 records.
        self.subset = (None if s.validation_split is None
                       else split_indices(len(dataset), s.validation_split, s.subset, s.seed))
        self.n = len(dataset) if self.subset is None else len(self.subset)
        if s.shuffle_mode == "block":
            _warn_if_class_sorted(dataset)

    def share(self, world_size: int, rank: int = 0) -> int:
        """Samples ``rank`` gets per epoch with ``world_size`` ranks (the same on every rank but with ``pad=False``)."""
        s = self.settings
        if not s.pad and s.drop_last:
            # drop_last already gives every rank an equal share with nothing repeated; pad=False
            # asks for every record once, which drop_last cannot give: say so rather than ignore it.
            raise ArgumentError("pad=False (every record exactly once over the ranks) needs drop_last=False: "
                                "with drop_last=True each rank gets an equal share and the remainder is "
                                "dropped; pass drop_last=False (train=False does) or leave pad=True", param="pad")
        share = share_size(self.n, world_size, s.batch_size, s.drop_last, pad=s.pad, rank=rank)
        if share == 0 and s.drop_last:     # (pad=False: fewer records than ranks leaves a rank none; fine)
            raise ArgumentError(
                f"batch_size={s.batch_size} is larger than this rank's share of {self.dataset.where} "
                f"({self.n // world_size} of {self.n} records over {world_size} "
                f"rank(s)) with drop_last=True: lower batch_size or pass drop_last=False", param="batch_size")
        return share

    def positions(self, segments, rank: int, world_size: int) -> np.ndarray:
        """This rank's epoch positions (of the rest of the epoch after ``segments``, if any)."""
        s = self.settings
        return resumed_positions(self.n, segments, rank, world_size, s.batch_size, s.drop_last, pad=s.pad)

    def plan(self, epoch: int, start_batch: int, segments, rank: int, world_size: int) -> EpochPlan:
        """The records ``rank`` yields in ``epoch`` (global indices, in order), from ``start_batch`` on."""
        s = self.settings
        # Per rank, only the share's arrays outlive this call (the epoch's permutation is
        # needed whole, as on every rank, to agree on the order).
        positions = self.positions(segments, rank, world_size)
        order = (self._block_order(epoch, world_size) if s.shuffle_mode == "block"
                 else epoch_order(self.n, s.seed, epoch, s.shuffle))
        records = order[positions]
        if self.subset is not None:
            records = self.subset[records]
        return EpochPlan(epoch=epoch, records=records.astype(np.int64), positions=positions,
                         batch_size=s.batch_size, start_batch=start_batch)

    def block(self, world_size: int) -> tuple[int, int]:
        """(window in shards, local world size) of shuffle="block" on ``world_size`` ranks."""
        local = env_int("LOCAL_WORLD_SIZE", 1, least=1)
        shards = self.dataset.manifest.shards
        limit = None if self._local else self.settings.cache_limit      # local: read in place
        return block_window(len(shards), nodes_of(world_size, local), block_shards=self.settings.block_shards,
                            cache_limit=limit, largest_shard=max((sh.bytes for sh in shards), default=1)), local

    def block_state(self, world_size: int) -> dict[str, int]:
        """shuffle="block"'s window and local world size (0 and 0 otherwise): a mid-epoch resume needs them."""
        if self.settings.shuffle_mode != "block":
            return {"block_shards": 0, "local_world_size": 0}
        window, local = self.block(world_size)
        return {"block_shards": window, "local_world_size": local}

    def _block_order(self, epoch: int, world_size: int) -> np.ndarray:
        """shuffle="block"'s epoch order (:func:`loader.load.sampler.block_order`)."""
        s = self.settings
        window, local = self.block(world_size)
        shards = self.dataset.manifest.shards
        records = np.arange(self.n) if self.subset is None else self.subset
        shard_of = np.searchsorted(np.array([sh.first for sh in shards]), records, side="right") - 1
        return block_order(shard_of, len(shards), s.seed, epoch, window, world_size=world_size,
                           local_world_size=local, batch_size=s.batch_size, drop_last=s.drop_last, pad=s.pad)


def check_seed_agrees(settings, world_size: int) -> None:
    """A drawn seed (``seed=None``) is this process's own: with more than one rank the ranks would
    each shuffle their own way and share records out twice or not at all."""
    if settings.seed_drawn and world_size > 1:
        raise ArgumentError(f"seed=None draws a seed per process, but the {world_size} ranks must agree on the "
                            f"order: pass the same int seed on every rank (e.g. seed=0)", param="seed")


class EpochSetter:
    """``ImageLoader.sampler``: what scripts and trainers use of a ``DistributedSampler``."""

    def __init__(self, loader):
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        """:meth:`ImageLoader.set_epoch`."""
        self._loader.set_epoch(epoch)

    def __len__(self) -> int:
        """``len(DistributedSampler)`` of the same split: records per rank per epoch, the longest
        share (``ceil(n / world_size)`` without ``drop_last``). With ``pad=False`` the last ranks
        yield one fewer (their own count: ``loader.num_samples``), and this keeps imagenet/main.py's
        ``len(sampler) * world_size < len(dataset)`` (records no rank saw?) false on every rank."""
        ld = self._loader
        return ld._share(ld.world_size, 0)       # rank 0's share is the longest

def _warn_if_class_sorted(dataset) -> None:
    """shuffle="block" over a pack written class by class: batches of a few classes, a measured 0.93 ->
    0.69 top-1 (docs/remote.md#shuffle). One line saying how to re-pack."""
    m = dataset.manifest
    if m.label_source == "folders" and len(m.classes) > 1 and m.pack_params.get("shuffle_seed") is None:
        warnings.warn(f"loader: {dataset.where} was packed class by class (its shards are class-sorted), so "
                      f"shuffle='block' gives batches of a few classes and costs accuracy; re-pack with "
                      f"`loader pack SRC DST --shuffle-seed 0` (docs/remote.md#shuffle), or use shuffle=True",
                      UserWarning, stacklevel=4)
