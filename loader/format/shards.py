"""Shard files: single-file LMDB environments holding raw encoded images.

Shard ``s`` is ``shard-%05d.lmdb``; its values are stored under keys
``b"%010d" % k``, ``k = 0, 1, 2, ...`` (local to the shard), and hold image
files' bytes end to end -- nothing else, no pickle. LMDB gives memory-mapped,
zero-setup reads that many processes can share through the page cache.

Small records share a value (a *block*): LMDB stores a value of more than
about half a page (~2 KB) in whole 4 KB overflow pages of its own, so a
2.7 KB thumbnail stored alone took 4 KB plus its node: 1.57 bytes on disk per
input byte at 1.281M records. Records are appended to the current block while
it stays within :data:`BLOCK_BYTES`; a record of that size or more gets a value
of its own (a photo is still one value, one read). A block wastes at most the
tail of its last page, ~3% on average at 64 KB. Readers copy only the record's
slice out of the map (``buffers=True``), so a block costs no read amplification.
Version 1/2 shards hold one record per value (``BLOCK_BYTES`` 0).

>>> with ShardWriter("shard-00000.lmdb") as w:           # doctest: +SKIP
...     w.append(jpeg_bytes)
(0, 0)
>>> ShardReader("shard-00000.lmdb").read(0) == jpeg_bytes  # doctest: +SKIP
True
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass

import lmdb

from loader.errors import DatasetError
from loader.format.files import REPACK_HINT

__all__ = ["BLOCK_BYTES", "ShardInfo", "ShardReader", "ShardWriter", "check_shard_file", "check_shard_name",
           "lmdb_needs_bytes", "parse_shards", "record_key", "shard_name"]

_MIB = 1 << 20
# Largest block of small records (bytes). 64 KB: at 2.7 KB records the last page's
# slack is ~3% of a block; larger blocks gain little and lengthen a commit.
BLOCK_BYTES = 64 * 1024


def check_shard_name(name: object, where: str = "manifest") -> str:
    """Return ``name`` if it is a plain file name (no folders, no ``..``).

    A manifest must not make a reader open files outside its dataset folder.

    >>> check_shard_name("shard-00000.lmdb")
    'shard-00000.lmdb'
    """
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\\" in name or "\0" in name or os.path.isabs(name) or ":" in name):
        raise DatasetError(f"{where}: unsafe shard name {name!r}: shard names must be plain file "
                           f"names inside the dataset folder; the manifest was tampered with or "
                           f"corrupted, {REPACK_HINT}")
    return name


@dataclass(frozen=True)
class ShardInfo:
    """One shard file: ``records`` records from global index ``first`` on, in ``values`` LMDB
    values (``values == records`` before version 3), ``bytes`` of record payload."""

    name: str
    first: int
    records: int
    bytes: int
    values: int | None = None

    @property
    def entries(self) -> int:
        """LMDB entries the shard file must hold."""
        return self.records if self.values is None else self.values




def parse_shards(raw: object, where: str, *, with_values: bool) -> tuple[ShardInfo, ...]:
    """Shard entries of a manifest, checked: plain names, integer counts, contiguous."""
    if not isinstance(raw, list) or not raw:
        raise DatasetError(f"{where}: 'shards' must be a non-empty list")
    keys = ("first", "records", "bytes") + (("values",) if with_values else ())
    shards = []
    for s in raw:
        if not isinstance(s, dict) or not all(type(s.get(k)) is int and s[k] >= 0 for k in keys):
            raise DatasetError(f"{where}: bad shard entry {s!r}")
        shards.append(ShardInfo(check_shard_name(s.get("name"), where), s["first"], s["records"],
                                s["bytes"], s["values"] if with_values else None))
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise DatasetError(f"{where}: shard names repeat")
    expected_first = 0
    for s in shards:
        if s.first != expected_first:
            raise DatasetError(f"{where}: shard {s.name} starts at record {s.first}, expected "
                               f"{expected_first} (shards must be contiguous)")
        if s.values is not None and (s.values > s.records or (s.values == 0 and s.records)):
            raise DatasetError(f"{where}: shard {s.name} lists {s.values} values for {s.records} records")
        expected_first += s.records
    return tuple(shards)




# LMDB's file header (lmdb 0.9, the version py-lmdb bundles): pages 0 and 1 each hold a meta
# record after a 16-byte page header; the newer one (larger txnid) says how many pages the file has.
_META_MAGIC, _META_VERSION = 0xBEEFC0DE, 1
_META = struct.Struct("<II8x8xI44x48xQQ")  # magic, version, page size (free DB's md_pad), last page, txnid
_PAGE_HEADER = 16


def lmdb_needs_bytes(path: str | os.PathLike) -> int | None:
    """Bytes the LMDB file at ``path`` must have by its own header: (last page + 1) x page size,
    from the newer of its two meta pages; None if no meta page is valid (LMDB itself then refuses it).

    LMDB maps the file for as many pages as its header says: a file cut short maps past its
    end, and the first read there kills the process with SIGBUS instead of raising.
    """
    with open(path, "rb") as f:
        best = None
        offset = 0
        for _ in range(2):
            f.seek(offset + _PAGE_HEADER)
            raw = f.read(_META.size)
            if len(raw) < _META.size:
                break
            magic, version, psize, last_page, txnid = _META.unpack(raw)
            if magic != _META_MAGIC or version != _META_VERSION or psize < 512 or psize & (psize - 1):
                break
            if best is None or txnid > best[0]:
                best = (txnid, (last_page + 1) * psize)
            offset = psize if offset == 0 else offset
        return None if best is None else best[1]


def check_shard_file(path: str | os.PathLike) -> None:
    """Raise :class:`DatasetError` if the shard file at ``path`` is shorter than its LMDB header
    says (see :func:`lmdb_needs_bytes`): checked before LMDB maps it."""
    try:
        size = os.path.getsize(path)
        need = lmdb_needs_bytes(path)
    except OSError as e:
        raise DatasetError(f"cannot read shard {path}: {e.strerror or e}") from None
    if need is not None and size < need:
        raise DatasetError(f"shard {path} is {size} bytes, its LMDB header needs {need}: the file is "
                           f"truncated (a copy cut short?); copy it again or {REPACK_HINT}")


def shard_name(index: int) -> str:
    """File name of shard ``index``.

    >>> shard_name(3)
    'shard-00003.lmdb'
    """
    return f"shard-{index:05d}.lmdb"


def record_key(local: int) -> bytes:
    """LMDB key of the ``local``-th record of a shard.

    >>> record_key(42)
    b'0000000042'
    """
    return b"%010d" % local


class ShardWriter:
    """Append records to a new shard file: small ones gathered into blocks (module docstring).

    Values are buffered and committed in chunks (one transaction per
    ``commit_bytes`` / ``commit_records``), not one per value. The memory map
    grows (doubling) when it fills, so ``map_size`` is only a first guess.
    ``block_bytes=0`` stores one record per value (the version 1/2 layout).
    """

    def __init__(self, path: str | os.PathLike, map_size: int = 256 * _MIB,
                 commit_bytes: int = 32 * _MIB, commit_records: int = 256,
                 block_bytes: int = BLOCK_BYTES):
        self.path = os.fspath(path)
        self.commit_bytes = commit_bytes
        self.commit_records = commit_records
        self.block_bytes = block_bytes
        self.count = 0            # records
        self.values = 0           # LMDB values (blocks) written or started
        self.payload_bytes = 0
        self._block: list[bytes] = []
        self._block_len = 0
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_bytes = 0
        # sync=False: one fsync in close() instead of one per commit; an
        # interrupted pack is thrown away anyway (it writes to a partial folder). meminit=True: pages are
        # zeroed, not left with heap bytes, so a shard file (and its digest in the manifest) is reproducible.
        self._env = lmdb.open(self.path, subdir=False, map_size=max(map_size, _MIB), sync=False,
                              metasync=False, readahead=False, meminit=True, max_dbs=0)

    def append(self, data: bytes) -> tuple[int, int]:
        """Queue ``data`` as the next record; return ``(key, offset)``: the local key number of
        the value that holds it and where it starts in that value."""
        n = len(data)
        if self._block and self._block_len + n > self.block_bytes:
            self._close_block()
        if not self._block:
            self.values += 1
        key, offset = self.values - 1, self._block_len
        self._block.append(data)
        self._block_len += n
        self.count += 1
        self.payload_bytes += n
        if self._block_len >= self.block_bytes:
            self._close_block()
        return key, offset

    def _close_block(self) -> None:
        data = self._block[0] if len(self._block) == 1 else b"".join(self._block)
        self._pending.append((record_key(self.values - 1), data))
        self._pending_bytes += len(data)
        self._block, self._block_len = [], 0
        if self._pending_bytes >= self.commit_bytes or len(self._pending) >= self.commit_records:
            self.flush()

    def flush(self) -> None:
        """Commit the queued values (the open block stays open)."""
        if not self._pending:
            return
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._pending:
                        # Keys arrive in increasing order: append mode skips the
                        # B-tree search and fills pages completely.
                        txn.put(key, value, append=True)
                break
            except lmdb.MapFullError:  # the aborted transaction is retried in a bigger map
                size = self._env.info()["map_size"]
                self._env.set_mapsize(max(2 * size, size + 4 * self._pending_bytes))
        self._pending.clear()
        self._pending_bytes = 0

    def close(self) -> None:
        """Commit, flush to disk, close, and remove the ``-lock`` file."""
        if self._env is None:
            return
        try:
            if self._block:
                self._close_block()
            self.flush()
            self._env.sync(True)
        finally:
            self._env.close()
            self._env = None
            try:
                os.remove(self.path + "-lock")
            except FileNotFoundError:
                pass

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()




# py-lmdb refuses to open one file twice in a process, so every reader of a
# file in this process shares one environment and read transaction (the data
# never change). Keyed by (st_dev, st_ino): a dataset re-packed at the same
# path is a different file. Entries: key -> [env, txn, number of users].
_OPEN: dict[tuple[int, int], list] = {}
_OPEN_PID = os.getpid()
_OPEN_LOCK = threading.Lock()
# Keys whose release a finalizer could not do at once: ShardReader.__del__ may
# run inside _acquire (the garbage collector fires on any allocation, e.g. in
# lmdb.open) while this thread holds _OPEN_LOCK; waiting there would deadlock
# (seen in the test suite). They are released by the next _acquire/_release.
_PENDING: list[tuple[int, int]] = []


def _forget_parent_envs() -> None:
    """In a forked child: drop the environments inherited from the parent.

    Closing them here only unmaps this process's copy (they are read-only and
    lock-free: no shared lock state) and tells py-lmdb the files are free.
    """
    global _OPEN_PID
    for env, _txn, _users in _OPEN.values():
        try:
            env.close()
        except Exception:
            pass
    _OPEN.clear()
    _OPEN_PID = os.getpid()


def _drop(key: tuple[int, int]) -> None:
    """One user less of ``key``'s environment; close it with the last. Hold _OPEN_LOCK."""
    entry = _OPEN.get(key) if _OPEN_PID == os.getpid() else None
    if entry is not None:
        entry[2] -= 1
        if entry[2] <= 0:
            del _OPEN[key]
            entry[0].close()


