"""``pack`` from an object-store prefix: ``loader pack s3://bucket/photos/ DST`` (``gs://``, ``az://`` too).

The driver lists SRC once (:func:`list_src`: one paged LIST through :mod:`loader.storage.objectstore`,
the key and size of every object, no request per object) into a :class:`RemoteSrc`, which answers
what :mod:`loader.convert.scan` and :mod:`loader.convert.labelfile` answer for a folder, by the same
rules, so that a prefix packs to the bytes of the folder it was uploaded from:

* a key is a path relative to SRC (``/`` separators); one with a component starting with ``.``
  (``cat/.DS_Store``, ``.cache/x.jpg``) is hidden, ignored;
* class folders: the sorted first components of the keys below SRC (``cat`` of ``cat/001.jpg``; a
  key deeper, ``cat/a/b.jpg``, counts for ``cat``); an object directly under SRC belongs to no class;
  items sorted by ``(label, relpath)``; pinned classes (``classes`` / ``classes_from``) as for a folder;
* ``unlabeled``: every visible key, sorted; ``labels`` (a local file): its paths are relative to SRC,
  each must be an object there; the visible keys it does not list are counted (``num_unlisted``);
* the sizes (the shard plan, each shard's LMDB map size) are the listing's.

An object store has no folders, so there are no empty ones: a class exists only if a key lies under
it (a console's zero-byte "folder" marker is listed without its ``/`` by obstore: an empty file).

The per-file check (:func:`loader.convert.shardtask._process`) gets each file as a :class:`RemoteFile`
(the root URL and the relpath: two strings, all a pool worker or a Ray task receives; never a store)
and reads it with :func:`read_file`: one GET, the body left unread when the object is over
:data:`~loader.convert.imagecheck.MAX_FILE_BYTES`, with the store's retries. Each process builds its
own client on first use; obstore's runtime does not survive ``fork()`` (a forked child's first
request hangs: measured), so the local engine starts its pool clean for a remote SRC. An object
gone since the listing is a bad file (skipped, as a vanished local file); a refused credential or a
store still failing after its retries fails the pack with one line naming the object.

>>> src = list_src("s3://bucket/photos")                       # doctest: +SKIP
>>> src.scan()[0], src.sizes(src.scan()[1])[:2]                # doctest: +SKIP
(['cat', 'dog'], array([48213, 51022]))
"""

from __future__ import annotations

import io
import os
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loader.convert import imagecheck
from loader.convert.imagecheck import BadImage, read_capped
from loader.convert.labelfile import LabelFile, _q, check_listed, check_unique
from loader.convert.scan import Items
from loader.errors import DatasetError, PackError
from loader.storage.store import REMOTE_SCHEMES, is_url, split_url

__all__ = ["STORE_ENV_PREFIXES", "RemoteFile", "RemoteSrc", "check_dst_outside", "is_remote_src", "list_src",
           "read_file", "store_env", "use_store_env"]


def is_remote_src(src) -> bool:
    """True for an ``s3://``, ``gs://`` or ``az://`` URL (a ``file://`` one is a folder).

    >>> is_remote_src("s3://bucket/photos"), is_remote_src("file:///data/photos"), is_remote_src("photos")
    (True, False, False)
    """
    return is_url(src) and src.split("://", 1)[0] in REMOTE_SCHEMES


@dataclass(frozen=True)
class RemoteFile:
    """One object of a remote SRC, as the per-file check receives it: picklable, no store inside."""

    root: str     #: SRC's URL, without a trailing ``/``
    rel: str      #: the key relative to it


# Per process, built on first use (a forked or spawned worker builds its own: ObjectStore checks the pid);
# emptied by each listing, so a pack in this process uses the environment it started with.
_stores: dict[str, object] = {}
# The environment variables the storage layer reads (credentials, endpoints, the stall timeout).
STORE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_", "STORAGE_EMULATOR_HOST", "LOADER_STALL_TIMEOUT")


def store_env() -> dict[str, str]:
    """This process's object-store settings, for the processes that read (or upload) for it: a Ray
    worker, or a pool worker forked from a forkserver started before they were set."""
    return {k: v for k, v in os.environ.items() if k.startswith(STORE_ENV_PREFIXES)}


