"""The baseline: the standard PyTorch input pipeline most users have today.

``DataLoader(ImageFolder(root, transform=...), num_workers=N)`` with torchvision's
PIL transforms, re-implemented here without torchvision (which this project does
not depend on) but following it step for step, so ``loader bench`` compares
:class:`loader.ImageLoader` against what people actually run:

* train: ``RandomResizedCrop(size)`` (scale 0.08-1, ratio 3/4-4/3, bilinear),
  ``RandomHorizontalFlip()``, optionally ``ColorJitter(...)`` (PIL's ``ImageEnhance``
  and HSV hue shift, in a random order, as torchvision's PIL path), ``ToTensor()``,
  ``Normalize(mean, std)``;
* eval: ``Resize(int(size / 0.875))`` (shorter side, bilinear), ``CenterCrop(size)``,
  ``ToTensor()``, ``Normalize(mean, std)``.

Decoding is PIL's (``Image.open(...).convert("RGB")``, the full image). The
crop and resize are ``Image.crop`` then ``Image.resize`` as torchvision's
``F.resized_crop`` does, and ToTensor/Normalize run per image with torch ops as
in torchvision, including the copy ``Normalize`` makes (``inplace=False``) and
its zero-std check. Nothing is tuned beyond what torchvision does, and nothing
is slowed down either. The one difference: crop parameters are drawn with a
numpy generator rather than torch's (a few us per image; the distribution is
the same).

:class:`ImageFolderDataset` reads the original files; :class:`PackedFileDataset`
reads the same encoded bytes from packed LMDB shards, which separates the effect
of the storage format from that of the decoder.

>>> ds = ImageFolderDataset("photos/", size=224, train=True)      # doctest: +SKIP
>>> for images, labels in baseline_loader(ds, 64, workers=2):      # doctest: +SKIP
...     ...
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from loader.augment.recipe import EVAL_CROP_FRACTION, IMAGENET_MEAN, IMAGENET_STD, RRC_RATIO, RRC_SCALE
from loader.augment.torchvision_eval import resize_of, resized_size
from loader.measure import check_int

__all__ = [
    "IMG_EXTENSIONS",
    "EvalTransform",
    "ImageFolderDataset",
    "PackedFileDataset",
    "TrainTransform",
    "pil_color_jitter",
    "baseline_loader",
    "eval_transform",
    "random_resized_crop_params",
    "to_tensor_normalize",
    "train_transform",
]

# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_BILINEAR = Image.Resampling.BILINEAR if hasattr(Image, "Resampling") else Image.BILINEAR
_FLIP = Image.Transpose.FLIP_LEFT_RIGHT if hasattr(Image, "Transpose") else Image.FLIP_LEFT_RIGHT


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale: tuple[float, float] = RRC_SCALE,
                               ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop: torchvision's ``RandomResizedCrop.get_params``.

    Scalar, per image, as torchvision runs it: the baseline must cost what users
    pay. ImageLoader draws the same distribution vectorised per batch
    (:func:`loader.load.sampler.crop_windows`, ~40 us per call for one image; a test
    checks the two agree).

    Up to 10 attempts draw an area uniformly in ``scale * (height * width)`` and an
    aspect ratio (w/h) log-uniformly in ``ratio``; the first that fits is placed
    uniformly at random. If none fits, the fallback is a centre crop of the whole
    image with its aspect ratio clamped to ``ratio``.

    >>> random_resized_crop_params(400, 500, np.random.default_rng(0))
    (3, 6, 390, 342)
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback to central crop
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:  # whole image
        w = width
        h = height
    top = (height - h) // 2
    left = (width - w) // 2
    return top, left, h, w


def to_tensor_normalize(img: Image.Image, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """torchvision's ``ToTensor()`` then ``Normalize(mean, std)``: float32 CHW."""
    # ToTensor (PIL RGB path)
    t = torch.from_numpy(np.array(img, np.uint8, copy=True))
    t = t.view(img.size[1], img.size[0], 3).permute((2, 0, 1)).contiguous()
    t = t.to(dtype=torch.float32).div(255)
    # Normalize (inplace=False, the default: it works on a copy)
    t = t.clone()
    m = torch.as_tensor(mean, dtype=t.dtype)
    s = torch.as_tensor(std, dtype=t.dtype)
    if not bool((s != 0).all()):
        raise ValueError(f"std evaluated to zero after conversion to {t.dtype}, leading to division by zero.")
    return t.sub_(m.view(-1, 1, 1)).div_(s.view(-1, 1, 1))


