"""The race of ``loader bench``: :class:`BenchSettings` and :func:`bench`.

The clock (:func:`loader.measure.time_steps`), RSS sampling, device
resolution and table layout are :mod:`loader.measure`'s, shared with
``loader advise``; ``Timing`` and ``time_steps`` are re-exported here for
``benchmarks/``.

* :func:`bench` -- the round-robin race of :mod:`loader.bench.contenders`:
  every contender lives in one process and is measured once per repeat in a
  rotating order, so drift of the machine hits all alike; the median over the
  repeats is reported. Each contender is created once per (batch size, image
  size) and kept alive across repeats; its creation time and first-batch
  latency are reported apart from the steady state. Before each measurement a
  few batches are run untimed (at least what the contender keeps queued ahead),
  and after it the process tree is left to go idle (:func:`loader.bench.procstat.settle`),
  so a contender's background prefetching never runs inside another's
  measurement. Images are counted from the labels of every batch consumed.
  A dataset at a URL adds the cache rows (:mod:`loader.bench.remote`): the cold
  row is created anew on an empty cache for each measurement, which is timed
  from its creation (index download, first batch and no warm-up included).

GPU memory on CUDA: ``gpu_mem_mb`` is the device's peak used memory (every
contender of the configuration is alive at once, so it is the sum), and
``gpu_peak_memory_mb`` the contender's own: what the device gained from just
before its creation to the end of its first batch, plus the largest growth
during one of its measurements (the others are idle then). Device-wide figures
(``cudaMemGetInfo``) count DALI's pools, which torch's allocator statistics do not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loader.bench.contenders import (
    COLD,
    CONTENDERS,
    REMOTE_ROWS,
    RUN_ORDER,
    WARM,
    Contender,
    ContenderSpec,
    make_contender,
)
from loader.bench.procstat import settle
from loader.bench.remote import CacheSampler, ColdStats, RemoteBench, dir_usage
from loader.bench.results import BenchRow, with_ratios
from loader.bench.service import SERVICE, ServiceContender, ray_session, service_row
from loader.bench.source import resolve_source
from loader.errors import ArgumentError, LoaderError
from loader.measure import (
    Timing,
    check_choice,
    check_int,
    check_number,
    check_shared,
    interleaved,
    is_number,
    resolve_run_device,
    rss_bytes,
    time_steps,
)
from loader.storage.store import is_url
from loader.units import MB, available_cores

__all__ = ["BenchInterrupted", "BenchSettings", "Timing", "bench", "resolve_run_device", "time_steps"]


# ------------------------------------------------------------------ settings


@dataclass(frozen=True)
class BenchSettings:
    """What :func:`bench` measures and how; validated here, once (``loader bench --help`` documents each).

    ``workers`` (DataLoader processes) and ``threads`` (DALI threads) default to
    :func:`loader.units.available_cores`. Each measurement is ``batches``
    steady-state batches, or lasts ``seconds`` (4 s when neither is given).
    ``memory_budget_mb`` (MB = 10^6 bytes) only shapes the recommendation.
    Bad values raise :class:`~loader.errors.ArgumentError` naming the field
    (the fields ``loader advise`` shares: :func:`loader.measure.check_shared`).
    """

    batch_sizes: tuple[int, ...] = (64,)
    image_sizes: tuple[int, ...] = (224,)
    workers: int | None = None
    threads: int | None = None
    repeats: int = 3
    warmup: int = 5
    batches: int | None = None
    seconds: float | None = None
    train: bool = True
    device: str = "auto"
    prefetch: int = 2
    seed: int = 0
    pipelines: tuple[str, ...] = CONTENDERS
    memory_budget_mb: float | None = None
    eval_mode: str = "fast"          # the loader row's eval (ImageLoader's eval_mode)
    # Training colour jitter, b = c = s, of the loader and DataLoader rows (ContenderSpec).
    color_jitter: float = 0.0
    settle: bool = True            # wait for idle between measurements (tests turn it off)
    # A dataset at a URL: where the cache rows' temporary caches go (default: the system's temporary
    # folder) and their cache_limit (bytes or "50GB"; None: none). See loader.bench.remote.
    cache_dir: str | Path | None = None
    cache_limit: int | str | None = None
    # The loader rows' training order (ImageLoader's shuffle): "global", or "block" (shard windows,
    # what a cache smaller than the dataset wants; docs/remote.md#shuffle).
    shuffle: str = "global"
    block_shards: int | None = None  # shuffle="block"'s window in shards (None: ImageLoader's rule)
    # pipelines "service": one row per actor count (loader.bench.service); the Ray cluster's address
    # (None: a local Ray started for the rows and stopped after).
    service_workers: tuple[int, ...] = (1, 2)
    service_address: str | None = None

    def __post_init__(self):
        def set_(name, value):   # frozen: the resolved defaults are filled in once, here
            object.__setattr__(self, name, value)

        if self.workers is None:
            set_("workers", available_cores())
        if self.threads is None:
            set_("threads", available_cores())
        batch_sizes, image_sizes = check_shared(self)   # the fields `loader advise` has too: one home
        set_("batch_sizes", batch_sizes)
        set_("image_sizes", image_sizes)
        check_int("workers", self.workers, 0)
        check_int("batches", self.batches, 1, optional=True)
        check_number("seconds", self.seconds, optional=True)
        if self.batches is not None and self.seconds is not None:
            raise ArgumentError(f"batches and seconds are exclusive: give one, got batches={self.batches!r} "
                                f"and seconds={self.seconds!r}", param="batches")
        if self.batches is None and self.seconds is None:
            set_("seconds", 4.0)
        from loader.augment.settings import EVAL_MODES

        check_choice("eval_mode", self.eval_mode, EVAL_MODES)
        check_choice("shuffle", self.shuffle, ("global", "block"))
        check_int("block_shards", self.block_shards, 1, optional=True)
        if self.block_shards is not None and self.shuffle != "block":
            raise ArgumentError(f"block_shards={self.block_shards} is the window of shuffle='block', but shuffle "
                                f"is {self.shuffle!r}", param="block_shards")
        if not is_number(self.color_jitter) or not 0 <= self.color_jitter < float("inf"):
            raise ArgumentError(f"color_jitter must be a number >= 0, got {self.color_jitter!r}", param="color_jitter")
        try:
            pipelines = tuple(self.pipelines)
        except TypeError:
            pipelines = ()
        if not pipelines or any(p not in CONTENDERS + (SERVICE,) for p in pipelines):
            raise ArgumentError(f"pipelines must name some of {', '.join(CONTENDERS + (SERVICE,))}, got "
                                f"{self.pipelines!r}", param="pipelines")
        set_("pipelines", pipelines)
        try:
            workers = tuple(self.service_workers)
        except TypeError:
            workers = ()
        for n in workers or (None,):
            check_int("service_workers", n, 1)
        set_("service_workers", workers)
        from loader.storage.cache import parse_bytes

        set_("cache_limit", parse_bytes(self.cache_limit, "cache_limit"))
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, Path)):
            raise ArgumentError(f"cache_dir must be a folder path or None, got {self.cache_dir!r}", param="cache_dir")


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`bench`: ``rows`` holds what was measured so far."""

    def __init__(self, rows: list[BenchRow]):
        super().__init__("interrupted")
        self.rows = rows