def use_store_env(env: dict[str, str] | None) -> None:
    """Make this (worker) process's object-store settings exactly ``env`` (:func:`store_env` of its
    parent); None: leave them."""
    if env is None:
        return
    for k in [k for k in os.environ if k.startswith(STORE_ENV_PREFIXES) and k not in env]:
        del os.environ[k]
    os.environ.update(env)
    _stores.clear()


def read_file(f: RemoteFile) -> bytes:
    """The bytes of ``f``: :class:`BadImage` if it is over MAX_FILE_BYTES (unread: the message of a
    local file's) or gone since the listing; :class:`PackError` naming its URL for a refused credential
    or a failure after the store's retries."""
    store = _stores.get(f.root)
    if store is None:
        from loader.storage.objectstore import open_store

        store = _stores[f.root] = open_store(f.root)
    try:
        got = store.read_capped(f.rel, imagecheck.MAX_FILE_BYTES)
    except DatasetError as e:     # a PackError whichever engine: the pack stops, naming the object
        raise PackError(str(e)) from None
    if got is None:
        raise BadImage("cannot read file: the object no longer exists (deleted since SRC was listed)")
    size, data = got
    if data is None:
        read_capped(io.BytesIO(), size)     # raises the per-file cap's BadImage without reading
    return data


def check_dst_outside(src, dst) -> None:
    """:class:`PackError` if ``dst`` is a URL under the bucket SRC ``src`` (a rerun would pack the dataset)."""
    if not is_remote_src(src) or not is_url(dst):
        return
    s, d = split_url(src), split_url(dst)
    if s[:2] == d[:2] and (not s[2] or d[2] == s[2] or d[2].startswith(s[2] + "/")):
        raise PackError(f"DST {dst} is inside SRC {src}; choose a DST outside the image prefix")


