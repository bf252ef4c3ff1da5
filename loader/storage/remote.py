"""Opening a dataset from a URL: the index once per node into the cache, each shard on first use.

``open_dataset("s3://...")`` (or ``file://``) reads ``manifest.json`` from the store (a few KB per
process: its bytes name the cache entry, see :func:`loader.storage.cache.fingerprint`), fetches the
columns and ``sources.bin`` into the entry once per node, and opens a :class:`RemoteDataset`: a
:class:`~loader.format.dataset.PackedDataset` over the entry whose shards are fetched when a record of
theirs is first read. Without a ``cache_limit`` a shard stays open (pinned) once read, as a local pack
does; with one, :meth:`RemoteDataset.read_batch` reads one shard at a time and unpins it after, so the
cache can evict it and a later read fetches it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from loader.errors import DatasetError
from loader.format.dataset import PackedDataset
from loader.format.files import REPACK_HINT
from loader.format.manifest import COLUMNS, LABEL_COLUMNS, MANIFEST_NAME, SOURCES_NAME, read_manifest
from loader.format.shards import ShardReader
from loader.storage.cache import ShardCache, fingerprint
from loader.storage.store import LocalStore, split_url

__all__ = ["RemoteDataset", "open_remote", "open_url_store"]


def open_url_store(url: str):
    """The :class:`~loader.storage.store.Store` of ``url``: a :class:`LocalStore` for ``file://``, the
    object-store backend (:mod:`loader.storage.objectstore`) for the others."""
    scheme, _bucket, prefix = split_url(url)
    if scheme == "file":
        return LocalStore(prefix, url=url)
    from loader.storage.objectstore import open_store  # the optional backend, only when asked for

    return open_store(url)


def _index_keys(obj: dict) -> list[str]:
    """The files of the index beside ``manifest.json`` (version 3/4; older ones keep all in it)."""
    if not isinstance(obj, dict) or type(obj.get("version")) is not int or obj["version"] < 3:
        return []
    keys = [f for f, _ in COLUMNS.values()] + [SOURCES_NAME]
    if obj.get("multi_label") is True:
        keys += [f for f, _ in LABEL_COLUMNS.values()]
    return keys


class CachedShardReader(ShardReader):
    """A :class:`ShardReader` whose file is fetched into the cache and pinned when first opened in a
    process, and unpinned when closed."""

    def __init__(self, path, dataset: RemoteDataset, index: int):
        super().__init__(path)
        self._dataset, self._index, self._pin = dataset, index, None

    def txn(self):
        if self._pid != os.getpid():
            if self._pin is not None and self._pid is not None:
                # Our copy of the parent's pin: closing it leaves the parent's pin in place, and keeping it
                # would keep the shard pinned for as long as this process lives.
                os.close(self._pin)
            self._pin = None
            self._pin = self._dataset._fetch_pinned(self._index)
            try:
                txn = super().txn()
                self._dataset._check_entries(self._index, self._env.stat()["entries"])
            except BaseException:
                self.close()
                raise
            return txn
        return self._txn

    def close(self, *, _blocking: bool = True) -> None:
        mine = self._pid == os.getpid()
        super().close(_blocking=_blocking)
        if self._pin is not None and mine:
            ShardCache.unpin(self._pin)
        self._pin = None

    def __getstate__(self) -> dict:
        raise TypeError("a CachedShardReader travels with its RemoteDataset")


class RemoteDataset(PackedDataset):
    """A packed dataset read from ``url`` through a :class:`ShardCache`; see :func:`open_remote`.

    ``path`` is the cache entry (where the index is); ``url`` is what the user opened. Pickles as
    (url, entry, cache settings): a process that unpickles it reopens the index from the entry
    without a request and builds its own store (object-store clients are not fork-safe).
    """

    def __init__(self, url: str, entry: Path, cache: ShardCache, store=None):
        self.url, self._cache, self._store = url, cache, store
        super().__init__(entry, read_manifest(entry))
        raw = json.loads((entry / MANIFEST_NAME).read_bytes())
        shards = raw.get("shards", []) if isinstance(raw, dict) else []
        # The pack records a digest of each whole shard file (and may record its size) for this check.
        self._digests = [s.get("digest") if isinstance(s, dict) else None for s in shards]
        self._sizes = [s.get("size") if isinstance(s, dict) and type(s.get("size")) is int else None
                       for s in shards]
        self._readers = [CachedShardReader(entry / s.name, self, i) for i, s in enumerate(self.manifest.shards)]

    def __repr__(self) -> str:
        return (f"RemoteDataset({self.url!r}: {len(self)} records, {len(self.classes)} classes, "
                f"{len(self._readers)} shards, cached in {self.path})")

    @property
    def store(self):
        """The store of ``url`` (built on first use in each process)."""
        if self._store is None:
            self._store = open_url_store(self.url)
        return self._store

    def _fetch_pinned(self, s: int) -> int:
        """Fetch shard ``s`` into the cache if it is not there, and pin it: the pin's descriptor."""
        info = self.manifest.shards[s]
        path = self.path / info.name
        for _ in range(3):     # evicted between the fetch and the pin: fetch again
            fd = self._cache.pin(path)
            if fd is not None:
                size = path.stat().st_size       # pinned: it stays
                if size < info.bytes:
                    ShardCache.unpin(fd)
                    raise DatasetError(f"{self.url}/{info.name} is {size} bytes, but the manifest says it holds "
                                       f"{info.bytes} bytes of records; {REPACK_HINT}")
                return fd
            self._cache.fetch(self.store, info.name, size=self._sizes[s], digest=self._digests[s],
                              entry=self.path.name)
        raise DatasetError(f"{self.url}/{info.name}: evicted from the cache in {self._cache.dir} as soon as it was "
                           f"fetched, three times: raise cache_limit or run fewer readers on this node")

    def _check_entries(self, s: int, entries: int) -> None:
        info = self.manifest.shards[s]
        if entries != info.entries:
            raise DatasetError(f"{self.url}: shard {info.name} holds {entries} values but the manifest says "
                               f"{info.entries}; {REPACK_HINT}")

    def read(self, i: int) -> bytes:
        if self._cache.limit is None:
            return super().read(i)
        return self.read_batch([i])[0].tobytes()

    def read_batch(self, indices, *, unreadable: dict[int, str] | None = None) -> list[np.ndarray]:
        if self._cache.limit is None:     # nothing is evicted: shards stay open, as in a local pack
            return super().read_batch(indices, unreadable=unreadable)
        # One shard at a time, unpinned after, so a batch never needs more of the cache than one shard.
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            return super().read_batch(idx, unreadable=unreadable)     # raises naming the index
        shard = np.searchsorted(self._firsts, idx, side="right") - 1
        out: list = [None] * len(idx)
        for s in np.unique(shard).tolist():
            where = np.flatnonzero(shard == s)
            try:
                part = super().read_batch(idx[where], unreadable=unreadable)
            finally:
                self._readers[s].close()
            for k, a in zip(where.tolist(), part):
                out[k] = a
        return out

    def __getstate__(self) -> dict:
        return {"url": self.url, "entry": str(self.path), "cache_dir": str(self._cache.dir),
                "cache_limit": self._cache.limit}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], Path(state["entry"]), ShardCache(state["cache_dir"], state["cache_limit"]))


