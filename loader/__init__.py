"""loader: a high-throughput image data loader for PyTorch.

Convert an image folder to LMDB shards once (``loader pack``), then swap a
``torch.utils.data.DataLoader`` for :class:`ImageLoader`, which decodes and
augments with NVIDIA DALI.

>>> import loader
>>> report = loader.pack("photos/", "photos.packed")      # doctest: +SKIP
>>> for images, labels in loader.ImageLoader("photos.packed", batch_size=256):  # doctest: +SKIP
...     ...
"""

from loader import _moved
from loader.convert.packing import PackReport, pack  # noqa: E402
from loader.errors import DaliMissingError, LoaderError, import_dali  # noqa: E402,F401
from loader.format.dataset import PackedDataset, open_dataset  # noqa: E402
from loader.version import __version__  # noqa: E402,F401

_moved.install()   # loader.pipeline & co. (0.3 paths) still import, with a DeprecationWarning

# Imported on first use: ImageLoader pulls in DALI and torch (seconds), which
# `loader pack` / `loader info` never need. DALI is an optional dependency (the
# `dali` extra): without it, `import loader` works and using ImageLoader raises
# DaliMissingError (an ImportError and a LoaderError) saying what to install.
_EXPORTS = {
    "ImageLoader": "loader.load.imageloader",
    "advise": "loader.advisor",
}
# Imported on first use too, needing torch but not DALI.
_TORCH_EXPORTS = {"ColorJitter": "loader.augment.jitter"}
# Pure constants (no DALI): loader.augment.recipe.
from loader.augment.recipe import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def __getattr__(name):
    if name in _EXPORTS or name in _TORCH_EXPORTS:
        import importlib

        if name in _EXPORTS:
            import_dali(f"loader.{name}")
        return getattr(importlib.import_module({**_EXPORTS, **_TORCH_EXPORTS}[name]), name)
    raise AttributeError(f"module 'loader' has no attribute {name!r}")


__all__ = ["pack", "PackReport", "open_dataset", "PackedDataset", "IMAGENET_MEAN", "IMAGENET_STD", *_EXPORTS,
           *_TORCH_EXPORTS, "__version__"]
