"""Random access to a packed dataset: record ``i`` -> encoded image bytes.

Opening validates the manifest and every shard (present, with the record
count the manifest promises), so a damaged dataset fails at open with a
message naming the culprit rather than mid-epoch.

A :class:`PackedDataset` can be pickled and used from several processes (e.g.
``DataLoader`` workers): shards open read-only, lock-free and lazily in each
process.

>>> ds = open_dataset("photos.packed")                  # doctest: +SKIP
>>> len(ds), ds.classes, ds.source(0)  # doctest: +SKIP
(3000, ('cat', 'dog'), 'cat/001.jpg')
>>> jpeg = ds.read(0); label = int(ds.labels[0])        # doctest: +SKIP
>>> ds.multi_hot(np.array([0, 5]))      # doctest: +SKIP
array([[1., 0.],
       [0., 1.]], dtype=float32)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import lmdb
import numpy as np

from loader.errors import DatasetError
from loader.format.files import REPACK_HINT, check_inside
from loader.format.manifest import Manifest, read_manifest
from loader.format.shards import ShardReader, record_key
from loader.storage.store import is_url

__all__ = ["PackedDataset", "RemoteDataset", "open_dataset", "open_remote"]


class PackedDataset:
    """A packed dataset opened for reading; see :func:`open_dataset`.

    Labels: ``classes`` (a tuple, empty when unlabeled), ``labels`` (int32 per record; -1 for
    every record when unlabeled or multi-label), ``label_source`` (``"folders"``, ``"file"``
    or ``"none"``), ``multi_label``, and for multi-label datasets the CSR ``label_offsets`` /
    ``label_values`` (else None); :meth:`multi_hot` turns any kind into a target matrix.
    """

    def __init__(self, path: str | os.PathLike, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest
        self.classes: tuple[str, ...] = manifest.classes
        self.labels: np.ndarray = manifest.labels
        #: Where the labels came from: "folders" (one sub-folder per class), "file" (pack --labels),
        #: "none" (pack --unlabeled: no classes, labels all -1).
        self.label_source: str = manifest.label_source
        #: True if each record has a set of classes (then labels are all -1: see label_offsets).
        self.multi_label: bool = manifest.multi_label
        #: Multi-label only (else None): record i's sorted class indices are
        #: label_values[label_offsets[i]:label_offsets[i + 1]] (int64 [n + 1], int32).
        self.label_offsets: np.ndarray | None = manifest.label_offsets
        self.label_values: np.ndarray | None = manifest.label_values
        self.heights: np.ndarray = manifest.heights
        self.widths: np.ndarray = manifest.widths
        # Where each record is (since version 3): the value's key, and the slice of it.
        self._keys, self._offsets, self._lengths = manifest.keys, manifest.offsets, manifest.lengths
        self._firsts = np.array([s.first for s in manifest.shards], dtype=np.int64)
        self._readers = [ShardReader(self.path / s.name) for s in manifest.shards]

    @property
    def where(self) -> str:
        """How messages name this dataset: its folder (a remote one: the URL it was opened from)."""
        return str(self.path)

    def __len__(self) -> int:
        return self.manifest.num_records

    def __repr__(self) -> str:
        return (f"PackedDataset({str(self.path)!r}: {len(self)} records, "
                f"{len(self.classes)} classes, {len(self._readers)} shards)")

    def _check_index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"record index {i} out of range for {len(self)} records in {self.path}")
        return i

    def locate(self, i: int) -> tuple[str, int]:
        """``(shard file name, key number)`` of the LMDB value holding record ``i``.

        >>> ds.locate(1234)                                 # doctest: +SKIP
        ('shard-00001.lmdb', 58)
        """
        i = self._check_index(i)
        s = int(np.searchsorted(self._firsts, i, side="right")) - 1
        key = i - int(self._firsts[s]) if self._keys is None else int(self._keys[i])
        return self.manifest.shards[s].name, key

    def read(self, i: int) -> bytes:
        """Stored encoded bytes of record ``i`` (JPEG or PNG).

        Raises :class:`DatasetError` naming the record if it cannot be read (see :meth:`read_batch`).

        >>> ds.read(0)[:2]                                  # doctest: +SKIP
        b'\\xff\\xd8'
        """
        i = self._check_index(i)
        s = int(np.searchsorted(self._firsts, i, side="right")) - 1
        if self._keys is None:
            key, start, end = i - int(self._firsts[s]), 0, None
        else:
            key, start = int(self._keys[i]), int(self._offsets[i])
            end = start + int(self._lengths[i])
        try:
            value = self._readers[s].txn().get(b"%010d" % key)
        except lmdb.Error:
            value = None
        if value is not None and (end is None or end <= len(value)):
            return bytes(value[start:end])
        return self.read_batch([i])[0].tobytes()   # raises naming the record, or reads it in a renewed transaction

    def read_batch(self, indices: Iterable[int], *, unreadable: dict[int, str] | None = None) -> list[np.ndarray]:
        """Records ``indices`` as uint8 1-D arrays (the loader's fast path).

        A record that cannot be read (missing from its shard, cut short, or on an LMDB page that
        is damaged) raises :class:`DatasetError` naming it; given a dict ``unreadable``, it is
        added there instead (record -> why) and its array is empty, so a caller can replace it.

        >>> [a.dtype for a in ds.read_batch([0, 5])]        # doctest: +SKIP
        [dtype('uint8'), dtype('uint8')]
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = int(idx[(idx < 0) | (idx >= len(self))][0])
            raise IndexError(f"record index {bad} out of range for {len(self)} records in {self.path}")
        shard = np.searchsorted(self._firsts, idx, side="right") - 1
        shard_list = shard.tolist()
        gets = {s: self._readers[s].txn().get for s in set(shard_list)}  # opens only shards in use
        if self._keys is None:
            keys = (idx - self._firsts[shard]).tolist()
            starts = [0] * len(keys)
            ends = [None] * len(keys)
        else:
            keys = self._keys[idx].tolist()
            starts = self._offsets[idx].astype(np.int64)
            ends = (starts + self._lengths[idx]).tolist()
            starts = starts.tolist()
        out = []
        for k, (s, key) in enumerate(zip(shard_list, keys)):
            try:
                value = gets[s](b"%010d" % key)   # a view into the map: copy only the record's slice
            except lmdb.Error:   # a damaged page (LMDB checks page types and numbers), or a stale transaction
                try:
                    value = self._readers[s].get_after_error(b"%010d" % key)
                except lmdb.Error as e:
                    out.append(self._unreadable(int(idx[k]), f"cannot be read (LMDB: {e}): the shard is damaged",
                                                unreadable))
                    continue
                finally:
                    gets[s] = self._readers[s].txn().get    # the transaction that is now current
            if value is None or (ends[k] is not None and ends[k] > len(value)):
                why = ("is missing from its shard" if value is None else
                       f"is cut short: the value is {len(value)} bytes, the index wants bytes {starts[k]}..{ends[k]}")
                out.append(self._unreadable(int(idx[k]), why, unreadable))
                continue
            out.append(np.frombuffer(value[starts[k]:ends[k]], dtype=np.uint8).copy())
        return out

    def _unreadable(self, i: int, why: str, unreadable: dict[int, str] | None) -> np.ndarray:
        """Record ``i`` cannot be read (``why``: "is missing ...", "cannot be read ..."): raise naming
        it, or note ``"it " + why`` in ``unreadable`` and stand in an empty array."""
        if unreadable is None:
            shard, key = self.locate(i)
            raise DatasetError(f"{self.path}: record {i} ({shard} key {record_key(key).decode()}) {why}; "
                               f"{REPACK_HINT}")
        unreadable[i] = f"it {why}"
        return np.zeros(0, dtype=np.uint8)

    def multi_hot(self, records: np.ndarray) -> np.ndarray:
        """Targets of ``records`` as float32 ``[len(records), len(classes)]``: 1.0 where the
        record has the class, else 0.0.

        Multi-label: each record's row of the CSR (all zeros for a record with no class);
        single-label: one-hot of ``labels``; unlabeled: shape ``[len(records), 0]``.
        Vectorised (no loop over records). Raises IndexError for an index out of range.

        >>> ds.multi_hot(np.array([3, 0]))                 # doctest: +SKIP
        array([[1., 0., 1.],
               [0., 1., 0.]], dtype=float32)
        """
        idx = np.asarray(records, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = int(idx[(idx < 0) | (idx >= len(self))][0])
            raise IndexError(f"record index {bad} out of range for {len(self)} records in {self.path}")
        out = np.zeros((len(idx), len(self.classes)), dtype=np.float32)
        if self.multi_label:
            starts = self.label_offsets[idx]
            counts = self.label_offsets[idx + 1] - starts
            total = int(counts.sum())
            rows = np.repeat(np.arange(len(idx)), counts)
            # Position of each value: its row's start + its rank within the row.
            ranks = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            out[rows, self.label_values[np.repeat(starts, counts) + ranks]] = 1.0
        elif self.classes and idx.size:
            out[np.arange(len(idx)), self.labels[idx]] = 1.0
        return out

    def source(self, i: int) -> str:
        """Path of record ``i``'s source file, relative to the SRC it was packed from."""
        return self.manifest.source(self._check_index(i))

    def checksum(self, i: int) -> str:
        """Manifest checksum of record ``i``'s bytes (CRC-32 hex; blake2b-64 in version 1 manifests)."""
        return self.manifest.checksum(self._check_index(i))

    def close(self) -> None:
        """Close the shard files opened by this process (reopened on next use)."""
        for r in self._readers:
            r.close()

    def __getstate__(self) -> dict:
        # ShardReader pickles without its open environment: each process reopens. A version 3/4
        # index is mapped again (a pickle of the maps would copy them); older ones travel.
        return {"path": self.path, "manifest": None if self.manifest.keys is not None else self.manifest}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["manifest"] or read_manifest(state["path"]))


def _check_shards(path: Path, ds: PackedDataset) -> None:
    for info, reader in zip(ds.manifest.shards, ds._readers):
        f = path / info.name
        if not f.is_file():
            raise DatasetError(f"{path}: shard {info.name} is missing (the manifest lists it with "
                               f"{info.records} records); {REPACK_HINT}")
        # A shard is a plain file name (the manifest checks that), but the file may be a link:
        # nothing outside DST is read.
        check_inside(f, f"shard {info.name}")
        size = f.stat().st_size
        if size < info.bytes:    # the records' bytes alone need that much (LMDB's header: at first use)
            raise DatasetError(f"{path}: shard {info.name} is {size} bytes, but the manifest says it holds "
                               f"{info.bytes} bytes of records: the file is truncated or another file; "
                               f"copy it again or {REPACK_HINT}")
        entries = len(reader)
        if entries != info.entries:
            raise DatasetError(f"{path}: shard {info.name} holds {entries} values but the manifest "
                               f"says {info.entries}; {REPACK_HINT}")


def open_dataset(dst: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 cache_limit: int | str | None = None) -> PackedDataset:
    """Open the packed dataset at ``dst`` (made by ``loader pack``).

    ``dst`` may be a URL (``s3://``, ``gs://``, ``az://``, ``file://``): the index is fetched once per
    node into ``cache_dir`` (default ``$LOADER_CACHE`` or ``~/.cache/loader``) and each shard when
    first read, keeping at most ``cache_limit`` bytes (``"50GB"``) there; see
    :mod:`loader.storage.remote`. A plain path is read in place and never touches the cache.

    Raises :class:`DatasetError` if the manifest is missing, unsafe or
    inconsistent, or a shard is missing or disagrees with it.

    >>> ds = open_dataset("photos.packed")                  # doctest: +SKIP
    >>> ds = open_dataset("s3://bucket/photos.packed", cache_limit="50GB")  # doctest: +SKIP
    """
    if is_url(dst):
        return open_remote(dst, cache_dir=cache_dir, cache_limit=cache_limit)
    path = Path(dst)
    ds = PackedDataset(path, read_manifest(path))
    _check_shards(path, ds)
    return ds


class RemoteDataset(PackedDataset):
    """A packed dataset opened from a URL (see :mod:`loader.storage.remote`): ``path`` is its entry in
    the node-local cache (the index), ``url`` what was opened; each shard is fetched on first use.

    With a ``cache_limit``, :meth:`read_batch` reads one shard at a time and unpins it after, so a batch
    never needs more than one shard of the cache and the cache may evict what it read.
    """

    def __init__(self, source):
        self.source, self.url = source, source.url
        super().__init__(source.entry, read_manifest(source.entry))
        self._readers = source.readers(self.manifest.shards)
        self._one_at_a_time = source.cache.limit is not None
        self._ahead, self._ahead_pid = None, None

    def read_ahead(self, records) -> None:
        """Start downloading the shards of ``records`` (this rank's plan, in order) ahead of the reads, in
        first-use order (:class:`loader.storage.readahead.ReadAhead`); stops the previous epoch's read-ahead.
        :class:`loader.load.feed.EpochFeed` calls it when an epoch starts."""
        from loader.storage.readahead import READ_AHEAD_THREADS, ReadAhead, read_ahead_budget

        self.stop_read_ahead()
        idx = np.asarray(records, dtype=np.int64).reshape(-1)
        if READ_AHEAD_THREADS <= 0 or not idx.size or idx.min() < 0 or idx.max() >= len(self):
            return           # (an index out of range: the read raises naming it)
        shard = np.searchsorted(self._firsts, idx, side="right") - 1
        uniq, first = np.unique(shard, return_index=True)
        by_first = np.argsort(first, kind="stable")
        order = uniq[by_first].tolist()
        _, from_end = np.unique(shard[::-1], return_index=True)     # the same sorted shards: their last reads
        last = (len(shard) - 1 - from_end)[by_first].tolist()
        shards = self.manifest.shards
        sizes = self.source.sizes
        budget = read_ahead_budget(self.source, shards)
        self._ahead = ReadAhead(self.source, shards, order, [sizes[s] if s < len(sizes) else None for s in order],
                                budget, threads=READ_AHEAD_THREADS, last=last)
        self._ahead_pid = os.getpid()

    def stop_read_ahead(self) -> None:
        """Stop the read-ahead of :meth:`read_ahead`, dropping its pins (a no-op if none runs)."""
        if self._ahead is not None and self._ahead_pid == os.getpid():
            self._ahead.stop()
        self._ahead = None

    def _consumed(self, idx: np.ndarray) -> None:
        if self._ahead is not None and self._ahead_pid == os.getpid() and idx.size:
            self._ahead.consumed(np.unique(np.searchsorted(self._firsts, idx, side="right") - 1).tolist(), idx.size)

    @property
    def where(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return (f"RemoteDataset({self.url!r}: {len(self)} records, {len(self.classes)} classes, "
                f"{len(self._readers)} shards, cached in {self.path})")

    def read(self, i: int) -> bytes:
        """See :meth:`PackedDataset.read`."""
        return self.read_batch([i])[0].tobytes() if self._one_at_a_time else super().read(i)

    def read_batch(self, indices: Iterable[int], *, unreadable: dict[int, str] | None = None) -> list[np.ndarray]:
        """See :meth:`PackedDataset.read_batch`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not self._one_at_a_time or (idx.size and (idx.min() < 0 or idx.max() >= len(self))):
            out = super().read_batch(idx, unreadable=unreadable)    # (an index out of range: raises naming it)
            self._consumed(idx)
            return out
        shard = np.searchsorted(self._firsts, idx, side="right") - 1
        out: list = [None] * len(idx)
        for s in np.unique(shard).tolist():
            where = np.flatnonzero(shard == s)
            try:
                part = super().read_batch(idx[where], unreadable=unreadable)
            finally:
                self._readers[s].close()     # unpinned: the cache may evict it
            for k, a in zip(where.tolist(), part):
                out[k] = a
        self._consumed(idx)
        return out

    def __getstate__(self) -> dict:
        return {"source": self.source}      # the entry and the cache's settings; each process its own store

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["source"])


def open_remote(url: str, *, cache_dir: str | os.PathLike | None = None, cache_limit: int | str | None = None,
                store=None) -> RemoteDataset:
    """:func:`open_dataset` for a URL: the index into the cache once per node, shards on first use.
    ``store`` replaces the URL's backend (a :class:`loader.storage.store.Store`; tests)."""
    from loader.storage.remote import open_source  # the cache and the stores: only for a URL

    return RemoteDataset(open_source(url, cache_dir=cache_dir, cache_limit=cache_limit, store=store))
