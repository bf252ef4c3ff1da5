"""The package version: one home (``loader.__version__`` and the wheel's metadata read it from here)."""

__version__ = "0.3.0"   # 0.3: index format version 4 (label sources; docs/format.md)
