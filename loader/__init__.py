"""loader: a high-throughput image data loader for PyTorch.

Convert an image folder to LMDB shards once (``loader pack``), then swap a
``torch.utils.data.DataLoader`` for :class:`ImageLoader`, which decodes and
augments with NVIDIA DALI.

>>> import loader
>>> report = loader.pack("photos/", "photos.packed")      # doctest: +SKIP
>>> for images, labels in loader.ImageLoader("photos.packed", batch_size=256):  # doctest: +SKIP
...     ...
"""

from loader.dataset import PackedDataset, open_dataset  # noqa: E402
from loader.errors import LoaderError  # noqa: E402
from loader.packing import PackReport, pack  # noqa: E402
from loader.version import __version__  # noqa: E402,F401

# Imported on first use: ImageLoader pulls in DALI and torch (seconds), which
# `loader pack` / `loader info` never need. DALI is an optional dependency (the
# `dali` extra): without it, `import loader` works and using ImageLoader raises
# DaliMissingError (an ImportError and a LoaderError) saying what to install.
_EXPORTS = {
    "ImageLoader": "loader.imageloader",
}
# Pure constants (no DALI): loader.recipe.
from loader.recipe import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


class DaliMissingError(LoaderError, ModuleNotFoundError):
    """NVIDIA DALI is not installed (it is an extra: ``pip install 'loader[dali]'``)."""


def _dali_missing(e: ModuleNotFoundError) -> bool:
    """Whether ``e`` says that DALI itself is missing (not some other module)."""
    return e.name is not None and (e.name == "nvidia" or e.name == "nvidia.dali" or e.name.startswith("nvidia.dali."))


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        try:
            module = importlib.import_module(_EXPORTS[name])
        except ModuleNotFoundError as e:
            if not _dali_missing(e):
                raise
            raise DaliMissingError(
                f"loader.{name} needs NVIDIA DALI, but the module {e.name!r} is not installed: "
                "pip install 'loader[dali]' (CUDA 12), or the nvidia-dali-cudaXXX wheel for your CUDA version",
                name=e.name) from None
        return getattr(module, name)
    raise AttributeError(f"module 'loader' has no attribute {name!r}")


__all__ = ["pack", "PackReport", "open_dataset", "PackedDataset", "IMAGENET_MEAN", "IMAGENET_STD", *_EXPORTS,
           "__version__"]