# ------------------------------------------------------------------ one contender's measurements


class _Stats:
    """What one contender accumulated in one configuration (mutable while measuring)."""

    def __init__(self):
        self.runs: list[float] = []
        self.images = 0
        self.seconds = 0.0
        self.create_s: float | None = None
        self.first_batch_ms: float | None = None
        self.peak_rss = 0
        self.peak_workers_rss = 0
        self.peak_gpu: int | None = None
        self.gpu_created: int | None = None   # device memory gained by create() + the first batch
        self.gpu_growth = 0                   # the largest growth during one measurement
        self._gpu_start: int | None = None
        self.cache_peak: int | None = None    # cache rows: peak bytes under cache_dir
        self.cache_start_files: int | None = None
        self.cache_start_bytes: int | None = None

    def cache_start(self, files: int, nbytes: int) -> None:
        """What the cache held as a measurement began (the largest over the measurements is kept)."""
        self.cache_start_files = max(self.cache_start_files or 0, files)
        self.cache_start_bytes = max(self.cache_start_bytes or 0, nbytes)

    def measure_starts(self, c: Contender) -> None:
        self._gpu_start = _gpu_used(c.spec.device)

    def sample_memory(self, c: Contender) -> None:
        """Main RSS + the contender's worker processes; the GPU's used memory."""
        workers = sum(rss_bytes(p) for p in c.worker_pids)
        self.peak_workers_rss = max(self.peak_workers_rss, workers)
        self.peak_rss = max(self.peak_rss, rss_bytes() + workers)
        if c.spec.device.startswith("cuda"):
            import torch

            free, total = torch.cuda.mem_get_info(c.spec.device)
            self.peak_gpu = max(self.peak_gpu or 0, total - free)
            if self._gpu_start is not None:
                self.gpu_growth = max(self.gpu_growth, total - free - self._gpu_start)

    def gpu_own(self) -> int | None:
        return None if self.gpu_created is None else max(self.gpu_created, 0) + self.gpu_growth

    def row(self, spec: ContenderSpec, s: BenchSettings, pack_s: float | None) -> BenchRow:
        return BenchRow(
            pipeline=spec.name, batch_size=spec.batch_size, image_size=spec.image_size,
            images_per_sec=statistics.median(self.runs) if self.runs else 0.0,
            workers=s.workers, threads=s.threads, images_per_sec_runs=tuple(self.runs),
            images=self.images, seconds=self.seconds, repeats=len(self.runs),
            first_batch_ms=self.first_batch_ms, create_s=self.create_s,
            peak_rss_mb=self.peak_rss / MB, workers_rss_mb=self.peak_workers_rss / MB,
            gpu_mem_mb=None if self.peak_gpu is None else self.peak_gpu / MB,
            device=spec.device, train=s.train, warmup=s.warmup, pack_s=pack_s,
            gpu_peak_memory_mb=None if self.gpu_own() is None else self.gpu_own() / MB)


