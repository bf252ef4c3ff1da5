"""The storage contract: a flat key space of immutable objects under one dataset root.

A dataset in object storage is the same files as a local pack (``manifest.json``, the ``.npy``
columns, ``sources.bin``, the ``.lmdb`` shards), each an object under the dataset's prefix.
:class:`Store` is what the pack, the cache and the readers need from a backend, nothing more:
whole-object and ranged reads, whole-object writes from a local file, a listing, a size, a delete.
Keys are relative to the root and use ``/``. Objects are written whole and never modified in place
(an object store's only atomic write), so a reader sees an object entirely or not at all.

:class:`LocalStore` (a folder, ``file://``) is the reference backend; the tests of every other
backend compare against it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from loader.errors import ArgumentError, DatasetError

__all__ = ["REMOTE_SCHEMES", "LocalStore", "Store", "is_url", "split_url"]

# Schemes an object-store backend serves; "file" is a local folder.
REMOTE_SCHEMES = ("s3", "gs", "az")


def is_url(path) -> bool:
    """True for ``scheme://...`` with a scheme loader knows (``s3``, ``gs``, ``az``, ``file``).

    >>> is_url("s3://bucket/photos.packed"), is_url("photos.packed"), is_url("file:///data/x")
    (True, False, True)
    """
    if not isinstance(path, str) or "://" not in path:
        return False
    return urlparse(path).scheme in (*REMOTE_SCHEMES, "file")


def split_url(url: str) -> tuple[str, str, str]:
    """``scheme://bucket/prefix`` -> ``(scheme, bucket, prefix)`` (prefix without slashes at the ends);
    ``file:///abs/path`` -> ``("file", "", "/abs/path")``. An unknown scheme or a URL without a bucket
    is an :class:`ArgumentError` naming ``path``.

    >>> split_url("s3://bucket/a/photos.packed/")
    ('s3', 'bucket', 'a/photos.packed')
    """
    u = urlparse(url)
    if u.scheme == "file":
        return "file", "", unquote(u.path)
    if u.scheme not in REMOTE_SCHEMES:
        raise ArgumentError(f"path {url!r}: unknown scheme {u.scheme!r}; use a local path or one of "
                            f"{', '.join(s + '://' for s in (*REMOTE_SCHEMES, 'file'))}", param="path")
    if not u.netloc:
        raise ArgumentError(f"path {url!r} names no bucket: write {u.scheme}://BUCKET/PREFIX", param="path")
    return u.scheme, u.netloc, unquote(u.path).strip("/")


@runtime_checkable
class Store(Protocol):
    """What loader needs from a backend. Keys are relative to the store's root, ``/``-separated.

    Every method raises :class:`loader.errors.DatasetError` (or a subclass) with one line naming the
    URL for a missing object, a refused credential or a failure after retries; ``FileNotFoundError``
    is never leaked.
    """

    url: str    #: the root, as the user wrote it (for messages)

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if it does not exist."""

    def read(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (``end`` None: to its end)."""

    def download(self, key: str, dest: Path, *, size: int | None = None) -> None:
        """Write the whole object to the local file ``dest`` (the caller renames it into place);
        ``size``, when the caller knows it, lets a large object come down in parallel parts. Call
        :func:`loader.storage.parts.begun` once the transfer is under way: the read-ahead begins the
        plan's next download then (else after half a second)."""

    def upload(self, src: Path, key: str) -> None:
        """Write the local file ``src`` as the object ``key`` (whole, replacing any object there)."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, sorted."""

    def delete(self, key: str) -> None:
        """Remove the object if it exists."""


class LocalStore:
    """A local folder as a :class:`Store` (``file://`` URLs, and the reference in tests)."""

    def __init__(self, root: str | os.PathLike, url: str | None = None):
        self.root = Path(root)
        self.url = url or str(self.root)

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents and p != self.root.resolve():
            raise DatasetError(f"{self.url}: key {key!r} leaves the dataset root")
        return p

    def size(self, key: str) -> int | None:
        p = self._path(key)
        return p.stat().st_size if p.is_file() else None

    def read(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        p = self._path(key)
        try:
            with open(p, "rb") as f:
                f.seek(start)
                return f.read() if end is None else f.read(max(0, end - start))
        except FileNotFoundError:
            raise DatasetError(f"{self.url}/{key} does not exist") from None

    def download(self, key: str, dest: Path, *, size: int | None = None) -> None:
        from loader.storage.parts import begun

        begun()       # the read-ahead's next download may begin (loader.storage.parts)
        try:
            shutil.copyfile(self._path(key), dest)
        except FileNotFoundError:
            raise DatasetError(f"{self.url}/{key} does not exist") from None

    def upload(self, src: Path, key: str) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + f".upload-{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, p)

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        keys = sorted(str(p.relative_to(base)).replace(os.sep, "/") for p in base.rglob("*") if p.is_file())
        return iter([k for k in keys if k.startswith(prefix)])

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
