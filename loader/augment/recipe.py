"""The ImageNet training recipe's constants: one home for the numbers every piece shares.

torchvision's ``RandomResizedCrop`` defaults and ``Normalize`` statistics, and
the eval convention (resize the shorter side to ``size / 0.875``, centre-crop
``size``). :mod:`loader.load.sampler` draws windows with them, :mod:`loader.load.imageloader`
normalizes with them, and the DataLoader baseline (:mod:`loader.bench.baseline`)
and the decode ceiling use the same values, so every contender runs one recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["EVAL_CROP_FRACTION", "GRAY_MEAN", "GRAY_STD", "IMAGENET_MEAN", "IMAGENET_STD", "RRC_RATIO",
           "RRC_SCALE", "pixel_units"]

# torchvision's ImageNet normalization, in 0..1 units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Grayscale's default normalization: the mean of ImageNet's three channels (as for 1-channel
# ImageNet models); explicit mean/std for grayscale take one number each.
GRAY_MEAN, GRAY_STD = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)

# RandomResizedCrop: area fraction and aspect ratio (w/h) ranges.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)

# Eval resizes the shorter side to image_size / 0.875 and centre-crops image_size:
# the crop covers 87.5% of the shorter side (the ImageNet convention).
EVAL_CROP_FRACTION = 0.875


def pixel_units(values: Sequence[float] | None) -> tuple[float, ...] | None:
    """Per-channel ``mean``/``std`` in 0..1 units (torchvision's) -> pixel units (0..255), the units
    DALI's graph and the CPU finisher normalize in; None stays None. The one place the factor is
    applied, so every path normalizes with the same float values (``255.0 * m``, as loader 0.2).

    >>> pixel_units((0.5, 1.0))
    (127.5, 255.0)
    """
    return None if values is None else tuple(255.0 * v for v in values)
