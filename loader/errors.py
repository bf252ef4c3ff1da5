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

__all__ = ["ArgumentError", "ConcurrentEpochError", "DaliMissingError", "DatasetError", "DecodeError", "LoaderError",
           "ModelSpecError", "PackError", "ServiceError", "import_dali", "one_line"]


class LoaderError(Exception):
    """Base class: a user-facing error (bad input, bad dataset), not a bug.

    ``param``: the Python parameter the message names (e.g. ``"shard_size_mb"``), or None. The
    library's messages name parameters; the CLI maps ``param`` to its flag (``--shard-size-mb``)
    in one place (``loader.cli``), so a command-line user sees the flag.
    """

    def __init__(self, *args, param: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)     # kwargs: ModuleNotFoundError's name= (DaliMissingError)
        self.param = param


class ArgumentError(LoaderError, ValueError, TypeError):
    """An argument (or setting) is invalid; raised when the object is built, naming ``param``.

    Both a ``ValueError`` and a ``TypeError``, so code that catches either, as for the built-ins'
    argument errors, still does.
    """


class DatasetError(LoaderError, ValueError):
    """A packed dataset is missing, unsafe, corrupt or inconsistent."""


class PackError(LoaderError):
    """``pack`` cannot run with this input or these options."""


class DecodeError(LoaderError, RuntimeError):
    """A record could not be decoded at load time (``ImageLoader``); the message names the record."""


class ConcurrentEpochError(LoaderError, RuntimeError):
    """An iterator of an ``ImageLoader`` was used after another ``iter()`` started a new epoch."""


class ModelSpecError(LoaderError, ValueError):
    """``advise``'s ``model`` names nothing usable, or what it builds is not a classifier for this dataset."""


class ServiceError(LoaderError, RuntimeError):
    """The decode service (``ImageLoader(service=loader.RayService(...))``) cannot run: Ray missing or
    unreachable, actors that cannot be placed, or that keep dying on one batch."""


class DaliMissingError(LoaderError, ModuleNotFoundError):
    """NVIDIA DALI is not installed (it is an extra: ``pip install 'loader[dali]'``)."""


def import_dali(needed_by: str):
    """``nvidia.dali``, or :class:`DaliMissingError` saying that ``needed_by`` needs it and what to install.

    Any other missing module (torch, say) is raised as itself.
    """
    try:
        import nvidia.dali
    except ModuleNotFoundError as e:
        if e.name is None or not (e.name == "nvidia" or e.name == "nvidia.dali" or e.name.startswith("nvidia.dali.")):
            raise
        raise DaliMissingError(
            f"{needed_by} needs NVIDIA DALI, but the module {e.name!r} is not installed: "
            "pip install 'loader[dali]' (CUDA 12), or the nvidia-dali-cudaXXX wheel for your CUDA version",
            name=e.name) from None
    return nvidia.dali


def one_line(exc_or_msg: BaseException | object, limit: int | None = None) -> str:
    """An exception (or message) as one line: its lines stripped and joined by a space, at most ``limit`` chars.

    The one home for "an error as a report line" (the CLI's ``error: ...``, doctor's checks,
    a skipped file's reason, an advise row's error). An exception with no text gives its
    class name; a line cut at ``limit`` ends with "...".

    >>> one_line(ValueError("bad value\\n  in line 3\\n"))
    'bad value in line 3'
    >>> one_line(KeyError())
    'KeyError'
    >>> one_line("x" * 20, limit=10)
    'xxxxxxx...'
    """
    text = " ".join(line.strip() for line in str(exc_or_msg).splitlines() if line.strip())
    if not text and isinstance(exc_or_msg, BaseException):
        text = type(exc_or_msg).__name__
    if limit is not None and len(text) > limit:
        text = text[:max(0, limit - 3)] + "..."
    return text