def open_remote(url: str, *, cache_dir=None, cache_limit=None, store=None) -> RemoteDataset:
    """Open the packed dataset at ``url`` (``s3://``, ``gs://``, ``az://``, ``file://``) through the
    node-local cache (see the module docstring). ``store`` overrides the backend (tests)."""
    cache = ShardCache(cache_dir, cache_limit)
    store = store if store is not None else open_url_store(url)
    try:
        manifest = store.read(MANIFEST_NAME)
    except DatasetError as e:
        if "does not exist" not in str(e):     # a refused credential, a failure after retries: as the store says
            raise
        raise DatasetError(f"not a packed dataset: {url} has no {MANIFEST_NAME}; create one with "
                           f"`loader pack SRC {url}`") from None
    try:
        obj = json.loads(manifest)
    except ValueError:
        raise DatasetError(f"{url}/{MANIFEST_NAME} is not JSON: the dataset is damaged; {REPACK_HINT}") from None
    entry = fingerprint(url, manifest)
    keys = _index_keys(obj)
    folder = cache.entry(entry)
    if cache.limit is not None:
        raw = obj.get("shards") if isinstance(obj, dict) else None
        shards = [x for x in (raw if isinstance(raw, list) else [])
                  if isinstance(x, dict) and type(x.get("bytes")) is int and isinstance(x.get("name"), str)]
        # The file of the shard with the most payload (LMDB adds pages): one size request.
        largest = store.size(max(shards, key=lambda x: x["bytes"])["name"]) or 0 if shards else 0
        done = (folder / ".complete").exists()
        index_bytes = len(manifest) + sum(((folder / k).stat().st_size if done else store.size(k)) or 0 for k in keys)
        cache.check_fits(largest=largest, index_bytes=index_bytes, url=url)
    if not (folder / ".complete").exists():
        cache.fetch_all(_ManifestFirst(store, manifest), [MANIFEST_NAME, *keys], entry=entry)
    return RemoteDataset(url, folder, cache, store)


class _ManifestFirst:
    """``store`` that serves ``manifest.json`` from the bytes already read: the entry's name is
    their fingerprint, so the entry must hold exactly those bytes."""

    def __init__(self, store, manifest: bytes):
        self._store, self._manifest, self.url = store, manifest, store.url

    def size(self, key: str) -> int | None:
        return len(self._manifest) if key == MANIFEST_NAME else self._store.size(key)

    def download(self, key: str, dest: Path) -> None:
        if key == MANIFEST_NAME:
            Path(dest).write_bytes(self._manifest)
        else:
            self._store.download(key, dest)
