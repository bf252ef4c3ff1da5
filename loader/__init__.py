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

# Imported eagerly: the function `pack` must win over the submodule of the
# same name, which the import system would otherwise bind to `loader.pack`.
from loader.dataset import PackedDataset, open_dataset  # noqa: E402
from loader.pack import PackReport, pack  # noqa: E402

# Imported on first use: ImageLoader pulls in DALI and torch (seconds), which
# `loader pack` / `loader info` never need.
_EXPORTS = {
    "ImageLoader": "loader.imageloader",
    "IMAGENET_MEAN": "loader.imageloader",
    "IMAGENET_STD": "loader.imageloader",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'loader' has no attribute {name!r}")


__all__ = ["pack", "PackReport", "open_dataset", "PackedDataset", *_EXPORTS, "__version__"]