def _adjust_hue_pil(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's ``F.adjust_hue`` on a PIL image: shift H of PIL's HSV by ``hue_factor * 255`` (uint8, wrapping)."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        np_h += np.uint8(int(hue_factor * 255) % 256)
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert(img.mode)


def pil_color_jitter(img: Image.Image, jitter, rng: np.random.Generator) -> Image.Image:
    """torchvision's ``ColorJitter.forward`` on a PIL image: the four ops in a random order, each
    factor uniform in its range (``jitter``: a :class:`loader.augment.jitter.ColorJitter`), as
    ``F.adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation`` (PIL's ``ImageEnhance``
    Brightness, Contrast, Color) and ``adjust_hue``. Drawn per image from ``rng``."""
    order = rng.permutation(4)
    factors = [None if r is None else float(rng.uniform(r[0], r[1])) for r in jitter.ranges]
    for k in order:
        f = factors[k]
        if f is None:
            continue
        if k == 0:
            img = ImageEnhance.Brightness(img).enhance(f)
        elif k == 1:
            img = ImageEnhance.Contrast(img).enhance(f)
        elif k == 2:
            img = ImageEnhance.Color(img).enhance(f)
        else:
            img = _adjust_hue_pil(img, f)
    return img


class TrainTransform:
    """RandomResizedCrop(size) + RandomHorizontalFlip() [+ ColorJitter] + ToTensor() + Normalize()."""

    def __init__(self, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD, color_jitter=None):
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)
        self.color_jitter = color_jitter if color_jitter is not None and color_jitter.enabled else None

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        width, height = img.size
        top, left, h, w = random_resized_crop_params(height, width, rng)
        # F.resized_crop: crop (a copy in PIL), then resize
        img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), _BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(_FLIP)
        if self.color_jitter is not None:
            img = pil_color_jitter(img, self.color_jitter, rng)
        return to_tensor_normalize(img, self.mean, self.std)


class EvalTransform:
    """Resize(int(size / 0.875)) (shorter side) + CenterCrop(size) + ToTensor() + Normalize()."""

    def __init__(self, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 crop_fraction: float = EVAL_CROP_FRACTION):
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)
        self.resize = resize_of(self.size, crop_fraction)

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        width, height = img.size
        new_h, new_w = resized_size(height, width, self.resize)     # torchvision's Resize(int)
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), _BILINEAR)
        # CenterCrop (the resized image is never smaller than the crop)
        top = round((new_h - self.size) / 2.0)
        left = round((new_w - self.size) / 2.0)
        img = img.crop((left, top, left + self.size, top + self.size))
        return to_tensor_normalize(img, self.mean, self.std)


def train_transform(size: int = 224) -> TrainTransform:
    return TrainTransform(size)


def eval_transform(size: int = 224) -> EvalTransform:
    return EvalTransform(size)


