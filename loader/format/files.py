"""Rules every file of a packed dataset obeys, in one place: nothing read leaves DST, one re-pack hint.

A packed dataset is one folder (DST). Its manifest names the other files, and every reader
(:mod:`loader.format.manifest`, :mod:`loader.format.columns`, :mod:`loader.format.dataset`)
opens a file only after :func:`check_inside` said it is in that folder: a ``manifest.json``,
``sources.bin``, column or shard that is a link to a file elsewhere is refused, so a
dataset someone hands over cannot make the loader read (and print in an error) a file of theirs.
A link to another file of the same folder is fine.

>>> check_inside(Path("photos.packed") / "sources.bin", "the file of source paths")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from loader.errors import DatasetError

__all__ = ["REPACK_HINT", "check_inside"]

#: What to do about a dataset that is damaged or was written by an incompatible release:
#: the tail of every such message (one home, so every message says the same).
REPACK_HINT = "re-pack with `loader pack SRC DST --overwrite`"


def check_inside(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`DatasetError` if ``path`` (a file of a dataset folder) is a link that leads
    out of that folder; ``what`` says which file it is, for the message.

    A missing file passes (its reader says it is missing).
    """
    path = Path(path)
    if not path.is_symlink():
        return
    real = os.path.realpath(path)
    if os.path.dirname(real) != os.path.realpath(path.parent):
        raise DatasetError(f"{path}: {what} is a link to {real}, outside the dataset folder; copy the "
                           f"dataset with its files (cp -rL) or {REPACK_HINT}")
