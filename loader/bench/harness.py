"""Timing: the clock shared by ``loader bench``, ``benchmarks/`` and whatever else measures steps.

* :func:`time_steps` -- the one timed loop: untimed warm-up steps, then steps
  until a count or a duration, the device synchronized before each clock read.
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

GPU memory on CUDA: ``gpu_mem_mb`` is the device's peak used memory (every
contender of the configuration is alive at once, so it is the sum), and
``gpu_peak_memory_mb`` the contender's own: what the device gained from just
before its creation to the end of its first batch, plus the largest growth
during one of its measurements (the others are idle then). Device-wide figures
(``cudaMemGetInfo``) count DALI's pools, which torch's allocator statistics do not.
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loader.bench.contenders import CONTENDERS, RUN_ORDER, Contender, ContenderSpec, make_contender
from loader.bench.procstat import rss_bytes, settle
from loader.bench.results import BenchRow, with_ratios
from loader.bench.source import resolve_source
from loader.errors import LoaderError, import_dali
from loader.units import MB, available_cores

__all__ = ["BenchInterrupted", "BenchSettings", "Timing", "bench", "time_steps"]


# ------------------------------------------------------------------ the timed loop


@dataclass(frozen=True)
class Timing:
    """``count`` items (images) in ``seconds`` of timed steps."""

    count: int
    seconds: float
    steps: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def time_steps(step: Callable[[], int], *, warmup: int = 0, batches: int | None = None,
               seconds: float | None = None, sync: Callable[[], None] | None = None,
               tick: Callable[[], None] | None = None) -> Timing:
    """Run ``step() -> count`` ``warmup`` times untimed, then time it.

    Timed steps run until ``batches`` steps or ``seconds`` have passed (at least
    one step; give one of the two). ``sync`` runs before each clock read (e.g.
    ``torch.cuda.synchronize``); ``tick`` after each timed step (sampling;
    its cost is inside the timing, so keep it cheap).

    >>> time_steps(lambda: 8, batches=3).count
    24
    """
    if (batches is None) == (seconds is None):
        raise ValueError("time_steps needs exactly one of batches= or seconds=")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    count = n = 0
    t0 = time.perf_counter()
    while True:
        count += step()
        n += 1
        if batches is not None and n >= batches:
            break
        if seconds is not None and time.perf_counter() - t0 >= seconds:
            break
        if tick is not None:
            tick()
    sync()
    return Timing(count=count, seconds=time.perf_counter() - t0, steps=n)


# ------------------------------------------------------------------ settings


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class BenchSettings:
    """What :func:`bench` measures and how; validated here, once (``loader bench --help`` documents each).

    ``workers`` (DataLoader processes) and ``threads`` (DALI threads) default to
    :func:`loader.units.available_cores`. Each measurement is ``batches``
    steady-state batches, or lasts ``seconds`` (4 s when neither is given).
    ``memory_budget_mb`` (MB = 10^6 bytes) only shapes the recommendation.
    Bad values raise :class:`LoaderError` naming the CLI option.
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

    def __post_init__(self):
        def set_(name, value):   # frozen: the resolved defaults are filled in once, here
            object.__setattr__(self, name, value)

        set_("batch_sizes", tuple(self.batch_sizes))
        set_("image_sizes", tuple(self.image_sizes))
        set_("pipelines", tuple(self.pipelines))
        for opt, vals in (("--batch-sizes", self.batch_sizes), ("--image-sizes", self.image_sizes)):
            if not vals or any(not _is_int(v) or v < 1 for v in vals):
                raise LoaderError(f"{opt} must be comma-separated positive integers, got "
                                  f"{','.join(map(str, vals))!r}")
        if min(self.image_sizes) < 8:
            raise LoaderError(f"--image-sizes must be at least 8 pixels, got {','.join(map(str, self.image_sizes))!r}")
        if self.workers is None:
            set_("workers", available_cores())
        if self.threads is None:
            set_("threads", available_cores())
        for opt, v, least in (("--workers", self.workers, 0), ("--threads", self.threads, 1),
                              ("--repeats", self.repeats, 1), ("--warmup", self.warmup, 0),
                              ("--prefetch", self.prefetch, 1), ("--seed", self.seed, 0)):
            if not _is_int(v) or v < least:
                raise LoaderError(f"{opt} must be an integer >= {least}, got {v!r}")
        if self.batches is not None and self.seconds is not None:
            raise LoaderError("give --batches or --seconds, not both")
        if self.batches is not None and (not _is_int(self.batches) or self.batches < 1):
            raise LoaderError(f"--batches must be an integer >= 1, got {self.batches!r}")
        for opt, v in (("--seconds", self.seconds), ("--memory-budget", self.memory_budget_mb)):
            if v is not None and (not isinstance(v, (int, float)) or not v > 0 or math.isinf(v)):
                raise LoaderError(f"{opt} must be a positive number, got {v!r}")
        if self.batches is None and self.seconds is None:
            set_("seconds", 4.0)
        from loader.augment.settings import EVAL_MODES

        if self.eval_mode not in EVAL_MODES:
            raise LoaderError(f"--eval-mode must be one of {', '.join(EVAL_MODES)}, got {self.eval_mode!r}")
        if (isinstance(self.color_jitter, bool) or not isinstance(self.color_jitter, (int, float))
                or not 0 <= self.color_jitter < math.inf):
            raise LoaderError(f"--color-jitter must be a number >= 0, got {self.color_jitter!r}")
        unknown = [p for p in self.pipelines if p not in CONTENDERS]
        if unknown or not self.pipelines:
            raise LoaderError(f"--pipelines must name some of {', '.join(CONTENDERS)}, "
                              f"got {','.join(self.pipelines)!r}")


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

    def row(self, c: Contender, s: BenchSettings, pack_s: float | None) -> BenchRow:
        return BenchRow(
            pipeline=c.name, batch_size=c.spec.batch_size, image_size=c.spec.image_size,
            images_per_sec=statistics.median(self.runs) if self.runs else 0.0,
            workers=s.workers, threads=s.threads, images_per_sec_runs=tuple(self.runs),
            images=self.images, seconds=self.seconds, repeats=len(self.runs),
            first_batch_ms=self.first_batch_ms, create_s=self.create_s,
            peak_rss_mb=self.peak_rss / MB, workers_rss_mb=self.peak_workers_rss / MB,
            gpu_mem_mb=None if self.peak_gpu is None else self.peak_gpu / MB,
            device=c.spec.device, train=s.train, warmup=s.warmup, pack_s=pack_s,
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


def _close_all(contenders: dict[str, Contender]) -> None:
    for c in contenders.values():
        try:
            c.close()
        except Exception as e:  # noqa: BLE001 - closing must not hide the real error
            print(f"[bench] closing {c.name} failed: {e}", file=sys.stderr)
    contenders.clear()
    gc.collect()


# ------------------------------------------------------------------ the race


def resolve_run_device(device: str, needed_by: str):
    """``--device`` of a measuring command (``loader bench``, ``loader advise``) as a
    ``torch.device``, CUDA initialised; a one-line :class:`LoaderError` when DALI is missing
    or the device is bad, not a traceback."""
    import_dali(needed_by)
    from loader.load.imageloader import resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise LoaderError(f"--device: {e}") from None
    if dev.type == "cuda":
        import torch

        torch.cuda.init()
    return dev


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
    from loader.format.dataset import open_dataset

    ds = open_dataset(packed_path)
    num_records = len(ds)
    ds.close()
    wanted = s.pipelines
    if folder is None and "dataloader" in wanted:
        note(f"{src} is a packed dataset (no original files): skipping `dataloader`; "
             f"`dataloader-lmdb` runs the same DataLoader on the shards")
        wanted = tuple(p for p in wanted if p != "dataloader")
    if not wanted:
        raise LoaderError("no pipeline left to measure")
    if s.train and max(s.batch_sizes) > num_records:
        raise LoaderError(f"batch size {max(s.batch_sizes)} is larger than the dataset "
                          f"({num_records} images in {packed_path}); lower --batch-sizes")

    device = _resolve_device(s.device)
    order = [p for p in RUN_ORDER if p in wanted]
    pack_s = None if report is None else report.seconds
    mode = "train" if s.train else "eval"
    how = f"{s.batches} batches" if s.batches is not None else f"{s.seconds:g} s"
    rows: list[BenchRow] = []
    for size in s.image_sizes:
        for b in s.batch_sizes:
            specs = {name: ContenderSpec(name, packed=packed_path, folder=folder, batch_size=b, image_size=size,
                                         train=s.train, seed=s.seed, device=device, threads=s.threads,
                                         workers=s.workers, prefetch=s.prefetch, eval_mode=s.eval_mode,
                                         color_jitter=s.color_jitter) for name in order}
            contenders: dict[str, Contender] = {}
            stats = {name: _Stats() for name in order}
            try:
                for name in order:
                    c, st = make_contender(specs[name]), stats[name]
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
                for r in range(s.repeats):
                    k = r % len(order)
                    for name in order[k:] + order[:k]:   # rotate who goes first
                        t = _measure(contenders[name], stats[name], s)
                        log(f"{name} batch={b} size={size} {mode} repeat {r + 1}/{s.repeats}: "
                            f"{t.rate:.1f} images/s ({t.count} images in {t.seconds:.2f} s, {how})")
                        if s.settle:
                            settle()
            except KeyboardInterrupt:
                rows += [stats[n].row(contenders[n], s, pack_s) for n in order if stats[n].runs]
                _close_all(contenders)
                raise BenchInterrupted(with_ratios(rows)) from None
            except BaseException:
                _close_all(contenders)
                raise
            rows += [stats[n].row(contenders[n], s, pack_s) for n in order]
            _close_all(contenders)
    return with_ratios(rows)

