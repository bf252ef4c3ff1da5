"""loader: a high-throughput image data loader for PyTorch.

Convert an image folder to LMDB shards once (``loader pack``), then swap a
``torch.utils.data.DataLoader`` for :class:`ImageLoader`, which decodes and
augments with NVIDIA DALI.

>>> import loader
>>> report = loader.pack("photos/", "photos.packed")      # doctest: +SKIP
>>> for images, labels in loader.ImageLoader("photos.packed", batch_size=256):  # doctest: +SKIP
...     ...

Every exception the package raises for a problem the user can fix is a
:class:`LoaderError` (``loader.errors``), importable from here.
"""

from loader import _moved
from loader.augment.recipe import IMAGENET_MEAN, IMAGENET_STD  # pure constants (no DALI, no torch)
from loader.convert.packing import PackReport, pack
from loader.errors import (
    ArgumentError,
    ConcurrentEpochError,
    DaliMissingError,
    DatasetError,
    DecodeError,
    LoaderError,
    ModelSpecError,
    PackError,
    ServiceError,
    import_dali,
)
from loader.format.dataset import PackedDataset, open_dataset
from loader.service.settings import RayService  # settings only: Ray is imported when a service starts
from loader.version import __version__

_moved.install()   # loader.pipeline & co. (0.3 paths) still import, with a DeprecationWarning

# Imported on first use: ImageLoader pulls in DALI and torch (seconds), which
# `loader pack` / `loader info` never need. DALI is an optional dependency (the
# `dali` extra): without it, `import loader` works and using ImageLoader raises
# DaliMissingError (an ImportError and a LoaderError) saying what to install.
_EXPORTS = {
    "ImageLoader": "loader.load.imageloader",
    "advise": "loader.advisor",
    "show": "loader.check.show",
}
# Imported on first use too, needing torch but not DALI.
_TORCH_EXPORTS = {"Augment": "loader.augment.settings", "ColorJitter": "loader.augment.jitter"}


def __getattr__(name):
    if name in _EXPORTS or name in _TORCH_EXPORTS:
        import importlib

        if name in _EXPORTS:
            import_dali(f"loader.{name}")
        return getattr(importlib.import_module({**_EXPORTS, **_TORCH_EXPORTS}[name]), name)
    raise AttributeError(f"module 'loader' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS, *_TORCH_EXPORTS})


# Sorted; tests/test_errors.py checks that every name resolves and every exception is here.
__all__ = [
    "ArgumentError", "Augment", "ColorJitter", "ConcurrentEpochError", "DaliMissingError", "DatasetError",
    "DecodeError", "IMAGENET_MEAN", "IMAGENET_STD", "ImageLoader", "LoaderError", "ModelSpecError", "PackError",
    "PackReport", "PackedDataset", "RayService", "ServiceError", "__version__", "advise", "import_dali",
    "open_dataset", "pack", "show",
]