class _TransformDataset(torch.utils.data.Dataset):
    """Shared part: labels, transform, a per-process augmentation RNG."""

    def __init__(self, size: int, train: bool, seed: int = 0, color_jitter=None):
        self.size = int(size)
        self.train = bool(train)
        self.transform = TrainTransform(size, color_jitter=color_jitter) if train else EvalTransform(size)
        self._seed = seed
        self._rng: np.random.Generator | None = None

    def reseed(self, seed: int) -> None:
        """Seed the augmentation RNG of this process (DataLoader workers: one seed each)."""
        self._rng = np.random.default_rng(seed)

    def _load(self, i: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._rng is None:
            self._rng = np.random.default_rng(self._seed)
        img = self._load(i)
        return self.transform(img, self._rng), int(self.labels[i])

    def __len__(self) -> int:
        return len(self.labels)


class ImageFolderDataset(_TransformDataset):
    """``torchvision.datasets.ImageFolder`` over ``root/<class>/**/<image>``, with the baseline transforms.

    Classes are the sorted sub-folder names; files are taken in sorted order and
    loaded with ``Image.open(path).convert("RGB")``.
    """

    def __init__(self, root: str | os.PathLike, size: int = 224, train: bool = True, seed: int = 0,
                 color_jitter=None):
        super().__init__(size, train, seed, color_jitter)
        self.root = Path(root)
        if not self.root.is_dir():
            from loader.errors import LoaderError

            raise LoaderError(f"{root} is not a directory; pass an image folder (one sub-folder per class)")
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        samples: list[tuple[str, int]] = []
        for c in self.classes:
            for dirpath, dirnames, filenames in sorted(os.walk(self.root / c, followlinks=True)):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.lower().endswith(IMG_EXTENSIONS):
                        samples.append((os.path.join(dirpath, name), self.class_to_idx[c]))
        if not samples:
            from loader.errors import LoaderError

            raise LoaderError(f"no images ({', '.join(IMG_EXTENSIONS)}) found in class folders of {root}; the "
                              f"dataloader row is torchvision's ImageFolder: for a pack made with a label file or "
                              f"unlabeled, compare with pipelines=('loader', 'dataloader-lmdb', 'decode-limit')",
                              param="pipelines")
        self.samples = samples
        self.labels = np.array([s[1] for s in samples], dtype=np.int64)

    def _load(self, i: int) -> Image.Image:
        with open(self.samples[i][0], "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")


class PackedFileDataset(_TransformDataset):
    """The same as :class:`ImageFolderDataset`, reading the encoded bytes from packed shards."""

    def __init__(self, packed_dst: str | os.PathLike, size: int = 224, train: bool = True, seed: int = 0,
                 color_jitter=None):
        super().__init__(size, train, seed, color_jitter)
        from loader.format.dataset import open_dataset

        self.packed = open_dataset(packed_dst)
        self.classes = list(self.packed.classes)
        self.labels = np.asarray(self.packed.labels, dtype=np.int64)
        # Opening validated the shards; release them until a record is read
        # (each DataLoader worker opens its own on first read).
        self.packed.close()

    def _load(self, i: int) -> Image.Image:
        return Image.open(io.BytesIO(self.packed.read(i))).convert("RGB")


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    # info.seed = the loader's base seed (drawn from its generator) + worker_id
    if hasattr(info.dataset, "reseed"):
        info.dataset.reseed(info.seed % 2**63)
    np.random.seed(info.seed % 2**32)


def baseline_loader(dataset: torch.utils.data.Dataset, batch_size: int, *, workers: int = 2,
                    train: bool = True, seed: int = 0, prefetch_factor: int | None = None,
                    pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The standard ``DataLoader`` over ``dataset``, configured as in a typical training script.

    ``shuffle=train``, ``drop_last=train``, ``persistent_workers=workers > 0``,
    ``pin_memory`` (False by default: on the CPU there is no device to copy to; ``loader
    bench`` passes True on CUDA, as a careful GPU user does, so that the batches go to the
    GPU with ``non_blocking=True`` copies), a generator seeded with ``seed``; each worker seeds its
    augmentation RNG from the loader's per-worker seed (``seed`` with
    ``workers=0``).
    """
    check_int("batch_size", batch_size, 1)
    check_int("workers", workers, 0)
    g = torch.Generator()
    g.manual_seed(seed)
    if workers == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(seed)
    kwargs = {}
    if workers > 0 and prefetch_factor is not None:
        kwargs["prefetch_factor"] = prefetch_factor
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=bool(pin_memory), generator=g,
        worker_init_fn=_seed_worker if workers > 0 else None, **kwargs)
