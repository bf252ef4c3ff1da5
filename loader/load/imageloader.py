"""`ImageLoader`: the torch-facing iterator, a drop-in for a DataLoader over an image folder.

    # before
    loader = DataLoader(ImageFolder("photos/", transform=train_tf), batch_size=256, shuffle=True)
    # after  (once: `loader pack photos/ photos.packed`)
    loader = ImageLoader("photos.packed", batch_size=256)
    for epoch in range(epochs):
        for images, labels in loader:
            ...

It binds the pure pieces together: loader.format.dataset (records), loader.load.sampler
(order, rank share, crops), loader.load.feed (DALI's source) and loader.load.pipeline (the
DALI graph), and hands DALI's output to torch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch

from loader.augment.batch import batch_generator
from loader.augment.recipe import IMAGENET_MEAN, IMAGENET_STD
from loader.augment.settings import Augment
from loader.errors import ArgumentError, ConcurrentEpochError, DatasetError, DecodeError  # both: also exported here
from loader.format.dataset import RemoteDataset, open_dataset
from loader.format.recordguard import RecordGuard, RecordRejected
from loader.load.batches import BatchAssembler
from loader.load.buffers import BatchBuffers
from loader.load.culprits import culprit, decode_error, warn_replaced
from loader.load.feed import EpochFeed, EpochPlan
from loader.load.finisher import CpuFinisher
from loader.load.pipeline import GpuDecode, build_pipeline
from loader.load.placement import distributed_env, resolve_device, threads_per_rank
from loader.load.planner import EpochPlanner, EpochSetter, check_seed_agrees
from loader.load.sampler import (
    num_batches,
)
from loader.load.settings import LoaderSettings, check_path, resolve_augment
from loader.load.state import dataset_fingerprint, parse_state, resume_point
from loader.service.client import ServiceClient
from loader.service.settings import RayService
from loader.validate import is_int

__all__ = ["ImageLoader", "IMAGENET_MEAN", "IMAGENET_STD", "ConcurrentEpochError", "DecodeError", "resolve_device"]


def _from_settings(name: str) -> property:
    """A read-only attribute of the loader that is its validated setting ``name`` (one source of truth)."""
    return property(lambda self: getattr(self.settings, name),
                    doc=f"``{name}`` as validated at construction (:class:`loader.load.settings.LoaderSettings`).")


class ImageLoader:
    """Decode and augment a packed dataset with NVIDIA DALI; yield torch batches.

    Args:
        path: a directory written by ``loader pack``.
        batch_size: images per batch.
        image_size: output height and width.
        train: random-resized-crop + flip + colour jitter (``augment``), shuffled; else eval's
            resize + centre crop (``augment.eval_mode``, ``augment.crop_fraction``), in order.
        shuffle: default ``train``. True or "global": a full permutation per epoch; "block": shards
            permuted, records shuffled within windows of ``block_shards`` shards, each node reading
            its own windows (for a ``cache_limit`` smaller than the dataset; docs/remote.md#shuffle).
        block_shards: shuffle="block"'s window in shards; None: half of what fits in ``cache_limit``,
            at most shards / nodes. drop_last: default ``train`` (every batch full).
        seed: seeds the shuffle, the split and the augmentation, with the epoch: an int in
            ``[0, 2**63)``, or None (a DataLoader's default) for a fresh random seed drawn here,
            then readable as ``.seed`` and saved by :meth:`state_dict` (a ``seed=None`` loader
            takes a loaded state's seed). None needs one rank and no ``validation_split``.
        device: "auto" (CUDA if available), "cpu", "cuda", "cuda:N".
        num_threads: DALI CPU threads (default: cores / local ranks).
        prefetch: batches DALI prepares ahead.
        dtype: torch.float32, torch.float16 or torch.uint8 (uint8 needs mean=std=None).
        channels_last: images in channels_last memory format (no extra copy).
        mean, std: per-channel, in 0..1 units (like torchvision); None = no normalization.
        augment: a :class:`loader.Augment`: what each image goes through (default ``Augment()``, the
            ImageNet recipe): ``scale``, ``ratio`` (RandomResizedCrop), ``hflip``, ``color_jitter``
            (training); ``crop_fraction``, ``eval_mode`` ("fast" or "torchvision") for eval;
            ``color_mode`` ("rgb" or "grayscale": ``mean``/``std`` then take one number each,
            default the mean of ImageNet's: 0.449, 0.226). The same keywords passed to ImageLoader
            one by one (``hflip=0.0``) still work for one release, with a DeprecationWarning.
        batch_transform: ``f(images, targets, generator)`` called on every batch on the output
            device, after normalization; the loader yields what it returns (plus the indices
            with ``with_indices``). ``generator`` is a ``torch.Generator`` on that device seeded
            from (seed, epoch, rank, batch index), so mixup/cutmix replay exactly after a resume;
            see docs/imageloader.md#batch-transforms.
        validation_split, subset: Keras-style split ("training"/"validation").
        rank, world_size: DDP sharding (default: torch.distributed, then RANK/WORLD_SIZE).
        with_indices: also yield the batch's global record indices.
        on_error: what a damaged record does (bytes that no longer match the manifest's checksum,
            or a header whose size is not the manifest's; see :mod:`loader.format.recordguard`):
            "raise" (default) a :class:`DecodeError` naming it; "replace" its slot with the next
            good record of this rank's epoch order, warn once, and list it in ``bad_records``.
        gpu_decode: how the GPU path decodes (ignored on the CPU): "roi" decodes only the crop
            window (nvJPEG region decode); "full" decodes the whole image (hardware JPEG decoder
            included) and crops it on the GPU; "auto" (default) is "full" while the installed
            nvImageCodec is 0.9.x, whose region decode NVIDIA/nvImageCodec#55 reports crashing
            on H100, else "roi". Same pixels either way; see docs/gpu.md.
        pad: DDP only: False gives ranks uneven shares instead of repeating records to even them
            (eval: every record counted once).
        cache_dir, cache_limit: for a URL ``path`` (``s3://``, ``gs://``, ``az://``, ``file://``): the
            node-local cache of its shards (default ``$LOADER_CACHE`` or ``~/.cache/loader``) and its
            bound in bytes (an int or ``"50GB"``; None: unbounded); see docs/remote.md. A local path is
            read in place and ignores both.
        service: None (decode here), or a :class:`loader.RayService`: Ray actors decode and augment
            this rank's batches (the same bytes), the trainer normalizes them; see docs/service.md.

    Every argument is checked here (:class:`loader.load.settings.LoaderSettings`): a bad one is
    an :class:`loader.errors.ArgumentError` naming it (``e.param``), before any data is read.

    Example:
        >>> train_loader = ImageLoader("photos.packed", batch_size=256,               # doctest: +SKIP
        ...                            augment=loader.Augment(color_jitter=0.4))
        >>> for images, labels in train_loader:                                     # doctest: +SKIP
        ...     loss = criterion(model(images), labels)

    Targets follow the dataset's labels: int64 ``[B]`` class indices; float32 ``[B, classes]``
    multi-hot for a multi-label pack; int64 ``[B]`` record indices for an ``--unlabeled`` one.
    """

    def __init__(self, path: str | os.PathLike, batch_size: int, *, image_size: int = 224,
                 train: bool = True, shuffle: bool | None = None, drop_last: bool | None = None,
                 seed: int | None = 0, device: str | torch.device = "auto", num_threads: int | None = None,
                 prefetch: int = 2, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                 validation_split: float | None = None, subset: str | None = None,
                 rank: int | None = None, world_size: int | None = None, with_indices: bool = False,
                 on_error: Literal["raise", "replace"] = "raise", gpu_decode: GpuDecode = "auto",
                 augment: Augment | None = None, batch_transform: Callable[..., Any] | None = None,
                 pad: bool = True, cache_dir: str | os.PathLike | None = None,
                 cache_limit: int | str | None = None, block_shards: int | None = None,
                 service: RayService | None = None, **deprecated_augment: Any):
        check_path(path)
        self.settings = s = LoaderSettings(
            batch_size=batch_size, image_size=image_size, train=train, shuffle=shuffle, drop_last=drop_last,
            seed=seed, device=device, num_threads=num_threads, prefetch=prefetch, dtype=dtype,
            channels_last=channels_last, mean=mean, std=std, validation_split=validation_split, subset=subset,
            rank=rank, world_size=world_size, with_indices=with_indices, on_error=on_error, gpu_decode=gpu_decode,
            augment=resolve_augment(augment, deprecated_augment, stacklevel=2), batch_transform=batch_transform,
            pad=pad, cache_dir=cache_dir, cache_limit=cache_limit, block_shards=block_shards, service=service)

        # Rank and world size are looked up again at each epoch's start (and by len()) unless
        # given here: trainers such as Lightning build the loader first and start the other
        # ranks and the process group later, inside fit().
        self._rank_arg, self._world_arg = s.rank, s.world_size
        rank, world_size, local_rank = self._distribution()
        check_seed_agrees(s, world_size)

        self.dataset = open_dataset(path, cache_dir=s.cache_dir, cache_limit=s.cache_limit)
        self._planner = EpochPlanner(s, self.dataset, local_dataset=not isinstance(self.dataset, RemoteDataset))
        self._subset, self._n = self._planner.subset, self._planner.n
        if self._n == 0:
            raise ArgumentError(f"validation_split={s.validation_split} leaves subset {s.subset!r} of {path} empty "
                                f"({len(self.dataset)} records): raise validation_split or pack more records",
                                param="validation_split")
        # Resolved again (the local rank's GPU, its share of the cores) when the first pipeline is built.
        self.device = resolve_device(s.device, local_rank)
        self.num_threads = s.num_threads or threads_per_rank()
        self._assemble: BatchAssembler | None = None

        self._share(world_size)      # a batch larger than a rank's share is an error now, not at fit()
        self._epoch = 0              # the epoch the next iter() runs
        self._resume_batch = 0       # first batch of that epoch (load_state_dict)
        # That epoch's parts run before a resume on another world size (load_state_dict): the
        # next iter() splits what they left over this world size. () for a whole epoch.
        self._segments: tuple[tuple[int, int, int], ...] = ()
        self._running_segments: tuple[tuple[int, int, int], ...] = ()
        self._running: tuple[int, int] | None = None   # (epoch, batches yielded) while iterating
        self._feed: EpochFeed | None = None
        self._pipe = None
        self._finisher: CpuFinisher | None = None
        self._warned: set[int] = set()
        self._lock = threading.Lock()
        # Batches the consumer may still hold, plus one being filled, reuse no memory.
        self._buffers = BatchBuffers(capacity=4)
        # The decode service's actors (loader.service), started now: an unreachable pool fails here.
        self._service = s.service and ServiceClient(s.service, self.dataset, s, self._buffers, self.num_threads)
        # Which records were checked survives new pipelines (the service's: what its actors found).
        self._guard: RecordGuard | None = self._service.guard if self._service is not None else None

    batch_size = _from_settings("batch_size")
    image_size = _from_settings("image_size")
    train = _from_settings("train")
    shuffle = _from_settings("shuffle")
    drop_last = _from_settings("drop_last")
    seed = _from_settings("seed")
    prefetch = _from_settings("prefetch")
    dtype = _from_settings("dtype")
    channels_last = _from_settings("channels_last")
    mean = _from_settings("mean")
    std = _from_settings("std")
    with_indices = _from_settings("with_indices")
    on_error = _from_settings("on_error")
    gpu_decode = _from_settings("gpu_decode")
    augment = _from_settings("augment")
    batch_transform = _from_settings("batch_transform")
    pad = _from_settings("pad")

    # -- ranks ----------------------------------------------------------------
    def _distribution(self) -> tuple[int, int, int]:
        """(rank, world_size, local_rank) now: the explicit arguments, else torch.distributed, else env."""
        rank, world_size, local_rank = distributed_env(self._rank_arg, self._world_arg)
        if world_size < 1 or not (0 <= rank < world_size):
            raise ArgumentError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}",
                                param="rank")
        return rank, world_size, local_rank

    def _share(self, world_size: int, rank: int = 0) -> int:
        """Samples ``rank`` gets per epoch with ``world_size`` ranks (:meth:`EpochPlanner.share`)."""
        return self._planner.share(world_size, rank)

    @property
    def rank(self) -> int:
        """This process's rank, as of now (see :meth:`_distribution`)."""
        return self._distribution()[0]

    @property
    def world_size(self) -> int:
        """The number of ranks, as of now."""
        return self._distribution()[1]

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch, as of now."""
        rank, world_size, _ = self._distribution()
        return self._share(world_size, rank)

    # Lightning calls `dataloader.sampler.set_epoch(epoch)` at every epoch's start (and
    # restores the epoch from its checkpoints that way), as for a DistributedSampler.
    @property
    def sampler(self) -> EpochSetter:
        """What trainers and scripts use of a DataLoader's sampler: ``set_epoch(e)`` (:meth:`set_epoch`)
        and ``len()`` (``len(DistributedSampler)``: records per rank, the longest share)."""
        return EpochSetter(self)

    batch_sampler = None   # no torch batch sampler (trainers probe for one next to ``sampler``)

    # -- epochs -------------------------------------------------------------
    def __len__(self) -> int:
        """Batches in one epoch on this rank (the world size as of now)."""
        return num_batches(self.num_samples, self.batch_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        if not is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        if epoch != self._epoch:
            # Naming the epoch a restored state_dict resumes keeps its position,
            # so the usual `set_epoch(epoch)` at the top of the loop is safe after a resume.
            self._resume_batch, self._segments = 0, ()
        self._epoch = epoch

    def epoch_plan(self, epoch: int, start_batch: int = 0) -> EpochPlan:
        """The records this rank yields in ``epoch`` (global indices, in order).

        For the epoch a state saved on another world size resumes (:meth:`load_state_dict`):
        this rank's share of the rest of that epoch."""
        return self._plan(epoch, start_batch, self._segments if epoch == self._epoch else ())

    def _plan(self, epoch: int, start_batch: int, segments) -> EpochPlan:
        rank, world_size, _ = self._distribution()
        return self._planner.plan(epoch, start_batch, segments, rank, world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """The next epoch's batches. The epoch starts at the first ``next()``, not here:
        trainers call ``iter()`` only to check that a loader is iterable (Lightning does),
        and that must not use up an epoch."""
        return self._epoch_batches()

    _generation = 0   # epochs started by this loader: tells an iterator whether its epoch is still the one running

    def _epoch_batches(self):
        with self._lock:
            epoch, start, segments = self._epoch, self._resume_batch, self._segments
            self._epoch, self._resume_batch, self._segments = epoch + 1, 0, ()
            plan = self._plan(epoch, start, segments)
            if len(plan.records):        # pad=False, fewer records than ranks: this rank has none
                self._build(plan) if self._pipe is None else self._restart(plan)
            self._running, self._running_segments = (epoch, start), segments
            self._generation = generation = self._generation + 1
        for out in self._batches(epoch, start, plan):
            yield out
            # One pipeline serves one epoch at a time. An iterator abandoned for a newer one is
            # fine (Lightning does that) until it is used again: then its batches would be the
            # other epoch's, so it stops here, before touching the pipeline.
            if self._generation != generation:
                raise ConcurrentEpochError(
                    f"this iterator's epoch {epoch} of {self.dataset.where} was abandoned when another iter() of "
                    f"the same ImageLoader started a new epoch: one ImageLoader runs one epoch at a time; "
                    f"build a second ImageLoader for a second stream (e.g. zip(loader, loader))")

    def _build(self, plan: EpochPlan) -> None:
        """Start ``plan`` on a new pipeline: the first epoch's, or the next one's after a DALI error."""
        s = self.settings
        # The device and thread count follow the local rank as of the first epoch.
        _, world_size, local_rank = self._distribution()
        check_seed_agrees(s, world_size)
        self.device = resolve_device(s.device, local_rank)
        self.num_threads = s.num_threads or threads_per_rank()
        if self._service is not None:     # the actors run the graph; this process finishes their batches
            return self._service.start(plan, self.device, s.seed)
        if self._guard is None:
            self._guard = RecordGuard(self.dataset)
        self._feed = EpochFeed(self.dataset, train=s.train, seed=s.seed, history=s.prefetch + 4, guard=self._guard,
                               replace_bad=s.on_error == "replace", augment=s.augment, image_size=s.image_size)
        self._feed.start(plan)
        if self.device.type == "cpu":
            self._finisher = CpuFinisher(self.num_threads)
        self._assemble = BatchAssembler(
            dataset=self.dataset, device=self.device, dtype=s.dtype, image_size=s.image_size,
            channels_last=s.channels_last, augment=s.augment, train=s.train,
            pixel_mean=s.pixel_mean, pixel_std=s.pixel_std, buffers=self._buffers, finisher=self._finisher)
        self._pipe = build_pipeline(
            self._feed, batch_size=s.batch_size, num_threads=self.num_threads,
            device_id=self.device.index if self.device.type == "cuda" else None,
            prefetch=s.prefetch, seed=s.seed, image_size=s.image_size,
            dtype=s.dali_dtype, layout="HWC" if s.channels_last else "CHW",
            mean=s.pixel_mean, std=s.pixel_std, gpu_decode=s.gpu_decode,
            color_mode=s.augment.color_mode, exact_eval=self._assemble.exact_eval,
            jitter=self._assemble.jitter, **self._largest_image())

    def _restart(self, plan: EpochPlan) -> None:
        """Start ``plan`` on the running pipeline: finish the previous epoch (it may have been
        abandoned mid-way: DALI has batches in flight), drain it, then reset, which re-iterates the feed."""
        self._feed.stop()
        for _ in range(self.prefetch + 8):      # at most `prefetch` batches are in flight
            try:
                self._pipe.run()
            except StopIteration:
                break
            except Exception:  # noqa: BLE001 - a bad record in a batch nobody will see
                continue
        else:
            raise RuntimeError("DALI did not end the abandoned epoch (internal error)")
        self._feed.start(plan)
        self._pipe.reset()

    def _largest_image(self) -> dict:
        """The nvJPEG preallocation hints (GPU only): a scan of two columns, which on the CPU
        would fault in 80 MB of a 10M-record index for nothing."""
        if self.device.type != "cuda":
            return {"max_height": 0, "max_width": 0}
        return {"max_height": int(self.dataset.heights.max()), "max_width": int(self.dataset.widths.max())}

    def _batches(self, epoch: int, start: int, plan: EpochPlan):
        world_size = self.world_size
        for b in range(start, -(-len(plan.records) // plan.batch_size)):   # the plan's batches
            if self._world_arg is None and self.world_size != world_size:
                raise RuntimeError(f"the world size changed from {world_size} to {self.world_size} in the "
                                   f"middle of epoch {epoch}: build the loader's epochs after the process "
                                   f"group is set up, or pass rank= and world_size=")
            out = self._run_once(epoch, b)
            self._running = (epoch, b + 1)
            yield out
        # Finished: state_dict() now points at the next epoch. (If abandoned,
        # _running keeps pointing into this one until the next iter().)
        self._running = None

    @property
    def bad_records(self) -> list[int]:
        """Damaged records met so far in this process, sorted (with ``on_error="replace"``, each was replaced)."""
        return sorted(self._guard.bad) if self._guard is not None else []

    def _run_once(self, epoch: int, batch: int) -> tuple[torch.Tensor, ...]:
        images, targets, idx = self._service.batch(batch) if self._service is not None else self._local_batch()
        if self.batch_transform is not None:
            g = batch_generator(self.seed, epoch=epoch, rank=self.rank, batch=batch, device=self.device)
            out = self.batch_transform(images, targets, g)
            if not self.with_indices:
                return out
            return (*(out if isinstance(out, tuple) else (out,)), idx.to(self.device))
        return (images, targets, idx.to(self.device)) if self.with_indices else (images, targets)

    def _local_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next batch of this process's own pipeline: (images, targets, indices on the CPU)."""
        try:
            outputs = self._pipe.run()
        except StopIteration:
            raise RuntimeError("DALI ended the epoch early (internal error)") from None
        except RecordRejected as e:   # from the feed: DALI never saw the record
            self._release_pipeline()
            raise culprit(self.dataset, e.index, e.reason) from None
        except DatasetError:          # from the feed: a record missing from its shard (names it)
            self._release_pipeline()
            raise
        except RuntimeError as e:
            error = decode_error(self.dataset, self._feed.in_flight, e, batch_size=self.batch_size,
                                 num_threads=self.num_threads)
            # DALI pipelines are not reusable after an error: the next iter() builds a new one.
            self._release_pipeline()
            raise error from None
        if self._feed.replaced and len(self._warned) < len(self._feed.replaced):
            warn_replaced(self.dataset, self._feed.replaced, self._guard.bad, self._warned)
        return self._assemble(outputs)

    # -- resume -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: pass to :meth:`load_state_dict` to resume mid-epoch (keys: :mod:`loader.load.state`)."""
        if self._running is not None:
            (epoch, done), segments = self._running, self._running_segments
        else:
            epoch, done, segments = self._epoch, self._resume_batch, self._segments
        rank, world_size, _ = self._distribution()
        share = self._share(world_size, rank)
        # After a resume on another world size, the epoch's batches are this rank's share of its rest.
        part = len(self._planner.positions(segments, rank, world_size)) if segments else share
        return {"epoch": epoch, "batches_done": done, "seed": self.seed, "batch_size": self.batch_size,
                "num_samples": share, "num_batches": num_batches(part, self.batch_size, self.drop_last),
                "world_size": world_size, "rank": rank, "shuffle": self.shuffle, "drop_last": self.drop_last,
                "pad": self.pad, "num_records": len(self.dataset), "subset_records": self._n,
                "dataset": dataset_fingerprint(self.dataset), "segments": [list(p) for p in segments],
                "shuffle_mode": self.settings.shuffle_mode, **self._planner.block_state(world_size)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next ``iter()`` yields the batches the saved run would have yielded next.

        A state saved at an epoch's end (or before its first batch) loads into any loader of the
        same dataset; one saved mid-epoch needs the same ``seed``, ``shuffle``, ``drop_last``, ``pad``,
        split and global batch (``batch_size`` x ``world_size``). On another world size, the ranks
        split the rest of the epoch: every record not yet read is read once (in other batches, so
        with other crops). A loader built with ``seed=None`` takes the state's seed. Raises
        :class:`loader.errors.ArgumentError` (``param="state_dict"``, or ``"batch_size"`` for another
        global batch) otherwise.
        """
        saved = parse_state(state)
        epoch, start, segments, seed = resume_point(saved, self.state_dict(), seed_drawn=self._seed_drawn,
                                                    where=self.dataset.where)
        if seed is not None:
            self._adopt_seed(seed)
        self._epoch, self._resume_batch, self._segments = epoch, start, segments
        self._running = None

    @property
    def _seed_drawn(self) -> bool:
        """Whether ``seed=None`` drew this loader's seed (then :meth:`load_state_dict` adopts a state's)."""
        return self.settings.seed_drawn

    def _adopt_seed(self, seed: int) -> None:
        """Take a restored run's seed: the order and crops follow it from the next epoch on (a drawn
        seed never seeds a split: ``seed=None`` with ``validation_split`` is refused)."""
        self.settings = self._planner.settings = self.settings.with_seed(seed)
        # The feed and DALI's graph were built with the old seed: the next epoch builds them anew.
        self._release_pipeline()
        self._feed = None

    # -- lifecycle ----------------------------------------------------------
    def _release_pipeline(self) -> None:
        self._pipe = None
        self._assemble = None
        if self._finisher is not None:
            self._finisher.close()
            self._finisher = None

    def close(self) -> None:
        """Release DALI's threads and buffers and the service's actors (also done at garbage collection)."""
        self._release_pipeline()
        if getattr(self, "_service", None) is not None:
            self._service.close()
        self._feed = None
        self._buffers.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"ImageLoader({self.dataset.where!r}, batch_size={self.batch_size}, "
                f"image_size={self.image_size}, train={self.train}, device={str(self.device)!r}, "
                f"samples={self.num_samples}, batches={len(self)})")

