"""``LoaderSettings``: every argument of :class:`loader.ImageLoader` but the path, validated once, frozen.

Each field is checked when the settings are built, so a bad argument is an
:class:`~loader.errors.ArgumentError` naming its parameter (``e.param``) at
``ImageLoader(...)``, not a numpy, DALI or out-of-memory failure at the first batch.
The loader reads its knobs from here only.

Sizes a parameter could blow up are bounded (each bound is a module constant):

- ``batch_size <= MAX_BATCH_SIZE`` (2**20): DALI reserves bookkeeping for every slot of its
  ``max_batch_size`` when the pipeline is built, used or not (measured with DALI 2.4's CPU
  backend: about 64 bytes per slot per operator output, 1 GB more at 2**24, ``std::bad_alloc``
  -- "Critical error when building pipeline" -- at 2**30; its constructor takes no more than
  2**31 - 1). 2**20 costs tens of MB there, and 2**20 images of 224 px are 150 GB in uint8.
- ``image_size <= MAX_SIDE`` and, for eval (``train=False``), the resized side
  ``floor(image_size / crop_fraction) <= MAX_SIDE`` (16384 px: one 3-channel float32 image of that
  side is 3 GiB); without the second, ``crop_fraction=1e-6`` resizes to 224 million px a side and
  runs until the OOM killer.
- ``prefetch <= MAX_PREFETCH`` batches held by DALI at once; ``num_threads <= MAX_THREADS``.
- ``seed`` in ``[0, 2**63)``: DALI's pipeline seed is a signed 64-bit int (it refuses 2**63),
  numpy's generators take any non-negative int.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from loader.augment.recipe import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD, pixel_units
from loader.augment.settings import Augment
from loader.augment.torchvision_eval import resize_of
from loader.errors import ArgumentError
from loader.load.pipeline import GPU_DECODES, resolve_gpu_decode
from loader.load.placement import resolve_device
from loader.service.settings import RayService
from loader.validate import is_int as _is_int
from loader.validate import is_number

__all__ = ["LoaderSettings", "MAX_BATCH_SIZE", "MAX_PREFETCH", "MAX_SIDE", "MAX_THREADS", "SEED_LIMIT",
           "DTYPES", "check_path", "resolve_augment"]

MAX_BATCH_SIZE = 2**20
MAX_SIDE = 16384
MAX_PREFETCH = 64
MAX_THREADS = 1024
SEED_LIMIT = 2**63

# torch dtype -> DALI's name for it (loader.load.pipeline.DALI_DTYPES).
DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.uint8: "uint8"}

# The keywords ImageLoader took one by one before ``augment=`` (deprecated): Augment's fields.
AUGMENT_KEYWORDS = tuple(f.name for f in fields(Augment))


def _int(name: str, v, lo: int, hi: int, why: str = "") -> int:
    """``v`` as an int in ``[lo, hi]`` (numpy ints too, never bools), else an ArgumentError naming ``name``."""
    if not _is_int(v) or not lo <= v <= hi:
        raise ArgumentError(f"{name} must be an int in [{lo}, {hi}]{why}, got {v!r}", param=name)
    return int(v)


def _bool(name: str, v, none_ok: bool = False) -> bool | None:
    """A bool (numpy's too), or None where ``none_ok``: ``train="no"`` would otherwise be truthy."""
    if v is None and none_ok:
        return None
    if not isinstance(v, (bool, np.bool_)):
        raise ArgumentError(f"{name} must be True or False{' or None' if none_ok else ''}, got {v!r}", param=name)
    return bool(v)


def _channel_values(name: str, v, channels: int, color_mode: str) -> tuple[float, ...]:
    """Per-channel mean or std: ``channels`` finite numbers in 0..1 units (std > 0)."""
    count = f"{channels} number{'s' * (channels > 1)}"
    want = (f"{name} must be {count} in 0..1 units (torchvision's, not 0..255){' and > 0' * (name == 'std')} "
            f"for color_mode={color_mode!r}")
    try:
        items = None if isinstance(v, (str, bytes)) else list(v)
    except TypeError:
        items = None
    if (items is None or len(items) != channels
            or not all(is_number(x) for x in items)):
        raise ArgumentError(f"{want}, got {v!r}", param=name)
    values = tuple(float(x) for x in items)
    if not all(math.isfinite(x) and (0.0 < x if name == "std" else 0.0 <= x) and x <= 1.0 for x in values):
        raise ArgumentError(f"{want}, got {v!r}", param=name)
    return values


def check_path(path) -> None:
    """``path`` must name a directory (str or os.PathLike); whether it is a packed dataset is
    :func:`loader.format.dataset.open_dataset`'s to say (a DatasetError naming it)."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise ArgumentError(f"path must be a str or os.PathLike (a directory written by `loader pack`), "
                            f"got {path!r}", param="path")


def resolve_augment(augment: Augment | None, flat: dict[str, Any], *, stacklevel: int) -> Augment:
    """``augment=`` or the deprecated flat keywords (``scale=``, ``hflip=`` ...) -> one :class:`Augment`.

    The flat keywords still work for one release with a DeprecationWarning naming the new form;
    both at once is an ArgumentError; any other keyword is refused as Python would (a TypeError).
    """
    for name in flat:
        if name not in AUGMENT_KEYWORDS:
            raise ArgumentError(f"ImageLoader() got an unexpected keyword argument {name!r}", param=name)
    if augment is not None and not isinstance(augment, Augment):
        raise ArgumentError(f"augment must be a loader.Augment(...) or None, got {augment!r}", param="augment")
    if not flat:
        return augment if augment is not None else Augment()
    given = ", ".join(f"{k}=..." for k in flat)
    if augment is not None:
        raise ArgumentError(f"augment= and {given} were both given: put {given} inside "
                            f"augment=loader.Augment({given})", param="augment")
    warnings.warn(f"ImageLoader({given}) is deprecated: pass augment=loader.Augment({given}); the flat "
                  f"keywords go in the next release", DeprecationWarning, stacklevel=stacklevel + 1)
    return Augment(**flat)


@dataclass(frozen=True)
class LoaderSettings:
    """What an :class:`~loader.ImageLoader` was asked for, validated (see the module docstring).

    ``shuffle``/``drop_last`` None become ``train``; ``seed`` None becomes a fresh random seed
    (``seed_drawn`` is then True); ``mean``/``std`` are tuples in 0..1 units (grayscale's defaults
    substituted; ``pixel_mean``/``pixel_std`` are the 0..255 values every path normalizes with);
    ``gpu_decode`` "auto" is resolved once, here. ``device`` is kept as given: the loader resolves
    it against the local rank when it builds its first pipeline.
    """

    batch_size: int
    image_size: int = 224
    train: bool = True
    shuffle: bool | None = None
    drop_last: bool | None = None
    seed: int | None = 0
    device: str | torch.device = "auto"
    num_threads: int | None = None
    prefetch: int = 2
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    mean: Sequence[float] | None = IMAGENET_MEAN
    std: Sequence[float] | None = IMAGENET_STD
    validation_split: float | None = None
    subset: str | None = None
    rank: int | None = None
    world_size: int | None = None
    with_indices: bool = False
    on_error: str = "raise"
    gpu_decode: str = "auto"
    augment: Augment = field(default_factory=Augment)
    batch_transform: Callable[..., Any] | None = None
    pad: bool = True
    cache_dir: str | os.PathLike | None = None
    cache_limit: int | str | None = None
    block_shards: int | None = None
    service: RayService | None = None
    seed_drawn: bool = field(default=False, init=False)
    shuffle_mode: str = field(default="global", init=False)     # "global", "block", or "off"

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        put("batch_size", _int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE,
                               " (DALI reserves memory for every slot of a batch when it builds the pipeline)"))
        put("image_size", _int("image_size", self.image_size, 8, MAX_SIDE))
        put("train", _bool("train", self.train))
        self._shuffle()
        put("drop_last", self.train if _bool("drop_last", self.drop_last, True) is None else bool(self.drop_last))
        if not isinstance(self.augment, Augment):
            raise ArgumentError(f"augment must be a loader.Augment(...), got {self.augment!r}", param="augment")
        if self.seed is None:
            if self.validation_split is not None:
                # Two loaders (training, validation) would each draw a seed: overlapping subsets.
                raise ArgumentError("seed=None with validation_split: the training and validation loaders "
                                    "would split differently and overlap; pass the same int seed to both",
                                    param="seed")
            put("seed", secrets.randbits(63))
            put("seed_drawn", True)
        if not _is_int(self.seed) or not 0 <= self.seed < SEED_LIMIT:
            raise ArgumentError(f"seed must be None (a random seed) or an int in [0, 2**63), got {self.seed!r}",
                                param="seed")
        put("seed", int(self.seed))
        resolve_device(self.device)          # the spelling, and CUDA's presence (the index: per rank, later)
        if self.num_threads is not None:
            put("num_threads", _int("num_threads", self.num_threads, 1, MAX_THREADS, " or None (cores / local ranks)"))
        put("prefetch", _int("prefetch", self.prefetch, 1, MAX_PREFETCH))
        if not isinstance(self.dtype, torch.dtype) or self.dtype not in DTYPES:
            raise ArgumentError(f"dtype must be one of torch.float32, torch.float16, torch.uint8, got {self.dtype!r}",
                                param="dtype")
        put("channels_last", _bool("channels_last", self.channels_last))
        self._normalization()
        self._split()
        for name in ("rank", "world_size"):
            v = getattr(self, name)
            if v is not None:
                put(name, _int(name, v, 0 if name == "rank" else 1, 2**31 - 1, " or None (torch.distributed / env)"))
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ArgumentError(f"rank must be in [0, world_size), got rank={self.rank}, "
                                f"world_size={self.world_size}", param="rank")
        put("with_indices", _bool("with_indices", self.with_indices))
        if not isinstance(self.on_error, str) or self.on_error not in ("raise", "replace"):
            raise ArgumentError(f"on_error must be 'raise' or 'replace', got {self.on_error!r}", param="on_error")
        if not isinstance(self.gpu_decode, str) or self.gpu_decode not in GPU_DECODES:
            raise ArgumentError(f"gpu_decode must be one of {', '.join(map(repr, GPU_DECODES))}, "
                                f"got {self.gpu_decode!r}", param="gpu_decode")
        put("gpu_decode", resolve_gpu_decode(self.gpu_decode))
        if self.batch_transform is not None and not callable(self.batch_transform):
            raise ArgumentError(f"batch_transform must be callable as f(images, targets, generator), "
                                f"got {self.batch_transform!r}", param="batch_transform")
        put("pad", _bool("pad", self.pad))
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise ArgumentError(f"cache_dir must be a folder (str or os.PathLike) or None, got {self.cache_dir!r}",
                                param="cache_dir")
        from loader.storage.cache import parse_bytes  # (standard library only)

        put("cache_limit", parse_bytes(self.cache_limit, "cache_limit"))
        if self.service is not None and not isinstance(self.service, RayService):
            raise ArgumentError(f"service must be None or a loader.RayService(num_workers=...), got {self.service!r}",
                                param="service")
        side = resize_of(self.image_size, self.augment.crop_fraction)
        if not self.train and side > MAX_SIDE:       # (training never resizes by crop_fraction)
            raise ArgumentError(
                f"crop_fraction={self.augment.crop_fraction!r} with image_size={self.image_size} resizes eval "
                f"images to {side} px a side (floor(image_size / crop_fraction)), over {MAX_SIDE}: pass "
                f"crop_fraction >= {self.image_size / MAX_SIDE:.4g} (e.g. 0.875)", param="crop_fraction")

    def _shuffle(self) -> None:
        """``shuffle``: None (``train``), a bool (True is "global"), "global" or "block"; ``shuffle`` keeps
        the bool (whether epochs are shuffled), ``shuffle_mode`` says how."""
        v = self.shuffle
        if isinstance(v, str) and v in ("global", "block"):
            mode = v
        else:
            if not (v is None or isinstance(v, (bool, np.bool_))):
                raise ArgumentError(f"shuffle must be True, False, None (train's), 'global' or 'block', got {v!r}",
                                    param="shuffle")
            mode = "global" if (self.train if v is None else bool(v)) else "off"
        object.__setattr__(self, "shuffle", mode != "off")
        object.__setattr__(self, "shuffle_mode", mode)
        if self.block_shards is not None:
            object.__setattr__(self, "block_shards", _int("block_shards", self.block_shards, 1, 2**31 - 1,
                                                          " or None (sized from cache_limit)"))
            if mode != "block":
                raise ArgumentError(f"block_shards={self.block_shards} is the window of shuffle='block', but "
                                    f"shuffle is {mode!r}: pass shuffle='block' or leave block_shards=None",
                                    param="block_shards")

    def _normalization(self) -> None:
        mean, std, channels = self.mean, self.std, self.augment.channels
        if (mean is None) != (std is None):
            raise ArgumentError("mean and std must both be given or both be None",
                                param="mean" if mean is None else "std")
        if self.dtype == torch.uint8 and mean is not None:
            raise ArgumentError("dtype=torch.uint8 gives raw pixels: pass mean=None, std=None", param="mean")
        if channels == 1 and mean is IMAGENET_MEAN and std is IMAGENET_STD:
            mean, std = GRAY_MEAN, GRAY_STD
        if mean is not None:
            mode = self.augment.color_mode
            object.__setattr__(self, "mean", _channel_values("mean", mean, channels, mode))
            object.__setattr__(self, "std", _channel_values("std", std, channels, mode))

    def _split(self) -> None:
        split, subset = self.validation_split, self.subset
        if split is not None and (not is_number(split)
                                  or not 0.0 < split < 1.0):
            raise ArgumentError(f"validation_split must be a float in (0, 1) or None, got {split!r}",
                                param="validation_split")
        if subset is not None and (not isinstance(subset, str) or subset not in ("training", "validation")):
            raise ArgumentError(f"subset must be 'training' or 'validation', got {subset!r}", param="subset")
        if (split is None) != (subset is None):
            raise ArgumentError(f"subset and validation_split go together (Keras' split): got "
                                f"validation_split={split!r}, subset={subset!r}", param="subset")
        if split is not None:
            object.__setattr__(self, "validation_split", float(split))

    @property
    def pixel_mean(self) -> tuple[float, ...] | None:
        """``mean`` in pixel units (0..255), what the DALI graph and the CPU finisher subtract."""
        return pixel_units(self.mean)

    @property
    def pixel_std(self) -> tuple[float, ...] | None:
        """``std`` in pixel units (0..255)."""
        return pixel_units(self.std)

    @property
    def dali_dtype(self) -> str:
        """``dtype``'s name in :data:`loader.load.pipeline.DALI_DTYPES`."""
        return DTYPES[self.dtype]

    def with_seed(self, seed: int) -> LoaderSettings:
        """These settings with ``seed`` (validated), still marked drawn if this one was: a ``seed=None``
        loader that adopts a restored run's seed keeps adopting (:meth:`loader.ImageLoader.load_state_dict`)."""
        new = replace(self, seed=seed)
        object.__setattr__(new, "seed_drawn", self.seed_drawn)
        return new