def _drain_pending() -> None:
    while _PENDING:
        _drop(_PENDING.pop())


def _acquire(path: str) -> tuple[tuple[int, int], lmdb.Environment, lmdb.Transaction]:
    with _OPEN_LOCK:
        if _OPEN_PID != os.getpid():
            _forget_parent_envs()
            _PENDING.clear()   # the parent's keys
        _drain_pending()
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            entry = _OPEN.get(key)
            if entry is None:
                check_shard_file(path)     # before LMDB maps it: a short file would kill us with SIGBUS
                env = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=False,
                                meminit=False, max_readers=2048)
                # buffers=True: get() returns a view into the map, so a reader copies just
                # its record's slice of a block (see the module docstring).
                entry = _OPEN[key] = [env, env.begin(buffers=True), 0]
        except (OSError, lmdb.Error) as e:
            raise DatasetError(f"cannot open shard {path}: {getattr(e, 'strerror', None) or e}; "
                               f"{REPACK_HINT}") from None
        entry[2] += 1
        return key, entry[0], entry[1]


def _release(key: tuple[int, int], *, blocking: bool = True) -> None:
    """Give back one use of ``key``; ``blocking=False`` (finalizers) defers it if the lock is taken."""
    if not _OPEN_LOCK.acquire(blocking=blocking):
        _PENDING.append(key)   # list.append is atomic: safe from a finalizer
        return
    try:
        _drain_pending()
        _drop(key)
    finally:
        _OPEN_LOCK.release()


