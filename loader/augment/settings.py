"""``Augment``: the recipe knobs of :class:`loader.ImageLoader`, validated once, frozen.

The defaults are the ImageNet recipe of :mod:`loader.augment.recipe` and give loader 0.2's
training batches bit for bit (``tests/data/v3/batches-0.2.0.json``). Everything random
is still drawn in numpy from (seed, epoch, position) -- see :mod:`loader.load.feed` -- so a
resumed run and every DDP rank agree, and the CPU and GPU graphs get the same parameters.

>>> Augment(hflip=0.0, crop_fraction=0.95).hflip
0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from loader.augment.jitter import ColorJitter
from loader.augment.recipe import EVAL_CROP_FRACTION, RRC_RATIO, RRC_SCALE
from loader.errors import ArgumentError
from loader.validate import is_number

__all__ = ["Augment", "ColorMode", "EvalMode", "COLOR_MODES", "EVAL_MODES", "as_color_jitter"]

ColorMode = Literal["rgb", "grayscale"]
EvalMode = Literal["torchvision", "fast"]
COLOR_MODES = ("rgb", "grayscale")
EVAL_MODES = ("torchvision", "fast")


def _pair(name: str, v, lo: float, what: str) -> tuple[float, float]:
    try:
        if isinstance(v, (str, bytes)) or any(isinstance(x, bool) for x in v):
            raise TypeError
        a, b = (float(x) for x in v)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be a pair (min, max) of numbers, got {v!r}", param=name) from None
    if not (math.isfinite(a) and math.isfinite(b)) or a <= lo or a > b:
        raise ArgumentError(f"{name} must be (min, max) with {what} and min <= max, got {v!r}", param=name)
    return a, b


def as_color_jitter(v) -> ColorJitter:
    """``color_jitter`` as given -> :class:`ColorJitter`.

    None or 0: off. A float ``j``: brightness, contrast and saturation ``j``, hue 0
    (timm's ``--color-jitter 0.4``). A tuple of 3 or 4: (brightness, contrast,
    saturation[, hue]) as torchvision's ``ColorJitter(...)`` arguments. A
    :class:`ColorJitter` is kept.

    >>> as_color_jitter(0.4)
    ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0)
    """
    if v is None:
        return ColorJitter()
    if isinstance(v, ColorJitter):
        return v
    try:
        if is_number(v):
            return ColorJitter(brightness=v, contrast=v, saturation=v)
        if isinstance(v, (tuple, list)) and len(v) in (3, 4):
            return ColorJitter(*v)
    except ValueError as e:          # ColorJitter's message names the op ("brightness=-1: ...")
        raise ArgumentError(f"color_jitter: {e}", param="color_jitter") from None
    raise ArgumentError(f"color_jitter must be None, a float, a (brightness, contrast, saturation[, hue]) "
                     f"tuple or a loader.ColorJitter, got {v!r}", param="color_jitter")


@dataclass(frozen=True)
class Augment:
    """What each image goes through (validated at construction).

    Train: random-resized-crop of area fraction ``scale`` and aspect ratio ``ratio``
    (torchvision's ``RandomResizedCrop``), a horizontal flip with probability ``hflip``
    (0 disables), then ``color_jitter`` (torchvision's ``ColorJitter``; off by default).
    Eval: ``eval_mode="fast"`` (default) crops the centre square of ``crop_fraction`` of the
    shorter side and resizes it (loader 0.2's eval; up to ~1 output pixel off torchvision's);
    ``"torchvision"`` is ``Resize(floor(size / crop_fraction))`` + ``CenterCrop(size)`` pixel
    for pixel (see :mod:`loader.augment.torchvision_eval`), ~15% slower on the CPU here, so
    not the default (the rule: under 5%). ``color_mode``:
    "rgb" (3 channels) or "grayscale" (1 channel, decoded as such).
    """

    scale: tuple[float, float] = RRC_SCALE
    ratio: tuple[float, float] = RRC_RATIO
    hflip: float = 0.5
    color_jitter: ColorJitter = ColorJitter()
    crop_fraction: float = EVAL_CROP_FRACTION
    color_mode: ColorMode = "rgb"
    eval_mode: EvalMode = "fast"

    def __post_init__(self) -> None:
        scale = _pair("scale", self.scale, 0.0, "0 < min")
        if scale[1] > 1.0:
            raise ArgumentError(f"scale must be within (0, 1] (area fractions), got {self.scale!r}", param="scale")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "ratio", _pair("ratio", self.ratio, 0.0, "0 < min"))
        if not is_number(self.hflip) or not 0 <= self.hflip <= 1:
            raise ArgumentError(f"hflip must be a probability in [0, 1], got {self.hflip!r}", param="hflip")
        object.__setattr__(self, "hflip", float(self.hflip))
        object.__setattr__(self, "color_jitter", as_color_jitter(self.color_jitter))
        cf = self.crop_fraction
        if not is_number(cf) or not 0 < cf <= 1:
            raise ArgumentError(f"crop_fraction must be in (0, 1] (timm's crop_pct, e.g. 0.875), got {cf!r}",
                                param="crop_fraction")
        object.__setattr__(self, "crop_fraction", float(cf))
        if self.color_mode not in COLOR_MODES:
            raise ArgumentError(f"color_mode must be 'rgb' or 'grayscale', got {self.color_mode!r}", param="color_mode")
        if self.eval_mode not in EVAL_MODES:
            raise ArgumentError(f"eval_mode must be 'torchvision' or 'fast', got {self.eval_mode!r}", param="eval_mode")
        j = self.color_jitter
        if self.color_mode == "grayscale" and (j.ranges[2] is not None or j.ranges[3] is not None):
            raise ArgumentError("color_jitter: color_mode='grayscale' has no colour, so color_jitter may set "
                                "brightness and contrast only (saturation and hue would do nothing)",
                                param="color_jitter")

    @property
    def channels(self) -> int:
        """Output channels: 3 for "rgb", 1 for "grayscale"."""
        return 1 if self.color_mode == "grayscale" else 3