class RemoteSrc:
    """The listing of a remote SRC: every key (:class:`~loader.convert.scan.Items`, sorted, labels
    unused), its size, its ``hash()`` and whether it is hidden. Compact, as ``Items``: no Python
    object per key is kept."""

    def __init__(self, url: str, keys: Items, sizes: np.ndarray, first: np.ndarray, folders: list[str]):
        self.url, self.keys, self._sizes = url, keys, sizes
        self._first, self._folders = first, folders    # per key: index of its first folder in folders, or -1
        self._hidden = np.fromiter(("/." in "/" + k for k, _ in keys), dtype=bool, count=len(keys))
        self._hashes = np.fromiter((hash(k) for k, _ in keys), dtype=np.int64, count=len(keys))
        self._by_hash = np.argsort(self._hashes, kind="stable")

    def _items(self, rows: np.ndarray, labels: np.ndarray) -> Items:
        """The keys ``rows`` as Items with ``labels``: the paths blob gathered as a CSR, vectorised."""
        ends = self.keys._ends
        starts = np.where(rows > 0, ends[rows - 1], 0) if len(rows) else np.zeros(0, np.int64)
        lengths = ends[rows] - starts
        new_ends = np.cumsum(lengths, dtype=np.int64)
        ranks = np.arange(int(new_ends[-1]) if len(rows) else 0) - np.repeat(new_ends - lengths, lengths)
        blob = np.frombuffer(self.keys._blob, dtype=np.uint8)[np.repeat(starts, lengths) + ranks].tobytes()
        return Items(blob, new_ends, labels.astype(np.int32))

    def class_folders(self) -> list[str]:
        """The sorted visible first components of the keys below SRC (as :func:`scan.class_folders`)."""
        return [f for f in self._folders if not f.startswith(".")]

    def scan(self, classes: Sequence[str] | None = None, origin: str = "the given classes") -> tuple[list[str], Items]:
        """``(classes, items)`` as :func:`loader.convert.scan.scan` gives for a folder; ``origin`` names
        pinned ``classes`` in messages."""
        folders = self.class_folders()
        if not folders:
            raise PackError(f"{self.url} has no class folders; put each class's images under its own "
                            f"prefix, e.g. {self.url}/cat/001.jpg")
        if classes is None:
            classes = folders
        else:
            classes = list(classes)
            known = set(classes)
            unknown = [f for f in folders if f not in known]
            if unknown:
                raise PackError(f"class folder {unknown[0]!r} of {self.url} is not in {origin} "
                                f"({len(classes)} classes); add the class there, or move its objects out of SRC")
        index = {c: i for i, c in enumerate(classes)}
        label_of = np.array([-1 if f.startswith(".") else index.get(f, -1) for f in self._folders] + [-1],
                            dtype=np.int64)
        labels = label_of[self._first]              # -1 (the appended entry) for a key with no folder
        rows = np.flatnonzero((labels >= 0) & ~self._hidden)
        rows = rows[np.argsort(labels[rows], kind="stable")]     # keys are sorted: (label, relpath)
        if not len(rows):
            raise PackError(f"{self.url} has class folders ({', '.join(folders[:5])}"
                            f"{', ...' if len(folders) > 5 else ''}) but no visible objects in them; "
                            f"put the images under the class folders")
        return list(classes), self._items(rows, labels[rows])

    def scan_unlabeled(self) -> Items:
        """Every visible key, sorted, label -1 (as :func:`loader.convert.scan.scan_unlabeled`)."""
        rows = np.flatnonzero(~self._hidden)
        if not len(rows):
            raise PackError(f"{self.url} holds no visible objects (hidden ones are ignored); put the images there")
        return self._items(rows, np.full(len(rows), -1))

    def check_paths(self, lf: LabelFile) -> int:
        """:func:`loader.convert.labelfile.check_paths` against this listing: every row an object of
        SRC (a hidden one too, when named), listed once; returns the visible keys it does not list."""
        check_unique(lf)
        visible = self._hashes[~self._hidden]
        return check_listed(lf, visible, np.ones(len(visible), dtype=bool), self._why_not_usable)

    def _why_not_usable(self, rel: str) -> str | None:
        j = int(self._row_of(np.array([hash(rel)]))[0])
        if j >= 0 and self.keys.relpath(j) == rel:
            return None
        k = bisect_left(range(len(self.keys)), rel + "/", key=self.keys.relpath)
        if k < len(self.keys) and self.keys.relpath(k).startswith(rel + "/"):
            return f"{_q(rel)} is a folder, not an image file; list the images in it one per row"
        return (f"{_q(rel)} does not exist in SRC {self.url}; fix the path (relative to SRC, '/' separators) "
                f"or drop the row")

    def _row_of(self, hashes: np.ndarray) -> np.ndarray:
        """The key row with each hash, or -1."""
        sorted_h = self._hashes[self._by_hash]
        at = np.minimum(np.searchsorted(sorted_h, hashes), max(len(sorted_h) - 1, 0))
        hit = (sorted_h[at] == hashes) if len(sorted_h) else np.zeros(len(hashes), bool)
        return np.where(hit, self._by_hash[at] if len(sorted_h) else -1, -1)

    def sizes(self, items: Items) -> np.ndarray:
        """Each item's size from the listing (int64, in ``items``' order); 0 for one over MAX_FILE_BYTES,
        which is skipped unread (as a folder's: it plans no shard space)."""
        rows = self._row_of(np.fromiter((hash(rel) for rel, _ in items), dtype=np.int64, count=len(items)))
        sizes = np.where(rows >= 0, self._sizes[rows], 0)
        return np.where(sizes <= imagecheck.MAX_FILE_BYTES, sizes, 0)


def list_src(url: str) -> RemoteSrc:
    """List the prefix ``url`` once (see the module docstring). :class:`PackError`, one line naming the
    URL, for a missing bucket, refused or missing credentials, a failed listing, or an empty prefix."""
    from loader.storage.objectstore import open_store

    url = url.rstrip("/")
    _stores.clear()
    try:
        listed = open_store(url).list_sizes()
    except DatasetError as e:
        raise PackError(f"SRC {e}") from None
    if not listed:
        raise PackError(f"SRC {url} holds no objects (an empty or missing prefix); check the URL: SRC is a "
                        f"prefix in the ImageFolder layout, e.g. {url}/cat/001.jpg")
    seen: dict[str, int] = {}        # first component -> its index, in key order
    first = np.full(len(listed), -1, dtype=np.int64)        # per key: -1, no folder
    for j, (key, _) in enumerate(listed):
        name, slash, _rest = key.partition("/")
        if slash and name:
            first[j] = seen.setdefault(name, len(seen))
    names = sorted(seen)
    rank = np.full(len(names) + 1, -1, dtype=np.int64)       # the last entry maps -1 to -1
    for i, name in enumerate(names):
        rank[seen[name]] = i
    keys = Items.build((k, 0) for k, _ in listed)
    sizes = np.fromiter((size for _, size in listed), dtype=np.int64, count=len(listed))
    return RemoteSrc(url, keys, sizes, rank[first], names)
