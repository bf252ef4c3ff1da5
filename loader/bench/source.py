"""What ``loader bench SRC`` measures: an image folder (packed once, then reused) or a packed dataset.

The packed dataset may be a URL (``s3://...``): SRC itself, or ``packed`` (an image folder SRC is
then packed there unless the URL already holds a packed dataset)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from loader.errors import LoaderError
from loader.format.manifest import MANIFEST_NAME
from loader.storage.store import is_url

__all__ = ["CACHE_SUFFIX", "is_packed", "resolve_source"]

CACHE_SUFFIX = ".loader-cache"


def is_packed(path: str | os.PathLike) -> bool:
    """Whether ``path`` (a folder or a URL) holds a packed dataset (made by ``loader pack``)."""
    if is_url(path):
        from loader.storage.remote import open_url_store

        return open_url_store(str(path)).size(MANIFEST_NAME) is not None
    return (Path(path) / MANIFEST_NAME).is_file()


def resolve_source(src: str | os.PathLike, packed: str | os.PathLike | None = None, *,
                   progress: bool = True, log: Callable[[str], None] | None = None):
    """``(image folder or None, packed dataset, PackReport or None)`` for ``loader bench SRC``.

    Packs SRC into ``packed`` (default ``SRC.loader-cache``) unless a packed
    dataset is already there; the :class:`loader.convert.packing.PackReport` describes
    a pack done now (None when one was reused or SRC is itself packed).
    """
    log = log or (lambda msg: None)
    if is_url(src):
        if packed is not None and str(packed) != str(src):
            raise LoaderError(f"packed: {src} is already a packed dataset; give it alone, "
                              f"without packed={str(packed)!r}", param="packed")
        if not is_packed(src):
            raise LoaderError(f"{src} holds no packed dataset (no {MANIFEST_NAME}); pack one there with "
                              f"`loader pack FOLDER {src}`, or pass an image folder as src", param="src")
        return None, str(src), None
    src_p = Path(src)
    if not src_p.exists():
        raise LoaderError(f"{src} does not exist; pass an image folder or a packed dataset as src", param="src")
    if not src_p.is_dir():
        raise LoaderError(f"{src} is not a folder; pass an image folder or a packed dataset as src", param="src")
    if is_packed(src_p):
        if packed is not None and (is_url(packed) or Path(packed).resolve() != src_p.resolve()):
            raise LoaderError(f"packed: {src} is already a packed dataset; give it alone, "
                              f"without packed={str(packed)!r}", param="packed")
        return None, src_p, None
    if packed is not None and is_url(packed):
        dst = str(packed)
    else:
        dst = Path(packed) if packed is not None else Path(str(src_p).rstrip("/\\") + CACHE_SUFFIX)
    if is_packed(dst):
        log(f"reusing the packed dataset {dst} (delete it to re-pack {src} and time the pack)")
        return src_p, dst, None
    from loader.convert.packing import pack

    log(f"packing {src} into {dst} (once; reused by later runs) ...")
    return src_p, dst, pack(src_p, dst, progress=progress)
