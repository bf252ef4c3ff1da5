"""loader: a high-throughput image data loader for PyTorch.

Convert an image folder to LMDB shards once (``loader pack``), then swap a
``torch.utils.data.DataLoader`` for :class:`ImageLoader`, which decodes and
augments with NVIDIA DALI.

>>> import loader
>>> report = loader.pack("photos/", "photos.packed")      # doctest: +SKIP
>>> for images, labels in loader.ImageLoader("photos.packed", batch_size=256):  # doctest: +SKIP
...     ...
"""

__version__ = "0.1.0"

from loader.dataset import PackedDataset, open_dataset  # noqa: E402
from loader.packing import PackReport, pack  # noqa: E402

# Imported on first use: ImageLoader pulls in DALI and torch (seconds), which
# `loader pack` / `loader info` never need.
_EXPORTS = {
    "ImageLoader": "loader.imageloader",
}
# Pure constants (no DALI): loader.recipe.
from loader.recipe import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'loader' has no attribute {name!r}")


__all__ = ["pack", "PackReport", "open_dataset", "PackedDataset", "IMAGENET_MEAN", "IMAGENET_STD", *_EXPORTS,
           "__version__"]
