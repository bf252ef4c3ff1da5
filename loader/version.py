"""The package version: one home (``loader.__version__`` and the wheel's metadata read it from here)."""

__version__ = "0.1.0"
