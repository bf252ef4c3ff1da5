"""The node-local cache of remote datasets' files: one download per file per node, bounded in bytes.

Layout: ``cache_dir/<entry>/<file>``; an entry is one dataset, named by a fingerprint of its URL and
its ``manifest.json`` bytes (:func:`fingerprint`), so two datasets, or a dataset re-packed at the same
URL, never share an entry, while every rank and job reading the same dataset on the node shares one.
``cache_dir`` defaults to ``$LOADER_CACHE`` or ``~/.cache/loader``.

Beside each cached file ``F`` live (all under ``fcntl.flock``, which the kernel drops when a process
dies, so a ``kill -9`` leaves no lock or pin behind):

- ``F.lock``: held exclusively while ``F`` is downloaded; a second process asking for ``F`` waits
  there and then finds ``F`` in place (one download per node, however many processes ask).
- ``F.tmp-<pid>-<bytes>``: the download in progress, ``bytes`` reserved for it; renamed to ``F`` only
  after its size and digest are checked, so nothing half-written is ever read. A temp file whose
  ``F.lock`` nobody holds was left by a killed process: the next fetch (or eviction scan) deletes it.
- ``F.pin``: held shared by every process that has ``F`` open (a reader's LMDB map); eviction takes it
  exclusively without waiting, so a pinned file is never removed under a reader.

``cache_limit`` bounds the bytes of every file under ``cache_dir`` (temp files included): room is made
before a download starts, by removing the least recently used (oldest mtime; a use touches it)
unpinned shard files, and the download's bytes are reserved with ``posix_fallocate``, all under one
cache-wide lock (``cache_dir/.lock``), so concurrent downloads never overshoot. Index files are never
evicted (they are small and every reader maps them).
"""

from __future__ import annotations

import concurrent.futures
import errno
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loader.errors import ArgumentError, DatasetError
from loader.units import MB

__all__ = ["ShardCache", "default_cache_dir", "fingerprint", "parse_bytes"]

_TMP = ".tmp-"
_SIDE = (".lock", ".pin")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": MB, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
# How long a fetch waits for readers to unpin shards before saying the limit is too small.
WAIT_FOR_ROOM_S = 120.0
#: Files of an index fetched at once (an index has 10-14).
INDEX_FETCHES = 16


def parse_bytes(value, param: str = "cache_limit") -> int | None:
    """A byte count from an int or a string such as ``"50GB"`` / ``"512MiB"`` (MB = 10^6, as
    everywhere in loader); None stays None. Anything else is an :class:`ArgumentError` naming ``param``.

    >>> parse_bytes("1.5GB"), parse_bytes(4096), parse_bytes("2MiB"), parse_bytes(None)
    (1500000000, 4096, 2097152, None)
    """
    if value is None:
        return None
    n = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n is None or n <= 0:
        raise ArgumentError(f"{param} must be a positive number of bytes (an int, or a string such as '50GB' "
                            f"or '512MiB'; MB = 10^6) or None, got {value!r}", param=param)
    return n


def default_cache_dir() -> Path:
    """``$LOADER_CACHE`` if set, else ``~/.cache/loader``."""
    return Path(os.environ.get("LOADER_CACHE") or Path.home() / ".cache" / "loader").expanduser()


def fingerprint(url: str, manifest: bytes) -> str:
    """The cache entry of the dataset at ``url`` whose ``manifest.json`` is ``manifest``.

    >>> fingerprint("s3://b/x.packed", b"{}") != fingerprint("s3://b/y.packed", b"{}")
    True
    """
    return hashlib.blake2b(url.rstrip("/").encode() + b"\0" + manifest, digest_size=10).hexdigest()


