"""Shard files: single-file LMDB environments holding raw encoded images.

Shard ``s`` is ``shard-%05d.lmdb``; its ``k``-th record is stored under key
``b"%010d" % k`` (local to the shard), and the value is the image file's bytes
-- nothing else, no pickle. LMDB gives memory-mapped, zero-setup reads that
many processes can share through the page cache.

>>> with ShardWriter("shard-00000.lmdb") as w:           # doctest: +SKIP
...     w.append(jpeg_bytes)
0
>>> ShardReader("shard-00000.lmdb").read(0) == jpeg_bytes  # doctest: +SKIP
True
"""

from __future__ import annotations

import os
import threading

import lmdb

from loader.errors import DatasetError

__all__ = ["ShardReader", "ShardWriter", "record_key", "shard_name"]

_MIB = 1 << 20


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
    """Append records to a new shard file; records are numbered 0, 1, 2, ...

    Records are buffered and committed in chunks (one transaction per
    ``commit_bytes`` / ``commit_records``), not one per record. The memory map
    grows (doubling) when it fills, so ``map_size`` is only a first guess.
    """

    def __init__(self, path: str | os.PathLike, map_size: int = 256 * _MIB,
                 commit_bytes: int = 32 * _MIB, commit_records: int = 256):
        self.path = os.fspath(path)
        self.commit_bytes = commit_bytes
        self.commit_records = commit_records
        self.count = 0
        self.payload_bytes = 0
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_bytes = 0
        # sync=False: one fsync in close() instead of one per commit; an
        # interrupted pack is thrown away anyway (it writes to a partial folder).
        self._env = lmdb.open(self.path, subdir=False, map_size=max(map_size, _MIB), sync=False,
                              metasync=False, readahead=False, meminit=False, max_dbs=0)

    def append(self, data: bytes) -> int:
        """Queue ``data`` as the next record; return its local index."""
        local = self.count
        self._pending.append((record_key(local), data))
        self._pending_bytes += len(data)
        self.count += 1
        self.payload_bytes += len(data)
        if self._pending_bytes >= self.commit_bytes or len(self._pending) >= self.commit_records:
            self.flush()
        return local

    def flush(self) -> None:
        """Commit the queued records."""
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
                env = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=False,
                                meminit=False, max_readers=2048)
                entry = _OPEN[key] = [env, env.begin(), 0]
        except (OSError, lmdb.Error) as e:
            raise DatasetError(f"cannot open shard {path}: {getattr(e, 'strerror', None) or e}; "
                               f"re-pack the dataset with `loader pack SRC DST --overwrite`") from None
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

    def read(self, local: int) -> bytes:
        """Bytes of record ``local``; :class:`DatasetError` if it is missing."""
        value = self.txn().get(record_key(local))
        if value is None:
            raise DatasetError(f"shard {self.path} has no record with key {record_key(local).decode()}; "
                               f"the dataset is damaged, re-pack it")
        return value

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
