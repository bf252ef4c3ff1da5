"""The pipelines ``loader bench`` races, each built from one frozen :class:`ContenderSpec`.

* ``loader``          -- :class:`loader.ImageLoader` on the packed shards (DALI, ``threads``);
* ``dataloader``      -- ``torch.utils.data.DataLoader`` over the original image files with
                         torchvision-style PIL transforms (:mod:`loader.bench.baseline`, ``workers``);
* ``dataloader-lmdb`` -- the same DataLoader reading the packed shards instead of files
                         (separates the storage format from the decoder);
* ``decode-limit``    -- DALI region-of-interest decode and nothing else
                         (:mod:`loader.bench.decode_limit`): the ceiling; on CUDA the
                         nvJPEG decode of the loader's GPU graph alone.

When the packed dataset is a URL (``s3://...``) two more rows read it through the node-local
cache (``ImageLoader(url, cache_dir=..., cache_limit=...)``), beside ``loader`` on a local copy:

* ``loader (cold cache)`` -- a new contender on a fresh, empty ``cache_dir`` for every measurement
                             (the harness times its creation, index download included);
* ``loader (warm cache)`` -- one contender created on a cache the harness filled first
                             (every shard fetched once, as far as ``cache_limit`` lets them stay),
                             so its creation and first batch are a warm start's.

On CUDA the DataLoader baselines run the way a careful GPU user runs them:
``pin_memory=True`` and ``.to(device, non_blocking=True)``; :meth:`Contender.sync`
synchronizes the device before every clock read, so the copies are inside the
timed span.

A contender is created once per (batch size, image size) and stepped batch by
batch; :meth:`Contender.step` rolls over into the next epoch by itself, so a
measurement can run for any number of batches. Nothing here imports torch or
DALI until :meth:`Contender.create`.

>>> spec = ContenderSpec("loader", packed="photos.packed", batch_size=64, image_size=224)
>>> c = make_contender(spec)                       # doctest: +SKIP
>>> c.create(); c.step()                           # doctest: +SKIP
64
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loader.bench.procstat import descendants

__all__ = ["COLD", "CONTENDERS", "REMOTE_ROWS", "RUN_ORDER", "WARM", "Contender", "ContenderName",
           "ContenderSpec", "make_contender"]

ContenderName = Literal["loader", "dataloader", "dataloader-lmdb", "decode-limit",
                        "loader (cold cache)", "loader (warm cache)"]
# What --pipelines chooses from; the cache rows come with `loader` when the dataset is a URL.
CONTENDERS: tuple[ContenderName, ...] = ("loader", "dataloader", "dataloader-lmdb", "decode-limit")
COLD: ContenderName = "loader (cold cache)"
WARM: ContenderName = "loader (warm cache)"
REMOTE_ROWS: tuple[ContenderName, ...] = (COLD, WARM)
# The order rows come out in, and the first round's order (later rounds rotate it).
RUN_ORDER: tuple[ContenderName, ...] = ("dataloader", "dataloader-lmdb", "loader", WARM, COLD, "decode-limit")


@dataclass(frozen=True)
class ContenderSpec:
    """Everything one contender needs: which pipeline, on which data, with which settings.

    ``packed`` is the packed dataset every contender but ``dataloader`` reads;
    ``folder`` the original image folder (``dataloader`` only). ``device``:
    "cpu" or "cuda:N" (already resolved). ``threads``: DALI threads (``loader``,
    ``decode-limit``); ``workers``: DataLoader processes; ``prefetch``: DALI's
    queue depth in batches. ``eval_mode``: the ``loader`` row's eval (the DataLoader rows
    always run torchvision's, whose pixels ``"torchvision"`` reproduces). ``color_jitter``:
    brightness = contrast = saturation for the training rows, as ImageLoader's
    ``color_jitter`` and torchvision's PIL ``ColorJitter`` in the DataLoader rows
    (``decode-limit`` decodes only). ``url``, ``cache_dir``, ``cache_limit`` (bytes): the cache
    rows' dataset URL and ImageLoader's cache settings (None for the other rows, which read ``packed``).
    """

    name: ContenderName
    packed: str | Path
    batch_size: int
    image_size: int
    train: bool = True
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    workers: int = 0
    prefetch: int = 2
    folder: str | Path | None = None
    eval_mode: str = "fast"
    color_jitter: float = 0.0
    url: str | None = None
    cache_dir: str | Path | None = None
    cache_limit: int | None = None
    shuffle: str = "global"          # the loader rows' training order: "global" or "block"
    block_shards: int | None = None  # shuffle="block"'s window (None: ImageLoader's rule)


class Contender:
    """One pipeline under test: :meth:`create` once, then :meth:`step` batch by batch, then :meth:`close`."""

    def __init__(self, spec: ContenderSpec):
        self.spec = spec
        self.name = spec.name
        self.worker_pids: list[int] = []   # processes it started (their RSS counts as its memory)
        self.obj: Any = None
        self._it = None

    @property
    def queue_depth(self) -> int:
        """Batches it may prepare ahead while another contender runs (warm-up covers them)."""
        return self.spec.prefetch + 1

    def create(self) -> None:
        raise NotImplementedError

    def _next_batch(self):
        if self._it is None:
            self._it = iter(self.obj)
        try:
            return next(self._it)
        except StopIteration:   # next epoch
            self._it = iter(self.obj)
            return next(self._it)

    def step(self) -> int:
        """Consume one batch; return how many images it held."""
        raise NotImplementedError

    def first(self) -> int:
        """The first :meth:`step`, noting the processes it started."""
        before = set(descendants())
        n = self.step()
        self.worker_pids = sorted(set(descendants()) - before)
        return n

    def sync(self) -> None:
        """Wait for the device (CUDA work is asynchronous; the clock must not run ahead of it)."""
        if self.spec.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.spec.device)

    def close(self) -> None:
        """Release its threads, processes and shards now, not at garbage collection."""
        self._it = None
        obj, self.obj = self.obj, None
        if obj is not None and hasattr(obj, "close"):
            obj.close()


class _LoaderContender(Contender):
    loader_kwargs: dict = {}     # more ImageLoader arguments (the service rows': loader.bench.service)

    def create(self) -> None:
        from loader.augment.settings import Augment
        from loader.load.imageloader import ImageLoader

        s = self.spec
        where = dict(cache_dir=s.cache_dir, cache_limit=s.cache_limit) if s.url is not None else {}
        order = {"shuffle": s.shuffle, "block_shards": s.block_shards} if s.train else {}
        self.obj = ImageLoader(s.url if s.url is not None else s.packed, s.batch_size, image_size=s.image_size,
                               train=s.train, num_threads=s.threads, prefetch=s.prefetch, seed=s.seed,
                               device=s.device, **where, **order, **self.loader_kwargs,
                               augment=Augment(eval_mode=s.eval_mode, color_jitter=s.color_jitter or None))

    def step(self) -> int:
        _, labels = self._next_batch()
        return int(labels.shape[0])

    def close(self) -> None:
        ds = getattr(self.obj, "dataset", None)
        super().close()
        if ds is not None:
            ds.close()   # release the shards now (other contenders may fork workers next)


def fetch_all_shards(ds) -> None:
    """Fetch every shard of the :class:`~loader.format.dataset.RemoteDataset` ``ds`` into its cache (in
    order; under a ``cache_limit`` the least recently used ones make room), pinning none of them."""
    from loader.storage.cache import ShardCache

    for s, info in enumerate(ds.manifest.shards):
        ShardCache.unpin(ds.source.fetch_pinned(info, s))


class _DataLoaderContender(Contender):
    @property
    def queue_depth(self) -> int:
        w = self.spec.workers
        return 2 * w + 1 if w else 1   # DataLoader's prefetch_factor=2 per worker

    def create(self) -> None:
        from loader.augment.settings import as_color_jitter
        from loader.bench.baseline import ImageFolderDataset, PackedFileDataset, baseline_loader

        s = self.spec
        jitter = as_color_jitter(s.color_jitter or None)     # torchvision's PIL ColorJitter, per image
        if s.name == "dataloader":
            if s.folder is None:
                raise ValueError("the dataloader contender needs the image folder (ContenderSpec.folder)")
            ds = ImageFolderDataset(s.folder, s.image_size, s.train, s.seed, color_jitter=jitter)
        else:
            ds = PackedFileDataset(s.packed, s.image_size, s.train, s.seed, color_jitter=jitter)
        self.obj = baseline_loader(ds, s.batch_size, workers=s.workers, train=s.train, seed=s.seed,
                                   pin_memory=s.device.startswith("cuda"))

    def step(self) -> int:
        images, labels = self._next_batch()
        if self.spec.device.startswith("cuda"):   # deliver where the model is, as loader does
            # From pinned memory, asynchronous: the copy overlaps the next batch's fetch;
            # sync() before each clock read keeps it inside the measurement.
            images = images.to(self.spec.device, non_blocking=True)
            labels = labels.to(self.spec.device, non_blocking=True)
        return int(labels.shape[0])

    def close(self) -> None:
        # The DataLoader holds its persistent workers' iterator; once neither it
        # nor ours is referenced, the iterator's finalizer joins the workers.
        self._it = None
        self.obj = None
        gc.collect()


class _DecodeLimitContender(Contender):
    def create(self) -> None:
        from loader.bench.decode_limit import DecodeLimit
        from loader.format.dataset import open_dataset

        s = self.spec
        self.dataset = open_dataset(s.packed)
        device_id = int(s.device.split(":")[1]) if s.device.startswith("cuda") else None
        self.obj = DecodeLimit(self.dataset, s.batch_size, num_threads=s.threads, seed=s.seed,
                               prefetch=s.prefetch, device_id=device_id, train=s.train)

    def step(self) -> int:
        return int(next(self.obj))

    def close(self) -> None:
        super().close()
        ds, self.dataset = getattr(self, "dataset", None), None
        if ds is not None:
            ds.close()


_KINDS: dict[str, type[Contender]] = {
    "loader": _LoaderContender, "dataloader": _DataLoaderContender,
    "dataloader-lmdb": _DataLoaderContender, "decode-limit": _DecodeLimitContender,
    COLD: _LoaderContender, WARM: _LoaderContender,
}


def make_contender(spec: ContenderSpec) -> Contender:
    """The contender ``spec.name`` describes (not yet created)."""
    if spec.name not in _KINDS:
        raise ValueError(f"unknown contender {spec.name!r}; one of {', '.join(CONTENDERS + REMOTE_ROWS)}")
    if spec.name in REMOTE_ROWS and spec.url is None:
        raise ValueError(f"the {spec.name!r} contender reads a URL: set ContenderSpec.url")
    return _KINDS[spec.name](spec)
