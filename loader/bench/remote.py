"""The cache rows of ``loader bench`` when the packed dataset is a URL (see :mod:`loader.bench.contenders`).

:class:`RemoteBench` owns one temporary folder (under ``cache_dir``, default the system's temporary
folder), removed by :meth:`RemoteBench.close` whatever happened:

* ``local/``  -- a cache holding every file of the dataset: the local rows (``loader``,
  ``dataloader-lmdb``, ``decode-limit``) read its entry in place, the same shard files as the URL's;
* ``warm/``   -- the warm row's cache, filled before that row is created;
* ``cold-N/`` -- the cold row's Nth measurement: a new, empty cache, removed after it.

:class:`CacheSampler` records the bytes of the files under a cache folder every 20 ms in a thread:
the figure ``cache_limit`` bounds (temporary downloads count at their reserved size, as the cache
reserves them with ``posix_fallocate``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from loader.bench.contenders import COLD, ContenderSpec, fetch_all_shards, make_contender

__all__ = ["CacheSampler", "ColdStats", "RemoteBench", "dir_usage"]


def dir_usage(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``, recursively (a file that vanishes while counted is skipped)."""
    files = total = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.stat(os.path.join(root, n)).st_size
            except FileNotFoundError:
                continue
            files += 1
    return files, total


class CacheSampler:
    """The peak bytes under ``path``, sampled every ``interval`` s in a daemon thread from :meth:`start`
    to :meth:`stop` (which returns it)."""

    def __init__(self, path: Path, interval: float = 0.02):
        self.path, self.interval, self.peak = Path(path), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loader-bench-cache-sampler", daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, dir_usage(self.path)[1])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> CacheSampler:
        """Begin sampling (one sample now)."""
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling (one last sample) and return the peak in bytes."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sample()
        return self.peak


class ColdStats:
    """What the cold row's measurements gave: per measurement, creation, first batch and time to it, and
    the images/s of a local loader started beside it (:meth:`RemoteBench.measure_started`)."""

    def __init__(self):
        self.create_s: list[float] = []
        self.first_batch_ms: list[float] = []
        self.ttfb_ms: list[float] = []
        # Beside each cold measurement: a new local loader timed the same way (images/s), the cold row's
        # like-for-like reference (a new DALI pipeline runs its first batches slower than a warmed-up one).
        self.local_started: list[float] = []

    def medians(self) -> tuple[float | None, float | None, float | None]:
        """(create_s, first_batch_ms, time_to_first_batch_ms), medians over the measurements."""
        def med(v):
            return statistics.median(v) if v else None
        return med(self.create_s), med(self.first_batch_ms), med(self.ttfb_ms)


class RemoteBench:
    """The temporary folders of a bench of ``url`` (see the module docstring)."""

    def __init__(self, url: str, *, cache_dir: str | os.PathLike | None, cache_limit: int | None):
        self.url, self.cache_limit = url, cache_limit
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="loader-bench-", dir=cache_dir))
        self.warm = self.work / "warm"
        self._cold = 0

    def local_copy(self) -> Path:
        """Fetch every file of the dataset into ``local/`` (no limit); the path of the local packed copy."""
        from loader.format.dataset import open_dataset

        ds = open_dataset(self.url, cache_dir=self.work / "local")
        try:
            fetch_all_shards(ds)
            return Path(ds.path)
        finally:
            ds.close()

    def fill_warm(self) -> None:
        """Fetch every shard into the warm cache (under ``cache_limit`` the oldest make room)."""
        from loader.format.dataset import open_dataset

        ds = open_dataset(self.url, cache_dir=self.warm, cache_limit=self.cache_limit)
        try:
            fetch_all_shards(ds)
        finally:
            ds.close()

    def warm_spec(self, spec: ContenderSpec) -> ContenderSpec:
        """``spec`` reading the URL through the warm cache."""
        return replace(spec, url=self.url, cache_dir=self.warm, cache_limit=self.cache_limit)

    def measure_cold(self, spec: ContenderSpec, cold: ColdStats, *, step_timer, on_start=None, on_end=None):
        """One cold measurement: a new contender on a new empty cache, timed from its creation.

        ``step_timer(contender)`` times its steady batches after the first and returns a
        :class:`loader.measure.Timing`; ``on_start(files, bytes)`` is told what the cache held at the
        start (nothing), ``on_end(contender, peak_bytes)`` is called before it closes. Returns
        ``(images, seconds)`` from the start of its creation to its last batch.
        """
        self._cold += 1
        folder = self.work / f"cold-{self._cold}"
        folder.mkdir()
        if on_start is not None:
            on_start(*dir_usage(folder))
        sampler = CacheSampler(folder).start()
        c = make_contender(replace(spec, name=COLD, url=self.url, cache_dir=folder, cache_limit=self.cache_limit))
        peak = None
        try:
            t0 = time.perf_counter()
            c.create()
            t1 = time.perf_counter()
            n0 = c.first()
            c.sync()
            t2 = time.perf_counter()
            t = step_timer(c)
            peak = sampler.stop()
            if on_end is not None:
                on_end(c, peak)
        finally:
            if peak is None:
                sampler.stop()
            c.close()
            shutil.rmtree(folder, ignore_errors=True)
        cold.create_s.append(t1 - t0)
        cold.first_batch_ms.append(1e3 * (t2 - t1))
        cold.ttfb_ms.append(1e3 * (t2 - t0))
        return n0 + t.count, (t2 - t0) + t.seconds

    @staticmethod
    def measure_started(spec: ContenderSpec, cold: ColdStats, *, step_timer) -> tuple[int, float]:
        """A new contender of ``spec`` (the local loader row's) timed as :meth:`measure_cold` times the
        cold row, from its creation through its first batch and ``step_timer``'s window; its images/s
        goes to ``cold.local_started``. Returns ``(images, seconds)``."""
        c = make_contender(spec)
        try:
            t0 = time.perf_counter()
            c.create()
            n0 = c.first()
            c.sync()
            t1 = time.perf_counter()
            t = step_timer(c)
        finally:
            c.close()
        images, seconds = n0 + t.count, (t1 - t0) + t.seconds
        cold.local_started.append(images / seconds)
        return images, seconds

    def close(self) -> None:
        """Remove every folder this bench made."""
        shutil.rmtree(self.work, ignore_errors=True)
