"""Opening a dataset from a URL: the index once per node into the cache, each shard on first use.

``open_dataset("s3://...")`` (or ``file://``) reads ``manifest.json`` from the store (a few KB per
process: its bytes name the cache entry, see :func:`loader.storage.cache.fingerprint`), fetches the
columns and ``sources.bin`` (under the names it gives them, :func:`loader.format.manifest.index_files`)
into the entry once per node (:func:`open_source`), and :class:`loader.format.dataset.RemoteDataset`
reads the entry with a :class:`CachedShardReader` per shard, which fetches its shard when a record of
it is first read. Without a ``cache_limit`` a shard stays open (pinned) once read, as a local pack
does; with one, ``RemoteDataset.read_batch`` reads one shard at a time and unpins it after, so the
cache can evict it and a later read fetches it again.
(This module does not import :mod:`loader.format.dataset`, which imports it: no import cycle.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from loader.errors import DatasetError
from loader.format.files import REPACK_HINT
from loader.format.manifest import COLUMNS, MANIFEST_NAME, index_files, index_generation
from loader.format.shards import ShardInfo, ShardReader
from loader.storage.cache import ShardCache, fingerprint
from loader.storage.store import LocalStore, split_url

__all__ = ["CachedShardReader", "RemoteSource", "open_source", "open_url_store"]


def open_url_store(url: str):
    """The :class:`~loader.storage.store.Store` of ``url``: a :class:`LocalStore` for ``file://``, the
    object-store backend (:mod:`loader.storage.objectstore`) for the others."""
    scheme, _bucket, prefix = split_url(url)
    if scheme == "file":
        return LocalStore(prefix, url=url)
    from loader.storage.objectstore import open_store  # the optional backend, only when asked for

    return open_store(url)


def _index_keys(obj: dict, where: str) -> list[str]:
    """The files of the index beside ``manifest.json`` (version 3-5; older ones keep all in it), under
    the names its ``index_generation`` gives (version 5); a bad one is a DatasetError naming ``where``."""
    if not isinstance(obj, dict) or type(obj.get("version")) is not int or obj["version"] < 3:
        return []
    files = index_files(index_generation(obj, where))
    keys = [files[c] for c in COLUMNS] + [files["sources"]]
    if obj.get("multi_label") is True:
        keys += [files["label_offsets"], files["label_values"]]
    return keys


class CachedShardReader(ShardReader):
    """A :class:`ShardReader` whose file is fetched into the cache and pinned when first opened in a
    process, and unpinned when closed."""

    def __init__(self, source: RemoteSource, info: ShardInfo, index: int):
        super().__init__(source.entry / info.name)
        self._source, self._info, self._index, self._pin = source, info, index, None

    def txn(self):
        if self._pid != os.getpid():
            if self._pin is not None and self._pid is not None:
                # Our copy of the parent's pin: closing it leaves the parent's pin in place, and keeping it
                # would keep the shard pinned for as long as this process lives.
                os.close(self._pin)
            self._pin = None
            self._pin = self._source.fetch_pinned(self._info, self._index)
            try:
                txn = super().txn()
                entries = self._env.stat()["entries"]
                if entries != self._info.entries:
                    raise DatasetError(f"{self._source.url}: shard {self._info.name} holds {entries} values but "
                                       f"the manifest says {self._info.entries}; {REPACK_HINT}")
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
        raise TypeError("a CachedShardReader travels with its dataset's RemoteSource")


class RemoteSource:
    """Where a dataset opened from ``url`` lives: the cache entry ``entry`` (its index) in ``cache``, and
    the store its shards come from. Pickles without the store: each process builds its own on first
    use (object-store clients are not fork-safe)."""

    def __init__(self, url: str, entry: Path, cache: ShardCache, store=None):
        self.url, self.entry, self.cache, self._store = url, Path(entry), cache, store
        raw = json.loads((self.entry / MANIFEST_NAME).read_bytes())
        shards = raw.get("shards") if isinstance(raw, dict) else None
        shards = [x if isinstance(x, dict) else {} for x in (shards if isinstance(shards, list) else [])]
        # The pack records a digest of each whole shard file (and may record its size) for this check.
        self.digests = [x.get("digest") if isinstance(x.get("digest"), str) else None for x in shards]
        self.sizes = [x.get("size") if type(x.get("size")) is int else None for x in shards]

    @property
    def store(self):
        """The store of ``url`` (built on first use in each process)."""
        if self._store is None:
            self._store = open_url_store(self.url)
        return self._store

    def file_size(self, s: int, info: ShardInfo) -> int:
        """The size of shard ``s``'s file: from the index if it records it, else one size request (kept,
        and handed to the cache's fetch, which would otherwise ask again)."""
        while len(self.sizes) <= s:
            self.sizes.append(None)
        if self.sizes[s] is None:
            try:     # in the cache already: its size, with no request (not kept: the fetch checks the store's)
                return (self.entry / info.name).stat().st_size
            except FileNotFoundError:
                self.sizes[s] = self.store.size(info.name) or info.bytes
        return self.sizes[s]

    def readers(self, shards: tuple[ShardInfo, ...]) -> list[CachedShardReader]:
        """One reader per shard, fetching it on first use."""
        return [CachedShardReader(self, info, i) for i, info in enumerate(shards)]

    def fetch_pinned(self, info: ShardInfo, s: int) -> int:
        """Fetch shard ``s`` into the cache if it is not there, and pin it: the pin's descriptor."""
        path = self.entry / info.name
        for _ in range(3):     # evicted between the fetch and the pin: fetch again
            fd = self.cache.pin(path)
            if fd is not None:
                size = path.stat().st_size       # pinned: it stays
                if size < info.bytes:
                    ShardCache.unpin(fd)
                    raise DatasetError(f"{self.url}/{info.name} is {size} bytes, but the manifest says it holds "
                                       f"{info.bytes} bytes of records; {REPACK_HINT}")
                return fd
            self.cache.fetch(self.store, info.name, size=self.sizes[s] if s < len(self.sizes) else None,
                             digest=self.digests[s] if s < len(self.digests) else None, entry=self.entry.name)
        raise DatasetError(f"{self.url}/{info.name}: evicted from the cache in {self.cache.dir} as soon as it was "
                           f"fetched, three times: raise cache_limit or run fewer readers on this node")

    def __getstate__(self) -> dict:
        return {"url": self.url, "entry": str(self.entry), "cache_dir": str(self.cache.dir),
                "cache_limit": self.cache.limit}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], Path(state["entry"]), ShardCache(state["cache_dir"], state["cache_limit"]))


def open_source(url: str, *, cache_dir=None, cache_limit=None, store=None) -> RemoteSource:
    """Fetch the index of the packed dataset at ``url`` (``s3://``, ``gs://``, ``az://``, ``file://``)
    into its entry of the node-local cache, once per node (see the module docstring); ``store``
    overrides the backend (tests). :class:`loader.format.dataset.RemoteDataset` reads through it."""
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
    keys = _index_keys(obj, f"{url}/{MANIFEST_NAME}")
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
    return RemoteSource(url, folder, cache, store)


class _ManifestFirst:
    """``store`` that serves ``manifest.json`` from the bytes already read: the entry's name is
    their fingerprint, so the entry must hold exactly those bytes."""

    def __init__(self, store, manifest: bytes):
        self._store, self._manifest, self.url = store, manifest, store.url

    def size(self, key: str) -> int | None:
        return len(self._manifest) if key == MANIFEST_NAME else self._store.size(key)

    def download(self, key: str, dest: Path, *, size: int | None = None) -> None:
        if key == MANIFEST_NAME:
            Path(dest).write_bytes(self._manifest)
        else:
            self._store.download(key, dest, size=size)
