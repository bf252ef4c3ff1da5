"""The ImageNet training recipe's constants: one home for the numbers every piece shares.

torchvision's ``RandomResizedCrop`` defaults and ``Normalize`` statistics, and
the eval convention (resize the shorter side to ``size / 0.875``, centre-crop
``size``). :mod:`loader.load.sampler` draws windows with them, :mod:`loader.load.imageloader`
normalizes with them, and the DataLoader baseline (:mod:`loader.bench.baseline`)
and the decode ceiling use the same values, so every contender runs one recipe.
"""

from __future__ import annotations

__all__ = ["EVAL_CROP_FRACTION", "IMAGENET_MEAN", "IMAGENET_STD", "RRC_RATIO", "RRC_SCALE"]

# torchvision's ImageNet normalization, in 0..1 units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# RandomResizedCrop: area fraction and aspect ratio (w/h) ranges.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)

# Eval resizes the shorter side to image_size / 0.875 and centre-crops image_size:
# the crop covers 87.5% of the shorter side (the ImageNet convention).
EVAL_CROP_FRACTION = 0.875
