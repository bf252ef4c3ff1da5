"""One row of ``loader advise``: the model alone, the loader alone, the two together, and memory.

For one (batch size, image size), in this order:

1. **model**: a fresh copy of the model (the same initial weights every row)
   and a new optimizer run ``steps`` train steps on *one* real batch, taken
   from the loader and reused, so the input pipeline costs nothing: step ms
   and images/s. Memory is measured around these steps (the optimizer state
   is created by the first one): ``torch.cuda.max_memory_allocated`` on
   CUDA, the peak growth of resident memory over the steps on CPU (sampled
   every 2 ms by a thread, from ``/proc``). An out-of-memory error here makes
   the row ``oom``; a peak (plus the loader's batches in flight) above the
   budget less the safety margin makes it ``over-budget``; then nothing more
   is measured for the row.
2. **loader**: ``ImageLoader`` (train augmentation) alone: images/s.
3. **end to end**: the training loop fed by the same loader: images/s, and
   the share of the time spent in ``next(loader)``, the wait for data.

Steps 1-3 run ``repeats`` times in turn (a drift of the machine hits all
three alike). That is one *round* (:func:`measure_row`, which also takes the
memory); :func:`loader.advisor.sweep.advise` then measures every row that
fit again, round-robin over the rows, ``rounds`` times in all
(:func:`remeasure`: a fresh loader and model copy each time), so a noisy
spell of the machine lands on several rows instead of deciding one. Each
rate reported is the median over every measurement of the row, with its
min and max. Every measurement is :func:`loader.measure.time_steps`: warm-up
steps untimed, the device synchronized before each clock read, images counted
from the labels of each batch used.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from loader.advisor.recommend import WAIT_LIMIT
from loader.advisor.results import AdviseRow
from loader.advisor.settings import AdviseSettings
from loader.advisor.training import DEFAULT_LR, TrainStep, fresh_copy
from loader.errors import one_line
from loader.measure import Spread, Timing, batch_bytes, rss_bytes, time_steps
from loader.units import MB

__all__ = ["OOM_ERRORS", "Context", "PeakMemory", "figures", "forever", "free_caches", "measure_row", "remeasure"]

# What "ran out of memory" looks like: CUDA's allocator, or the host's.
OOM_ERRORS = (torch.OutOfMemoryError, MemoryError)


@dataclass(frozen=True)
class Context:
    """What every row shares: the dataset, the device, the untouched initial model, the settings."""

    dst: Path
    device: torch.device
    base_model: torch.nn.Module          # on the CPU, never trained: rows and trials copy it
    settings: AdviseSettings
    memory_budget_mb: float | None       # before the safety margin

    @property
    def usable_mb(self) -> float | None:
        """The budget less the safety margin: what a row may use."""
        b = self.memory_budget_mb
        return None if b is None else b * (1 - self.settings.safety_margin)

    def sync(self) -> Callable[[], None] | None:
        if self.device.type == "cuda":
            dev = self.device
            return lambda: torch.cuda.synchronize(dev)
        return None

    def image_loader(self, batch_size: int, image_size: int, *, train: bool, subset: str,
                     with_indices: bool = False, drop_last: bool | None = None):
        """An ImageLoader on the ``subset`` of the split; one process, rank 0 of 1 whatever the environment says."""
        from loader.load.imageloader import ImageLoader

        s = self.settings
        return ImageLoader(self.dst, batch_size, image_size=image_size, train=train, seed=s.seed,
                           device=self.device, num_threads=s.threads, prefetch=s.prefetch,
                           validation_split=s.validation_split, subset=subset, rank=0, world_size=1,
                           with_indices=with_indices, drop_last=drop_last)


def forever(loader) -> Iterator[tuple[torch.Tensor, ...]]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def free_caches(device: torch.device) -> None:
    """Give back what a finished (or failed) row held: Python garbage, then CUDA's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak memory in bytes over a ``with`` block: CUDA's allocator peak, or resident-memory growth on CPU.

    CUDA: the peak counter is reset at entry, so the figure is everything the
    block held at its worst (model, gradients, optimizer state, activations).
    CPU: a thread samples this process's RSS every ``interval`` seconds; the
    figure is the highest sample less the RSS at entry. A short-lived peak
    between samples, or memory the allocator reuses from earlier rows, is
    missed, so on CPU it is a lower bound.
    """

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = self._max = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max = max(self._max, rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            free_caches(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._base = self._max = rss_bytes()
            self._thread = threading.Thread(target=self._sample, name="loader-advise-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(0, max(self._max, rss_bytes()) - self._base)


def _oom_text(e: BaseException) -> str:
    return one_line(e, limit=300)


def figures(model_ts: list[Timing], loader_ts: list[Timing] = (), e2e_ts: list[Timing] = (),
            waits: list[float] = ()) -> dict:
    """A row's figures (keyword arguments of :class:`AdviseRow`) from all its measurements so far.

    Rates are medians over the measurements, with min and max; ``step_ms`` the
    median of ``t.seconds / t.steps``; the data-wait share the total wait over
    the total end-to-end time; the bound as in the module doc.
    """
    m = Spread.of([t.rate for t in model_ts])
    out = {"step_ms": 1e3 * statistics.median(t.seconds / t.steps for t in model_ts),
           "model_images_per_sec": m.median, "model_images_per_sec_min": m.low,
           "model_images_per_sec_max": m.high, "model_timings": tuple(model_ts)}
    if not e2e_ts:
        return out
    ld, e2e = Spread.of([t.rate for t in loader_ts]), Spread.of([t.rate for t in e2e_ts])
    wait_frac = sum(waits) / sum(t.seconds for t in e2e_ts)
    out.update(loader_images_per_sec=ld.median, loader_images_per_sec_min=ld.low, loader_images_per_sec_max=ld.high,
               end_to_end_images_per_sec=e2e.median, end_to_end_images_per_sec_min=e2e.low,
               end_to_end_images_per_sec_max=e2e.high, data_wait_fraction=wait_frac,
               bound="input" if (ld.median < m.median or wait_frac > WAIT_LIMIT) else "compute",
               loader_timings=tuple(loader_ts), end_to_end_timings=tuple(e2e_ts), data_wait_s=tuple(waits))
    return out


class _Round:
    """One row's loader, its own copy of a real batch, and (once built) a fresh model copy and its train step."""

    def __init__(self, ctx: Context, batch_size: int, image_size: int):
        self.ctx, self.sync = ctx, ctx.sync()
        self.model = self.step = None
        self.loader = ctx.image_loader(batch_size, image_size, train=True, subset="training")
        self.batches = forever(self.loader)
        try:
            first = next(self.batches)
        except BaseException:   # out of memory already: the caller never gets an object to close
            self.batches.close()
            self.loader.close()
            raise
        self.x, self.y = first[0].clone(), first[1].clone()   # the loader reuses its buffers: keep our own
        del first
        self.lr = ctx.settings.lr_for(batch_size) or DEFAULT_LR[ctx.settings.optimizer]
        self._wait = {"calls": 0, "seconds": 0.0}

    def build(self) -> None:
        """A fresh copy of the model (the same initial weights every time) and a new optimizer."""
        s = self.ctx.settings
        self.model = fresh_copy(self.ctx.base_model, self.ctx.device)
        self.step = TrainStep(self.model, self.ctx.device, optimizer=s.optimizer, lr=self.lr, amp=s.amp)

    def model_step(self) -> int:
        self.step(self.x, self.y)
        return int(self.y.shape[0])

    def e2e_step(self) -> int:
        sync, wait = self.sync, self._wait
        if sync is not None:
            sync()       # the previous step's GPU work is compute time, not waiting
        t0 = time.perf_counter()
        images, labels = next(self.batches)
        if sync is not None:
            sync()
        if wait["calls"] >= self.ctx.settings.warmup:   # time_steps' untimed warm-up calls come first
            wait["seconds"] += time.perf_counter() - t0
        wait["calls"] += 1
        self.step(images, labels)
        return int(labels.shape[0])

    def time_model(self) -> Timing:
        s = self.ctx.settings
        return time_steps(self.model_step, warmup=s.warmup, batches=s.steps, sync=self.sync)

    def time_loader_and_e2e(self) -> tuple[Timing, Timing, float]:
        """The loader alone, then the training loop it feeds: (loader timing, end-to-end timing, seconds waited)."""
        s = self.ctx.settings
        # at least the queue DALI filled meanwhile is drained untimed
        loader_t = time_steps(lambda: int(next(self.batches)[1].shape[0]), warmup=max(s.warmup, s.prefetch),
                              batches=s.steps, sync=self.sync)
        self._wait.update(calls=0, seconds=0.0)
        e2e_t = time_steps(self.e2e_step, warmup=s.warmup, batches=s.steps, sync=self.sync)
        return loader_t, e2e_t, self._wait["seconds"]

    def close(self) -> None:
        # Drop the round's tensors before freeing the caches.
        self.model = self.step = self.x = self.y = None
        self.batches.close()
        self.loader.close()
        free_caches(self.ctx.device)