def _gpu_used(device: str) -> int | None:
    """The device's used memory in bytes now (None on the CPU), after its queued work is done."""
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return total - free


def _measure(c: Contender, st: _Stats, s: BenchSettings) -> Timing:
    last = [0.0]

    def tick():   # memory every 0.1 s: /proc reads cost ~50 us
        now = time.perf_counter()
        if now - last[0] >= 0.1:
            last[0] = now
            st.sample_memory(c)

    st.measure_starts(c)
    t = time_steps(c.step, warmup=max(s.warmup, c.queue_depth), batches=s.batches, seconds=s.seconds,
                   sync=c.sync, tick=tick)
    st.sample_memory(c)
    st.runs.append(t.rate)
    st.images += t.count
    st.seconds += t.seconds
    return t


def _window(s: BenchSettings):
    """Times a contender's batches after its first, with no warm-up (the cold row's window)."""
    def timer(c: Contender) -> Timing:
        return time_steps(c.step, warmup=0, batches=s.batches, seconds=s.seconds, sync=c.sync)
    return timer


def _measure_cold(remote: RemoteBench, spec: ContenderSpec, st: _Stats, cold: ColdStats, s: BenchSettings) -> Timing:
    """One cold-cache measurement (:meth:`RemoteBench.measure_cold`): images / seconds from the
    contender's creation on an empty cache through its first batch and ``batches`` more (no warm-up:
    the downloads are what is measured)."""
    last = [0.0]

    def timer(c: Contender) -> Timing:
        def tick():
            now = time.perf_counter()
            if now - last[0] >= 0.1:
                last[0] = now
                st.sample_memory(c)

        return time_steps(c.step, warmup=0, batches=s.batches, seconds=s.seconds, sync=c.sync, tick=tick)

    def end(c: Contender, peak: int) -> None:
        st.sample_memory(c)
        st.cache_peak = max(st.cache_peak or 0, peak)

    images, seconds = remote.measure_cold(spec, cold, step_timer=timer, on_start=st.cache_start, on_end=end)
    t = Timing(count=images, seconds=seconds, steps=0)
    st.runs.append(t.rate)
    st.images += images
    st.seconds += seconds
    return t