def _human(n: int) -> str:
    return f"{n / 10**9:.2f} GB" if n >= 10**9 else f"{n / MB:.1f} MB"


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[int | None]:
    """Hold ``flock(mode)`` on ``path`` (created if missing); yields None if ``LOCK_NB`` was refused."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)    # closing the descriptor drops the lock


def _digest_of(path: Path, digest: str) -> tuple[str, str]:
    """(expected hex, actual hex) of ``path`` for a digest written ``algo:hex``: the pack's ``blake2b-128``
    (:func:`loader.format.files.file_digest`), ``blake2b-<bits>`` or a hashlib name; bare hex: sha256."""
    algo, _, want = digest.rpartition(":")
    m = re.fullmatch(r"blake2b-(\d+)", algo)
    try:
        h = hashlib.blake2b(digest_size=int(m.group(1)) // 8) if m else hashlib.new(algo or "sha256")
    except ValueError:
        raise DatasetError(f"{path.name}: the index gives an unknown digest {digest!r}; "
                           f"re-pack with this loader") from None
    with open(path, "rb") as f:
        while chunk := f.read(8 * MB):
            h.update(chunk)
    return want.lower(), h.hexdigest()


class ShardCache:
    """The node-local cache under ``cache_dir`` (None: :func:`default_cache_dir`), holding at most
    ``cache_limit`` bytes (an int or ``"50GB"``; None: unbounded). See the module docstring."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, cache_limit: int | str | None = None):
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise ArgumentError(f"cache_dir must be a str, an os.PathLike or None, got {cache_dir!r}",
                                param="cache_dir")
        self.limit = parse_bytes(cache_limit, "cache_limit")
        self.dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ArgumentError(f"cache_dir {str(self.dir)!r} cannot be created ({e.strerror or e}): pass a "
                                f"writable folder as cache_dir or set $LOADER_CACHE", param="cache_dir") from None

    def __repr__(self) -> str:
        return f"ShardCache({str(self.dir)!r}, cache_limit={self.limit})"

    def entry(self, name: str) -> Path:
        """The folder of entry ``name`` (created)."""
        path = self.dir / name
        path.mkdir(exist_ok=True)
        return path

    def check_fits(self, *, largest: int, index_bytes: int, url: str) -> None:
        """Refuse a ``cache_limit`` below the index plus two of the largest shard (one being read while
        the next one downloads): :class:`ArgumentError` stating the minimum."""
        need = index_bytes + 2 * largest
        if self.limit is not None and self.limit < need:
            raise ArgumentError(f"cache_limit={self.limit} ({_human(self.limit)}) is too small for {url}: it needs "
                                f"at least {need} bytes ({_human(need)}: its index and 2 x its largest shard of "
                                f"{_human(largest)}); raise cache_limit or pass None", param="cache_limit")

    # -- fetching ------------------------------------------------------------------------------------
    def fetch(self, store, key: str, *, size: int | None, digest: str | None = None,
              entry: str | None = None) -> Path:
        """The local path of ``key`` of ``store`` in cache entry ``entry`` (default: one named by the
        store's URL), downloading it if absent: once per node (``key.lock``), to a temp file that is
        renamed into place after its ``size`` (None: ask the store) and ``digest`` (``algo:hex``) are
        checked. A mismatch is downloaded once more, then a :class:`DatasetError` naming the object."""
        folder = self.entry(entry or fingerprint(store.url, b""))
        dest = folder / key
        if "/" in key or key.startswith(".") or dest.parent != folder:
            raise DatasetError(f"{store.url}: key {key!r} is not a plain file name")
        why = ""
        for _attempt in range(2):
            with _flock(folder / (key + ".lock"), fcntl.LOCK_EX):
                try:
                    # Only checked files are renamed into place, and an entry is one version of the dataset:
                    # a file there is the object (no request), unless its size says it was damaged since.
                    if size is None or dest.stat().st_size == size:
                        os.utime(dest)
                        return dest
                    dest.unlink()
                except FileNotFoundError:
                    pass
                want = size if size is not None else store.size(key)
                if want is None:
                    raise DatasetError(f"{store.url}/{key} does not exist; re-pack or re-upload the dataset")
                for stale in folder.glob(key + _TMP + "*"):   # we hold key.lock: a killed download's
                    stale.unlink(missing_ok=True)
                # The reservation is in the name: while the store rewrites the file, its size says less.
                tmp = folder / f"{key}{_TMP}{os.getpid()}-{want}"
                self._reserve(tmp, want, f"{store.url}/{key}")
                try:
                    store.download(key, tmp, size=want)
                    got = tmp.stat().st_size
                    if got != want:
                        why = f"is {got} bytes, the index says {want}"
                    elif digest:
                        expected, actual = _digest_of(tmp, digest)
                        why = "" if expected == actual else f"has digest {actual}, the index says {expected}"
                except OSError as e:
                    tmp.unlink(missing_ok=True)
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise self._full(f"{store.url}/{key}", want) from None
                    raise
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                if not why:
                    # Under the cache-wide lock: a directory listing that races a rename may miss the file,
                    # and the accounting of a concurrent reservation must see it.
                    with _flock(self.dir / ".lock", fcntl.LOCK_EX):
                        os.replace(tmp, dest)
                    return dest
                tmp.unlink(missing_ok=True)
        raise DatasetError(f"{store.url}/{key} {why} (downloaded twice into {folder}): the object changed "
                           f"since the index was written or is damaged; re-pack or re-upload the dataset")

    def fetch_all(self, store, keys: list[str], *, entry: str) -> Path:
        """Fetch ``keys`` (an index: never evicted) into ``entry`` once per node; the marker
        ``.complete`` written last means they are all there. Returns the entry's folder."""
        folder = self.entry(entry)
        done = folder / ".complete"
        if done.exists():
            return folder
        with _flock(folder / ".index.lock", fcntl.LOCK_EX):
            if not done.exists():
                # At once: one by one, each a size request and a GET, the 11 files of an index took 0.5 s
                # at 20 ms a request (an object store's first-byte latency), in parallel one round trip.
                with concurrent.futures.ThreadPoolExecutor(min(INDEX_FETCHES, max(1, len(keys))),
                                                           thread_name_prefix="loader-index") as pool:
                    for f in [pool.submit(self.fetch, store, key, size=None, entry=entry) for key in keys]:
                        f.result()
                done.touch()
        return folder

    def pin(self, path: Path) -> int | None:
        """Pin the cached file ``path`` (a shared lock that eviction respects) if it is in the cache;
        returns the descriptor to give to :meth:`unpin`, or None if the file is not there (fetch it)."""
        fd = os.open(str(path) + ".pin", os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_SH)
        if path.exists():         # eviction removes the file only while holding the pin exclusively
            os.utime(path)        # the LRU clock
            return fd
        os.close(fd)
        return None

    @staticmethod
    def unpin(fd: int | None) -> None:
        """Drop a pin taken by :meth:`pin`."""
        if fd is not None:
            os.close(fd)

    # -- room ------------------------------------------------------------------------------------------
    def _full(self, what: str, size: int) -> DatasetError:
        free = shutil.disk_usage(self.dir).free
        return DatasetError(f"cache_dir {self.dir} is full: no room to download {what} ({_human(size)}; "
                            f"{_human(free)} free): free space there, set cache_limit below the free space, "
                            f"or point cache_dir (or $LOADER_CACHE) at a larger disk")

    def _reserve(self, tmp: Path, size: int, what: str) -> None:
        """Make room for ``size`` bytes (evicting) and reserve them as the temp file ``tmp``."""
        deadline = time.monotonic() + WAIT_FOR_ROOM_S
        delay = 0.01
        while True:
            with _flock(self.dir / ".lock", fcntl.LOCK_EX):
                short = 0 if self.limit is None else self._make_room(size)
                if short <= 0:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    try:
                        if size:
                            os.posix_fallocate(fd, 0, size)
                    except OSError as e:
                        os.close(fd)
                        tmp.unlink(missing_ok=True)
                        if e.errno in (errno.ENOSPC, errno.EDQUOT):
                            raise self._full(what, size) from None
                        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                            raise
                    else:
                        os.close(fd)
                    return
            if time.monotonic() > deadline:
                raise DatasetError(f"cache_limit={self.limit} in {self.dir}: no room for {what} ({_human(size)}) "
                                   f"after {WAIT_FOR_ROOM_S:.0f} s, the other files there are in use by readers on "
                                   f"this node; raise cache_limit by at least {short} bytes or run fewer readers")
            time.sleep(delay)
            delay = min(0.5, delay * 2)

    def usage(self) -> tuple[int, list[tuple[float, int, Path]]]:
        """(bytes of every file under cache_dir, [(mtime, bytes, path) of each cached shard file]).
        Temp files of killed downloads are deleted on the way."""
        total, shards = 0, []
        for folder in self.dir.iterdir():
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                name = f.name
                if name.endswith(_SIDE):
                    continue
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                size = st.st_size
                if _TMP in name:
                    base, _, tail = name.partition(_TMP)
                    with _flock(folder / (base + ".lock"), fcntl.LOCK_EX | fcntl.LOCK_NB) as held:
                        if held is not None:        # nobody downloads it: a killed process left it
                            f.unlink(missing_ok=True)
                            continue
                    reserved = tail.partition("-")[2]
                    size = max(size, int(reserved) if reserved.isdigit() else 0)
                elif name.endswith(".lmdb"):
                    shards.append((st.st_mtime, size, f))
                total += size
        return total, shards

    def _make_room(self, size: int) -> int:
        """Evict unpinned shards, least recently used first, until ``size`` more bytes fit under the
        limit; returns how many bytes are still missing (<= 0: it fits). Hold ``.lock``."""
        total, shards = self.usage()
        for _mtime, nbytes, f in sorted(shards):
            if total + size <= self.limit:
                break
            with _flock(Path(str(f) + ".pin"), fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
                if free is not None:
                    f.unlink(missing_ok=True)
                    total -= nbytes
        return total + size - self.limit