def measure_row(ctx: Context, batch_size: int, image_size: int, log: Callable[[str], None]) -> AdviseRow:
    """The first round of one (batch size, image size), memory included; out of memory or over the budget
    gives a row saying so."""
    s = ctx.settings
    b = batch_size
    where = f"batch={b} size={image_size}"
    run = None
    try:
        run = _Round(ctx, b, image_size)
        # The loader's memory: the batch in use and the `prefetch` queued behind it.
        loader_mb = (s.prefetch + 1) * batch_bytes(b, image_size) / MB
        error: str | None = None
        try:
            with PeakMemory(ctx.device) as probe:
                run.build()
                model_ts = [run.time_model()]
        except OOM_ERRORS as e:
            error = _oom_text(e)
        if error is not None:
            log(f"{where}: out of memory ({error})")
            return AdviseRow(b, image_size, "oom", error=error)
        step_mb = probe.peak_bytes / MB
        peak_mb = step_mb + loader_mb
        log(f"{where}: model {1e3 * model_ts[0].seconds / model_ts[0].steps:.1f} ms/step, "
            f"peak {peak_mb:.0f} MB ({step_mb:.0f} train step + {loader_mb:.0f} loader)")
        usable = ctx.usable_mb
        if usable is not None and peak_mb > usable:
            error = (f"{peak_mb:.0f} MB > {usable:.0f} MB ({ctx.memory_budget_mb:.0f} MB budget less "
                     f"{s.safety_margin:.0%} safety margin)")
            log(f"{where}: over budget: {error}")
            return AdviseRow(b, image_size, "over-budget", error=error, peak_memory_mb=peak_mb,
                             step_memory_mb=step_mb, loader_memory_mb=loader_mb, rounds=1, **figures(model_ts))
        loader_ts, e2e_ts, waits = [], [], []
        for r in range(s.repeats):   # in turn, so a drift of the machine hits the three alike
            if r > 0:
                model_ts.append(run.time_model())
            loader_t, e2e_t, wait = run.time_loader_and_e2e()
            loader_ts.append(loader_t)
            e2e_ts.append(e2e_t)
            waits.append(wait)
        row = AdviseRow(b, image_size, "ok", peak_memory_mb=peak_mb, step_memory_mb=step_mb, loader_memory_mb=loader_mb,
                        rounds=1, **figures(model_ts, loader_ts, e2e_ts, waits))
        _log_figures(row, where, log)
        return row
    except OOM_ERRORS as e:   # the loader or the end-to-end loop ran out (CUDA: the batches share the GPU)
        error = _oom_text(e)
        log(f"{where}: out of memory ({error})")
        return AdviseRow(b, image_size, "oom", error=error)
    finally:
        if run is not None:
            run.close()
        else:
            free_caches(ctx.device)


