"""``loader show``: one batch as the model sees it, as a PNG grid.

The first step of every debugging recipe is to look at the data just before it enters the
net: are the crops, flips, colour jitter, grayscale, labels and normalization what they should
be? :func:`show` takes batch ``batch`` of epoch ``epoch`` from an :class:`ImageLoader` (the
one a training script builds, or one built here from a dataset path and the same keywords),
undoes the normalization, and draws each image with its caption: the class name(s) (or the
top two soft targets after a ``batch_transform`` such as mixup), the record index and the
source file name.

The batch is reached through the loader's exact resume (``load_state_dict``): nothing before
it is decoded, and a loader passed in gets its position back afterwards.

>>> import loader
>>> grid = loader.show("photos.packed", batch=3, epoch=1, batch_size=16)   # doctest: +SKIP
>>> grid.save("batch3.png")                                                # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loader.augment.recipe import pixel_units
from loader.errors import ArgumentError
from loader.validate import is_int

__all__ = ["Tile", "show", "show_batch", "default_output"]

_PAD = 4                 # pixels between tiles
_LINE = 12               # caption line height (Pillow's default bitmap font is ~11 px tall)
_CAPTION_LINES = 3       # labels, record, source
_MAX_CAPTION = 40        # characters per caption line before "..."


@dataclass(frozen=True)
class Tile:
    """One image of the grid: where it is (``box``: left, top, right, bottom of the image), what
    it shows, and its caption lines."""

    position: int            # in the batch
    record: int              # global record index
    source: str              # source file, relative to SRC
    labels: str              # class name(s), soft-target top-2, or "record N" when unlabeled
    box: tuple[int, int, int, int]
    torchvision_box: tuple[int, int, int, int] | None = None
    max_abs_diff: int | None = None      # eval with compare_torchvision: the largest pixel difference

    @property
    def caption(self) -> list[str]:
        return [_cut(self.labels), f"record {self.record}", _cut(os.path.basename(self.source))]


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_CAPTION else text[:_MAX_CAPTION - 3] + "..."


def default_output(dataset_path: str | os.PathLike, epoch: int, batch: int) -> Path:
    """``./show-<dataset>-e<E>-b<K>.png`` in the working directory: never inside the dataset."""
    name = Path(os.fspath(dataset_path)).resolve().name or "dataset"
    return Path.cwd() / f"show-{name}-e{epoch}-b{batch}.png"


def _check_int(name: str, value, least: int = 0) -> int:
    if not is_int(value) or value < least:
        raise ArgumentError(f"{name} must be an int >= {least}, got {value!r}", param=name)
    return int(value)


def _normalization(loader) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The loader's mean and std in pixel units (0..255), shaped [C, 1, 1], or (None, None)."""
    mean, std = pixel_units(loader.mean), pixel_units(loader.std)
    if mean is None:
        return None, None
    return np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1), np.asarray(std, dtype=np.float64).reshape(-1, 1, 1)


def denormalize(images, loader) -> np.ndarray:
    """A batch of ``loader``'s images as uint8 ``[B, H, W, C]``: ``x * std + mean``, rounded, clamped."""
    x = images.detach().to("cpu").float().numpy().astype(np.float64)
    mean, std = _normalization(loader)
    if mean is not None:
        x = x * std + mean
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _labels(targets, records: np.ndarray, classes: tuple[str, ...], soft: bool) -> list[str]:
    """Each image's caption of its targets: class index -> name; multi-hot -> names joined by
    "|"; soft targets (a batch transform's) -> the top two with their weights."""
    t = targets.detach().to("cpu")
    if t.ndim == 1:
        if not classes:                       # unlabeled: targets are record indices
            return [f"record {int(v)}" for v in t.tolist()]
        return [classes[int(v)] if 0 <= int(v) < len(classes) else f"class {int(v)}" for v in t.tolist()]
    rows = t.float().numpy()
    names = list(classes) or [str(k) for k in range(rows.shape[1])]
    out = []
    for row in rows:
        if not soft:
            hot = np.flatnonzero(row > 0.5)
            out.append("|".join(names[k] for k in hot) if len(hot) else "(none)")
            continue
        top = np.argsort(-row, kind="stable")[:2]
        out.append(" ".join(f"{names[k]} {row[k]:.2f}" for k in top if row[k] > 0))
    return out