def _row(name: str, spec: ContenderSpec, st: _Stats, cold: ColdStats, remote: RemoteBench | None,
         s: BenchSettings, pack_s: float | None) -> BenchRow:
    """The row of ``name``; the cache rows with their cache figures."""
    row = st.row(spec, s, pack_s)
    if name not in REMOTE_ROWS:
        return row
    if name == COLD:
        create_s, first_ms, ttfb = cold.medians()
        if cold.local_started:
            row = dataclasses.replace(row, local_started_images_per_sec=statistics.median(cold.local_started))
    else:
        create_s, first_ms = st.create_s, st.first_batch_ms
        ttfb = None if create_s is None or first_ms is None else 1e3 * create_s + first_ms
    return dataclasses.replace(row, url=remote.url, create_s=create_s, first_batch_ms=first_ms,
                               time_to_first_batch_ms=ttfb, cache_peak_bytes=st.cache_peak,
                               cache_limit=remote.cache_limit, cache_start_bytes=st.cache_start_bytes,
                               cache_start_files=st.cache_start_files)


def _close_all(contenders: dict[str, Contender], sampler: CacheSampler | None = None) -> None:
    if sampler is not None:
        sampler.stop()
    for c in contenders.values():
        try:
            c.close()
        except Exception as e:  # noqa: BLE001 - closing must not hide the real error
            print(f"[bench] closing {c.name} failed: {e}", file=sys.stderr)
    contenders.clear()
    gc.collect()


# ------------------------------------------------------------------ the race


def _resolve_device(device: str) -> str:
    return str(resolve_run_device(device, "loader bench"))


def bench(src: str | Path, settings: BenchSettings | None = None, *, packed: str | Path | None = None,
          progress: bool | Callable[[str], None] = True, notes: list[str] | None = None) -> list[BenchRow]:
    """Race the contenders on ``src``; one :class:`BenchRow` per contender x batch size x image size.

    ``src``: an image folder (packed once into ``packed``, default
    ``SRC.loader-cache``, and reused) or a packed dataset (then ``dataloader``
    is skipped: there are no original files). ``progress``: True prints one
    line per measurement to stderr; a callable receives the lines instead.
    ``notes``, if given, receives remarks for humans (skipped contenders, pack
    time). Ctrl-C raises :class:`BenchInterrupted` carrying the rows so far.

    >>> rows = bench("photos/", BenchSettings(batch_sizes=(64, 128)))    # doctest: +SKIP
    >>> [(r.pipeline, round(r.images_per_sec)) for r in rows]           # doctest: +SKIP
    [('dataloader', 410), ('dataloader-lmdb', 420), ('loader', 1350), ...]
    """
    s = settings or BenchSettings()
    log = progress if callable(progress) else (
        (lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None))
    notes = notes if notes is not None else []

    def note(msg: str) -> None:
        notes.append(msg)
        log(msg)

    folder, packed_path, report = resolve_source(
        src, packed, progress=progress is True, log=lambda m: note(m) if m.startswith("reusing") else log(m))
    if report is not None:
        note(f"packed {report.num_records} images into {packed_path} in {report.seconds:.1f} s "
             f"({report.images_per_sec:.0f} images/s, {report.mb_per_sec:.1f} MB/s of input), "
             f"once; not part of the throughput figures")
    url = str(packed_path) if is_url(packed_path) else None
    if url is None and (s.cache_dir is not None or s.cache_limit is not None):
        note(f"cache_dir and cache_limit apply to a dataset at a URL; {packed_path} is read in place without them")
    remote = None if url is None else RemoteBench(url, cache_dir=s.cache_dir, cache_limit=s.cache_limit)
    try:
        if remote is not None:
            packed_path = remote.local_copy()
            note(f"{url}: the local rows read a copy downloaded into {packed_path} (removed after); "
                 f"{COLD!r} and {WARM!r} read the URL through a cache in {remote.work}")
        with ray_session(s.service_address, s.threads) if SERVICE in s.pipelines else contextlib.nullcontext():
            rows = _race(s, src, folder, packed_path, report, remote, log, note)
    finally:
        if remote is not None:
            remote.close()
    return with_ratios(rows)


