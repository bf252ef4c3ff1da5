"""Read-ahead from the epoch plan: a remote dataset's shards downloaded into the node-local cache ahead of
the reader, in the order the plan first uses them (:meth:`loader.format.dataset.RemoteDataset.read_ahead`
starts one per epoch)."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

from loader.storage.cache import ShardCache
from loader.storage.parts import urgency

if TYPE_CHECKING:
    from loader.storage.remote import RemoteSource

__all__ = ["READ_AHEAD_THREADS", "ReadAhead", "read_ahead_budget"]


#: Shards a process downloads ahead at once (plus the one its reader may be fetching itself): enough to
#: keep a few connections busy on a fast link, few enough to leave bandwidth to the other ranks of a node.
READ_AHEAD_THREADS = 3
# How long a read-ahead thread waits for the reader to make room before looking again (it also stops then).
_WAIT_S = 0.5
# The longest a download waits for the one before it in the plan to begin (a size request and the cache's
# reservation take 10-50 ms; a store that never says it has begun is not held up for longer).
_STAGGER_S = 0.5


class ReadAhead:
    """Downloads the shards of one epoch's plan ahead of the reader, in first-use order, with at most
    :data:`READ_AHEAD_THREADS` downloads at once, through the cache (one download per node still holds:
    a thread and a reader asking for the same shard meet at its lock).

    ``order`` is the plan's shards in first-use order, ``sizes`` their file sizes (None: asked for on the
    way), ``last`` the plan position (in records) of each one's last record. A shard stays pinned from its
    download until the reader has passed its last record, so eviction never removes a shard the reader
    still needs (``shuffle="block"`` reads a window of shards batch by batch: unpinned after the first
    batch, the window's shards were evicted by the next window's downloads and fetched again, 269 GETs
    for 11 shards and 0.25x the local rate at a cache of 4 shards); with a ``cache_limit`` the pinned
    shards never exceed ``budget`` bytes (the limit less the index and one shard being read, shared among
    the node's ``LOCAL_WORLD_SIZE`` ranks), so the read-ahead goes only as far as fits. A failed download is left
    for the reader to meet (it fetches the shard itself and raises the one-line error)."""

    def __init__(self, source: RemoteSource, infos, order: list[int], sizes: list[int], budget: int | None,
                 threads: int = READ_AHEAD_THREADS, last: list[int] | None = None):
        self._source, self._infos, self._order, self._sizes, self._budget = source, infos, order, sizes, budget
        self._last = last
        self._read = 0             # plan records the reader has read
        self._pos = {s: k for k, s in enumerate(order)}
        self._cond = threading.Condition()
        self._next = 0             # the next position of ``order`` a thread takes
        self._frontier = -1        # the furthest position the reader has read from
        self._ahead = 0            # bytes pinned or being fetched ahead of the reader
        self._pins: dict[int, int] = {}
        # Set when position k's download has queued its requests (or ended, or was skipped): position k + 1
        # begins only then, so the parts' pool sees the downloads in plan order (two threads starting at
        # once otherwise raced, and the later shard's parts took every connection half the time).
        self._started = [threading.Event() for _ in order]
        self._sizing: set[int] = set()
        self._stop = False
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run, name=f"loader-readahead-{i}", daemon=True)
                         for i in range(max(0, threads))]
        for t in self._threads:
            t.start()

    def _take(self) -> int | None:
        """The next position to fetch, once it fits in the budget; None when done or stopped."""
        with self._cond:
            while not self._stop and self._next < len(self._order):
                k = self._next
                if self._passed(k):                # the reader is done with it already
                    self._started[k].set()
                    self._next += 1
                    continue
                if k in self._sizing:              # another thread is asking for its size
                    self._cond.wait(_WAIT_S)
                    continue
                if self._sizes[k] is None:         # a size request, outside the lock
                    self._sizing.add(k)
                    self._cond.release()
                    try:
                        s = self._order[k]
                        size = self._source.file_size(s, self._infos[s])
                    except BaseException as e:     # noqa: BLE001 - left for the reader to meet
                        self.errors.append(e)
                        size = self._infos[self._order[k]].bytes
                    finally:
                        self._cond.acquire()
                    self._sizes[k] = size
                    self._sizing.discard(k)
                    self._cond.notify_all()
                    continue
                size = self._sizes[k]
                if self._budget is None or self._ahead + size <= self._budget:
                    self._next += 1
                    self._ahead += size
                    return k
                self._cond.wait(_WAIT_S)
            return None

    def _run(self) -> None:
        while (k := self._take()) is not None:
            s = self._order[k]
            fd = None
            try:
                begin_by = time.monotonic() + _STAGGER_S
                while k and not self._started[k - 1].wait(0.05) and not self._stop and time.monotonic() < begin_by:
                    pass
                with urgency(k, self._started[k]):    # its parts wait for those of the shards needed sooner
                    fd = self._source.fetch_pinned(self._infos[s], s)
            except BaseException as e:   # noqa: BLE001 - the reader meets it again and raises it, one line
                self.errors.append(e)
            finally:
                self._started[k].set()
            with self._cond:
                if fd is not None and not self._stop and not self._passed(k):
                    self._pins[k] = fd
                    fd = None
                else:
                    self._ahead -= self._sizes[k]
                self._cond.notify_all()
            ShardCache.unpin(fd)

    def _passed(self, k: int) -> bool:
        """Whether the reader needs position ``k`` no more: past its last record (without ``last``: read
        from it, or from a shard after it)."""
        return self._last[k] < self._read if self._last is not None else k <= self._frontier

    def consumed(self, shards, records: int = 0) -> None:
        """The reader has read ``records`` more plan records, from ``shards``: drop the pins it is done with."""
        done = []
        with self._cond:
            pos = max((self._pos.get(int(s), -1) for s in shards), default=-1)
            self._read += records
            if pos <= self._frontier and self._last is None:
                return
            self._frontier = max(pos, self._frontier)
            for k in [k for k in self._pins if self._passed(k)]:
                done.append(self._pins.pop(k))
                self._ahead -= self._sizes[k]
            self._cond.notify_all()
        for fd in done:
            ShardCache.unpin(fd)

    def stop(self) -> None:
        """Stop fetching (downloads under way finish) and drop every pin."""
        with self._cond:
            self._stop = True
            pins, self._pins = list(self._pins.values()), {}
            self._cond.notify_all()
        for fd in pins:
            ShardCache.unpin(fd)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the threads to end (tests)."""
        for t in self._threads:
            t.join(timeout)


def read_ahead_budget(source: RemoteSource, shards) -> int | None:
    """Bytes one process may hold ahead of its reader: None without a ``cache_limit``; else the limit
    less the index and one largest shard (the one being read), divided among ``LOCAL_WORLD_SIZE`` ranks."""
    limit = source.cache.limit
    if limit is None or not shards:
        return None if limit is None else 0
    s = max(range(len(shards)), key=lambda i: shards[i].bytes)
    largest = source.file_size(s, shards[s])    # the file of the shard with the most payload (LMDB adds pages)
    index = sum(f.stat().st_size for f in source.entry.iterdir() if f.is_file() and ".lmdb" not in f.name)
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        ranks = 1
    return max(0, (limit - index - largest) // ranks)