def _is_soft(targets, dataset) -> bool:
    if targets.ndim != 2 or not targets.is_floating_point():
        return False
    t = targets.detach().to("cpu")
    return not dataset.multi_label or bool(((t != 0) & (t != 1)).any())


def _take_batch(loader, epoch: int, batch: int):
    """Batch ``batch`` of ``epoch`` through the loader's exact resume; the loader's position is
    given back afterwards."""
    saved = loader.state_dict()
    n = len(loader)
    if batch >= n:
        raise ArgumentError(f"batch={batch} is past the end of epoch {epoch}: it has {n} batches "
                            f"(0..{n - 1}) with batch_size={loader.batch_size}", param="batch")
    state = dict(saved, epoch=epoch, batches_done=batch)
    loader.load_state_dict(state)
    try:
        out = next(iter(loader))
    finally:
        loader.load_state_dict(saved)
    plan = loader.epoch_plan(epoch)
    lo = batch * loader.batch_size
    records = plan.records[lo:lo + loader.batch_size]
    return out, records, plan.positions[lo]


def show_batch(images: np.ndarray, tiles_labels: list[str], records: np.ndarray, sources: list[str],
               second_row: np.ndarray | None = None, columns: int | None = None):
    """Draw uint8 ``[B, H, W, C]`` images (and an optional second row per tile) with captions;
    returns ``(PIL image, tiles)``."""
    from PIL import Image, ImageDraw, ImageFont

    b, h, w, c = images.shape
    cols = columns or max(1, min(8, math.ceil(math.sqrt(b))))
    rows = math.ceil(b / cols)
    per_tile = h * (2 if second_row is not None else 1)
    cell_w, cell_h = w + _PAD, per_tile + _CAPTION_LINES * _LINE + 2 * _PAD
    canvas = Image.new("RGB", (cols * cell_w + _PAD, rows * cell_h + _PAD), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    tiles = []
    for k in range(b):
        left, top = _PAD + (k % cols) * cell_w, _PAD + (k // cols) * cell_h
        pic = images[k] if c == 3 else np.repeat(images[k], 3, axis=2)
        canvas.paste(Image.fromarray(pic), (left, top))
        tv_box = None
        if second_row is not None:
            tv = second_row[k] if c == 3 else np.repeat(second_row[k], 3, axis=2)
            canvas.paste(Image.fromarray(tv), (left, top + h))
            tv_box = (left, top + h, left + w, top + 2 * h)
        tile = Tile(position=k, record=int(records[k]), source=sources[k], labels=tiles_labels[k],
                    box=(left, top, left + w, top + h), torchvision_box=tv_box)
        for j, line in enumerate(tile.caption):
            draw.text((left, top + per_tile + _PAD // 2 + j * _LINE), line, fill=(0, 0, 0), font=font)
        tiles.append(tile)
    return canvas, tiles


def _torchvision_row(loader, records: np.ndarray, first_position: int, epoch: int):
    """torchvision's transforms on the same sources and crop parameters, uint8 [B, S, S, C]; or
    None when torchvision cannot be imported (the caller says so)."""
    try:
        import torchvision.transforms.functional as tvf
    except Exception:  # noqa: BLE001 - any import failure means "not available" here
        return None
    import io

    from PIL import Image

    from loader import rng as rng_streams
    from loader.load.sampler import crop_windows

    ds, aug, size = loader.dataset, loader.augment, loader.image_size
    mode = "L" if aug.channels == 1 else "RGB"
    out = []
    if loader.train:
        rng = rng_streams.batch_rng(loader.seed, epoch, first_position, rng_streams.CROP)
        anchor, shape, flip = crop_windows(ds.heights[records], ds.widths[records], rng, scale=aug.scale,
                                           ratio=aug.ratio, hflip=aug.hflip)
    for k, i in enumerate(records.tolist()):
        img = Image.open(io.BytesIO(ds.read(i))).convert(mode)
        if loader.train:
            (x, y), (cw, ch) = anchor[k], shape[k]
            img = tvf.resized_crop(img, int(y), int(x), int(ch), int(cw), [size, size],
                                   interpolation=tvf.InterpolationMode.BILINEAR, antialias=True)
            if flip[k]:
                img = tvf.hflip(img)
        else:
            img = tvf.center_crop(tvf.resize(img, int(size / aug.crop_fraction),
                                             interpolation=tvf.InterpolationMode.BILINEAR), [size, size])
        a = np.asarray(img, dtype=np.uint8)
        out.append(a[:, :, None] if a.ndim == 2 else a)
    return np.stack(out)


def show(source, *, epoch: int = 0, batch: int = 0, path: str | os.PathLike | None = None,
         columns: int | None = None, compare_torchvision: bool = False, **loader_kwargs):
    """Batch ``batch`` of epoch ``epoch`` as the model sees it, denormalized, as a PIL image.

    Args:
        source: an :class:`loader.ImageLoader` (its settings are what is shown; its position
            is kept), or a packed dataset's path, then ``ImageLoader(source, **loader_kwargs)``
            is built (``batch_size`` defaults to 16, ``device`` to "cpu").
        epoch, batch: which batch (``batch`` past the epoch's end is an error saying how many
            there are).
        path: also write the PNG there (None: do not write; the CLI's default is
            :func:`default_output`, never inside the dataset).
        columns: tiles per row (default: a square grid, at most 8 wide).
        compare_torchvision: add a second row per tile, torchvision's transforms on the same
            source and crop window (train: ``resized_crop`` + flip; eval: ``Resize`` +
            ``CenterCrop``); the tiles record the largest pixel difference in eval. Ignored,
            with ``image.info["torchvision"] = "not importable"``, when torchvision is not.

    Returns the grid (``PIL.Image.Image``; a notebook displays it inline). ``image.info["tiles"]``
    holds the :class:`Tile` list (record, source, labels, box of each image).
    """
    epoch, batch = _check_int("epoch", epoch), _check_int("batch", batch)
    if columns is not None:
        columns = _check_int("columns", columns, 1)
    if hasattr(source, "epoch_plan") and hasattr(source, "load_state_dict"):
        if loader_kwargs:
            raise ArgumentError(f"loader keywords ({', '.join(sorted(loader_kwargs))}) apply only when "
                                "source is a dataset path, not an ImageLoader", param="source")
        loader = source
    else:
        from loader.load.imageloader import ImageLoader

        loader_kwargs.setdefault("device", "cpu")
        loader = ImageLoader(source, loader_kwargs.pop("batch_size", 16), **loader_kwargs)
    out, records, first_position = _take_batch(loader, epoch, batch)
    images, targets = out[0], out[1]
    pixels = denormalize(images, loader)
    ds = loader.dataset
    labels = _labels(targets, records, ds.classes, _is_soft(targets, ds))
    sources = [ds.source(int(i)) for i in records]
    second = None
    note = None
    if compare_torchvision:
        second = _torchvision_row(loader, records, first_position, epoch)
        note = "not importable" if second is None else "compared"
    grid, tiles = show_batch(pixels, labels, records, sources, second, columns)
    if second is not None and not loader.train:
        diffs = np.abs(pixels.astype(np.int16) - second.astype(np.int16)).reshape(len(records), -1).max(axis=1)
        tiles = [Tile(**{**t.__dict__, "max_abs_diff": int(d)}) for t, d in zip(tiles, diffs)]
    grid.info["tiles"] = tiles
    if note is not None:
        grid.info["torchvision"] = note
    if path is not None:
        grid.save(os.fspath(path), format="PNG")
    return grid
