"""Large downloads as ranged parts, fetched by one pool per process in order of need.

A download of a known size (a shard) is cut into :data:`PARTS_IN_FLIGHT` ranges (no smaller than
:data:`MIN_PART_BYTES`, no larger than :data:`PART_BYTES`), fetched by :data:`PARTS_IN_FLIGHT` threads
shared by every download of the process, each range written at its offset in the destination file.
The pool takes the most urgent part next: the one whose download has the lowest :func:`urgency`. The
reader's own fetch (it waits for the shard now) is :data:`NOW`; :class:`loader.storage.readahead.ReadAhead`
marks each download with the shard's place in the plan's first-use order and begins them in that
order. So all connections go to the shard the reader needs next and the next shard's parts fill them
as they free up, instead of the link being split among the shards in flight: with one GET per shard
and three at once, the first shard of a block-shuffle window (15 MB, a link capped at 88 MB/s) came
after 0.74 s instead of the 0.17 s it takes alone.

Why ranges at all: one GET from S3 moves about 90 MB/s (AWS's guidance is parallel ranged GETs of 8-16
MB; boto3's ``download_file`` and the AWS CRT use 8 MB parts), so a node that decodes at 1-2 GB/s needs
many connections; parts give them to one shard at a time, keeping its arrival as early as the link
allows.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["MIN_PART_BYTES", "NOW", "PARTS_IN_FLIGHT", "PART_BYTES", "begun", "download_parts", "part_size",
           "urgency"]

#: The largest ranged GET (AWS's 8-16 MB guidance; boto3's and the CRT's part size is 8 MiB): a 64 MB
#: shard is 8 of them, a 512 MB one 64.
PART_BYTES = 8 << 20
#: The smallest: a file under two of them is one GET.
MIN_PART_BYTES = 1 << 20
#: Ranged GETs in flight per process, for all its downloads together: 8 x ~90 MB/s per S3 connection
#: is more than one rank decodes (a node's 8 ranks have 64).
PARTS_IN_FLIGHT = 8
#: The urgency of a download the caller waits for now (lower is more urgent; read-ahead uses 0, 1, ...).
NOW = -1

_local = threading.local()


@contextmanager
def urgency(rank: int, started: threading.Event | None = None) -> Iterator[None]:
    """Downloads this thread starts inside the block have urgency ``rank`` (lower: fetched first);
    ``started`` is set once the download's requests are queued (:func:`begun`)."""
    old = getattr(_local, "urgency", NOW), getattr(_local, "started", None)
    _local.urgency, _local.started = rank, started
    try:
        yield
    finally:
        _local.urgency, _local.started = old


def begun() -> None:
    """The download of this thread has queued its requests: set the ``started`` of :func:`urgency`."""
    started = getattr(_local, "started", None)
    if started is not None:
        started.set()


def part_size(size: int) -> int | None:
    """The part size of a ``size``-byte download: one part per pool thread within
    [:data:`MIN_PART_BYTES`, :data:`PART_BYTES`], so one download can use every connection; None (one
    GET) under two minimum parts."""
    if size < 2 * MIN_PART_BYTES:
        return None
    return min(PART_BYTES, max(MIN_PART_BYTES, -(-size // max(1, PARTS_IN_FLIGHT))))


def current_urgency() -> int:
    """The urgency of a download this thread starts now (:data:`NOW` outside :func:`urgency`)."""
    return getattr(_local, "urgency", NOW)


class _Pool:
    """``workers`` daemon threads running submitted calls lowest ``(urgency, submission)`` first."""

    def __init__(self, workers: int):
        self._heap: list = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        for i in range(workers):
            threading.Thread(target=self._run, name=f"loader-part-{i}", daemon=True).start()

    def submit(self, rank: int, fn: Callable[[], None]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            heapq.heappush(self._heap, (rank, next(self._seq), fn, fut))
            self._cond.notify()
        return fut

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                _rank, _seq, fn, fut = heapq.heappop(self._heap)
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:   # noqa: BLE001 - handed to the waiting download
                fut.set_exception(e)


_pool: _Pool | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


def _the_pool() -> _Pool:
    """This process's pool (a forked child starts its own: threads do not survive fork)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = _Pool(PARTS_IN_FLIGHT), os.getpid()
        return _pool


def write_at(fd: int, data, offset: int) -> int:
    """Write all of ``data`` (a buffer) at ``offset`` of ``fd``; the bytes written."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


def download_parts(dest: Path, size: int, fetch_range: Callable[[int, int, int, threading.Event], None]) -> None:
    """Write ``size`` bytes to ``dest`` as :func:`part_size` ranges fetched through the process's pool
    at this thread's :func:`urgency`. ``fetch_range(fd, start, end, stop)`` writes bytes
    ``[start, end)`` at their offset of ``fd`` (retrying as it must, and returning early once ``stop``
    is set). The first failure stops the parts not begun and is raised once every running part has
    returned (none writes after this returns)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT, 0o644)
    stop = threading.Event()
    futures: list[concurrent.futures.Future] = []
    try:
        os.ftruncate(fd, size)

        def part(start: int, end: int) -> None:
            if not stop.is_set():
                try:
                    fetch_range(fd, start, end, stop)
                except BaseException:
                    stop.set()
                    raise

        pool, rank, step = _the_pool(), current_urgency(), part_size(size) or size
        futures = [pool.submit(rank, lambda a=a: part(a, min(a + step, size))) for a in range(0, size, step)]
        begun()
        for f in futures:
            f.result()
    finally:
        stop.set()
        for f in futures:
            f.cancel()
        concurrent.futures.wait(futures)      # a running part still holds ``fd``
        os.close(fd)