def _race(s: BenchSettings, src, folder, packed_path, report, remote: RemoteBench | None, log, note) -> list[BenchRow]:
    from loader.format.dataset import open_dataset

    ds = open_dataset(packed_path)
    num_records = len(ds)
    ds.close()
    wanted = s.pipelines
    if remote is not None and "loader" in wanted:
        wanted = wanted + REMOTE_ROWS
    if folder is None and "dataloader" in wanted:
        note(f"{src} is a packed dataset (no original files): skipping `dataloader`; "
             f"`dataloader-lmdb` runs the same DataLoader on the shards")
        wanted = tuple(p for p in wanted if p != "dataloader")
    if not wanted:
        raise LoaderError("no pipeline left to measure")
    if s.train and max(s.batch_sizes) > num_records:
        raise LoaderError(f"batch_sizes: {max(s.batch_sizes)} is larger than the dataset "
                          f"({num_records} images in {packed_path}); give smaller batch sizes", param="batch_sizes")

    device = _resolve_device(s.device)
    order = [p for p in RUN_ORDER if p in wanted]
    service = {service_row(n): n for n in s.service_workers} if SERVICE in wanted else {}
    order += list(service)
    pack_s = None if report is None else report.seconds
    mode = "train" if s.train else "eval"
    how = f"{s.batches} batches" if s.batches is not None else f"{s.seconds:g} s"
    rows: list[BenchRow] = []
    for size in s.image_sizes:
        for b in s.batch_sizes:
            specs = {name: ContenderSpec(name, packed=packed_path, folder=folder, batch_size=b, image_size=size,
                                         train=s.train, seed=s.seed, device=device, threads=s.threads,
                                         workers=s.workers, prefetch=s.prefetch, eval_mode=s.eval_mode,
                                         color_jitter=s.color_jitter, shuffle=s.shuffle,
                                         block_shards=s.block_shards) for name in order}
            if WARM in specs:
                specs[WARM] = remote.warm_spec(specs[WARM])
            contenders: dict[str, Contender] = {}
            stats = {name: _Stats() for name in order}
            cold, warm_sampler = ColdStats(), None
            try:
                for name in order:
                    if name == COLD:      # created afresh for every measurement, on an empty cache
                        continue
                    st = stats[name]
                    if name == WARM:
                        warm_sampler = CacheSampler(remote.warm).start()
                        remote.fill_warm()
                    c = (ServiceContender(specs[name], service[name], s.service_address) if name in service
                         else make_contender(specs[name]))
                    before = _gpu_used(device)
                    t0 = time.perf_counter()
                    c.create()
                    st.create_s = time.perf_counter() - t0
                    contenders[name] = c
                    t0 = time.perf_counter()
                    c.first()
                    c.sync()
                    st.first_batch_ms = 1e3 * (time.perf_counter() - t0)
                    if before is not None:
                        st.gpu_created = _gpu_used(device) - before
                    log(f"{name} batch={b} size={size} {mode}: created in {st.create_s:.2f} s, "
                        f"first batch in {st.first_batch_ms:.0f} ms")
                    if s.settle:
                        settle()
                for r, name in interleaved(order, s.repeats, rotate=True):   # rotate who goes first
                    if name == COLD:
                        t = _measure_cold(remote, specs[name], stats[name], cold, s)
                        if "loader" in specs:   # its like-for-like reference: a local loader started the same way
                            images, seconds = remote.measure_started(specs["loader"], cold, step_timer=_window(s))
                            log(f"loader started as the cold row is, batch={b} size={size} {mode} repeat "
                                f"{r + 1}/{s.repeats}: {images / seconds:.1f} images/s ({images} images in "
                                f"{seconds:.2f} s from its creation)")
                    else:
                        if name == WARM:
                            stats[name].cache_start(*dir_usage(remote.warm))
                        t = _measure(contenders[name], stats[name], s)
                    log(f"{name} batch={b} size={size} {mode} repeat {r + 1}/{s.repeats}: "
                        f"{t.rate:.1f} images/s ({t.count} images in {t.seconds:.2f} s, {how})")
                    if s.settle:
                        settle()
                if warm_sampler is not None:
                    stats[WARM].cache_peak = warm_sampler.stop()
            except KeyboardInterrupt:
                rows += [_row(n, specs[n], stats[n], cold, remote, s, pack_s) for n in order if stats[n].runs]
                _close_all(contenders, warm_sampler)
                raise BenchInterrupted(with_ratios(rows)) from None
            except BaseException:
                _close_all(contenders, warm_sampler)
                raise
            rows += [dataclasses.replace(_row(n, specs[n], stats[n], cold, remote, s, pack_s),
                                         **(contenders[n].row_fields() if n in service else {})) for n in order]
            _close_all(contenders, warm_sampler)
    return rows