def remeasure(ctx: Context, row: AdviseRow, log: Callable[[str], None], *,
              round_no: int | None = None) -> tuple[AdviseRow, str | None]:
    """Another round of an ``ok`` row: a fresh loader and model copy, ``repeats`` x (model, loader, end to end).

    Returns the row with these measurements added to its own and its figures
    recomputed from all of them, and None; or, if this round ran out of
    memory, the row unchanged and the error (its figures stand on the rounds
    before).
    """
    s = ctx.settings
    where = f"batch={row.batch_size} size={row.image_size}" + (f" round {round_no}/{s.rounds}" if round_no else "")
    model_ts, loader_ts = list(row.model_timings), list(row.loader_timings)
    e2e_ts, waits = list(row.end_to_end_timings), list(row.data_wait_s)
    run = None
    try:
        run = _Round(ctx, row.batch_size, row.image_size)
        run.build()
        for _ in range(s.repeats):
            model_ts.append(run.time_model())
            loader_t, e2e_t, wait = run.time_loader_and_e2e()
            loader_ts.append(loader_t)
            e2e_ts.append(e2e_t)
            waits.append(wait)
    except OOM_ERRORS as e:
        error = _oom_text(e)
        log(f"{where}: out of memory ({error}); the row keeps the figures of the rounds before")
        return row, error
    finally:
        if run is not None:
            run.close()
        else:
            free_caches(ctx.device)
    new = dataclasses.replace(row, rounds=row.rounds + 1, **figures(model_ts, loader_ts, e2e_ts, waits))
    _log_figures(new, where, log)
    return new, None


def _log_figures(row: AdviseRow, where: str, log: Callable[[str], None]) -> None:
    log(f"{where}: model {row.model_images_per_sec:.0f} images/s, loader alone {row.loader_images_per_sec:.0f}, "
        f"end to end {row.end_to_end_images_per_sec:.0f} (range {row.end_to_end_images_per_sec_min:.0f}-"
        f"{row.end_to_end_images_per_sec_max:.0f} over {row.rounds} round(s)), waiting for data "
        f"{row.data_wait_fraction:.0%} ({row.bound}-bound)")
