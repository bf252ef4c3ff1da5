"""Exceptions raised by loader for problems the user can fix.

The CLI turns every :class:`LoaderError` into one line, ``error: <message>``,
and exit status 2, so messages name the culprit (a path, shard or record) and
say what to do about it.

>>> try:
...     raise PackError("photos/ does not exist; pass an image folder as SRC")
... except LoaderError as e:
...     print(f"error: {e}")
error: photos/ does not exist; pass an image folder as SRC
"""

from __future__ import annotations

__all__ = ["DatasetError", "LoaderError", "PackError"]


class LoaderError(Exception):
    """Base class: a user-facing error (bad input, bad dataset), not a bug."""


class DatasetError(LoaderError, ValueError):
    """A packed dataset is missing, unsafe, corrupt or inconsistent."""


class PackError(LoaderError):
    """``pack`` cannot run with this input or these options."""