class ShardReader:
    """Read records of one shard file; safe to pickle and to use after fork.

    The LMDB environment opens lazily in each process (read-only, lock-free, no
    readahead: random access is the common case) with one long-lived read
    transaction, shared by all readers of that file in the process. Pickling
    drops it; a forked child reopens its own.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._pid: int | None = None
        self._key: tuple[int, int] | None = None
        self._env: lmdb.Environment | None = None
        self._txn: lmdb.Transaction | None = None

    def txn(self) -> lmdb.Transaction:
        """This process's read transaction (opened on first use)."""
        if self._pid != os.getpid():
            self._key, self._env, self._txn = _acquire(self.path)
            self._pid = os.getpid()
        return self._txn

    def get_after_error(self, key: bytes):
        """``txn().get(key)`` once more, in a fresh read transaction: after LMDB fails a read (a
        damaged page) it refuses every later read of that transaction (MDB_BAD_TXN), and another
        reader of the file may have failed it. Raises the ``lmdb.Error`` if the key still fails."""
        self.txn()
        with _OPEN_LOCK:
            entry = _OPEN.get(self._key) if _OPEN_PID == os.getpid() else None
            if entry is not None:
                if entry[1] is self._txn:     # nobody renewed it yet (the failed one is left to the GC)
                    entry[1] = entry[0].begin(buffers=True)
                self._txn = entry[1]
        return self._txn.get(key)

    def read(self, key: int, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[offset, offset + length)`` of the value under ``key`` (all of it by default);
        :class:`DatasetError` if the value is missing or shorter."""
        txn = self.txn()
        try:
            try:
                value = txn.get(record_key(key))
            except lmdb.Error:
                value = self.get_after_error(record_key(key))
        except lmdb.Error as e:   # a damaged page: LMDB's checks raise (MDB_CORRUPTED, MDB_PAGE_NOTFOUND)
            raise DatasetError(f"shard {self.path} cannot be read at key {record_key(key).decode()} "
                               f"(LMDB: {e}): the shard is damaged; {REPACK_HINT}") from None
        if value is None:
            raise DatasetError(f"shard {self.path} has no value with key {record_key(key).decode()}; "
                               f"the dataset is damaged, {REPACK_HINT}")
        end = len(value) if length is None else offset + length
        if end > len(value):
            raise DatasetError(f"shard {self.path}: value {record_key(key).decode()} is {len(value)} "
                               f"bytes, the index wants bytes {offset}..{end}; the dataset is damaged, {REPACK_HINT}")
        return bytes(value[offset:end])

    def __len__(self) -> int:
        self.txn()
        return self._env.stat()["entries"]

    def close(self, *, _blocking: bool = True) -> None:
        """Stop using the file (closed when no reader in this process uses it)."""
        if self._key is not None and self._pid == os.getpid():
            _release(self._key, blocking=_blocking)
        self._key = self._env = self._txn = self._pid = None

    def __del__(self) -> None:
        try:
            self.close(_blocking=False)   # never wait in a finalizer: see _PENDING
        except Exception:  # interpreter shutdown: modules may be gone already
            pass

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])
