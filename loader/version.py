"""The package version: one home (``loader.__version__`` and the wheel's metadata read it from here)."""

__version__ = "0.2.0"   # 0.2: index format version 3 (docs/format.md)
