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

Steps 1-3 run ``repeats`` times, round-robin (a drift of the machine hits
all three alike), and the median rate is reported; memory is taken in the
first round. Every measurement is :func:`loader.bench.harness.time_steps`:
warm-up steps untimed, the device synchronized before each clock read,
images counted from the labels of each batch used.
"""

from __future__ import annotations

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
from loader.bench.harness import Timing, time_steps
from loader.bench.procstat import rss_bytes
from loader.bench.recommend import batch_bytes
from loader.units import MB

__all__ = ["OOM_ERRORS", "Context", "PeakMemory", "forever", "free_caches", "measure_row"]

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


def _model_figures(timings: list[Timing]) -> dict:
    """step ms and images/s of the model alone: medians over the repeats."""
    rate = statistics.median(t.rate for t in timings)
    return {"step_ms": 1e3 * statistics.median(t.seconds / t.steps for t in timings), "model_images_per_sec": rate}


def measure_row(ctx: Context, batch_size: int, image_size: int, log: Callable[[str], None]) -> AdviseRow:
    """Measure one (batch size, image size); out of memory or over the budget gives a row saying so."""
    s, dev, sync = ctx.settings, ctx.device, ctx.sync()
    b = batch_size
    where = f"batch={b} size={image_size}"
    loader = ctx.image_loader(b, image_size, train=True, subset="training")
    batches = forever(loader)
    error: str | None = None
    model = step = x = y = None
    try:
        first = next(batches)
        x, y = first[0].clone(), first[1].clone()   # the loader reuses its buffers: keep our own
        del first
        # The loader's memory: the batch in use and the `prefetch` queued behind it.
        loader_mb = (s.prefetch + 1) * batch_bytes(b, image_size) / MB
        lr = s.lr_for(b) or DEFAULT_LR[s.optimizer]
        try:
            with PeakMemory(dev) as probe:
                model = fresh_copy(ctx.base_model, dev)
                step = TrainStep(model, dev, optimizer=s.optimizer, lr=lr, amp=s.amp)

                def model_step() -> int:
                    step(x, y)
                    return int(y.shape[0])

                model_ts = [time_steps(model_step, warmup=s.warmup, batches=s.steps, sync=sync)]
        except OOM_ERRORS as e:
            error = " ".join(str(e).split())[:300] or type(e).__name__
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
                             step_memory_mb=step_mb, loader_memory_mb=loader_mb, model_timings=tuple(model_ts),
                             **_model_figures(model_ts))

        wait = {"calls": 0, "seconds": 0.0}

        def e2e_step() -> int:
            if sync is not None:
                sync()       # the previous step's GPU work is compute time, not waiting
            t0 = time.perf_counter()
            images, labels = next(batches)
            if sync is not None:
                sync()
            if wait["calls"] >= s.warmup:   # time_steps' untimed warm-up calls come first
                wait["seconds"] += time.perf_counter() - t0
            wait["calls"] += 1
            step(images, labels)
            return int(labels.shape[0])

        loader_ts, e2e_ts, waits = [], [], []
        for r in range(s.repeats):   # round-robin, so a drift of the machine hits the three alike
            if r > 0:
                model_ts.append(time_steps(model_step, warmup=s.warmup, batches=s.steps, sync=sync))
            # at least the queue DALI filled meanwhile is drained untimed
            loader_ts.append(time_steps(lambda: int(next(batches)[1].shape[0]), warmup=max(s.warmup, s.prefetch),
                                        batches=s.steps, sync=sync))
            wait.update(calls=0, seconds=0.0)
            e2e_ts.append(time_steps(e2e_step, warmup=s.warmup, batches=s.steps, sync=sync))
            waits.append(wait["seconds"])
        fig = _model_figures(model_ts)
        loader_rate = statistics.median(t.rate for t in loader_ts)
        e2e_rate = statistics.median(t.rate for t in e2e_ts)
        wait_frac = sum(waits) / sum(t.seconds for t in e2e_ts)
        bound = "input" if (loader_rate < fig["model_images_per_sec"] or wait_frac > WAIT_LIMIT) else "compute"
        log(f"{where}: model {fig['model_images_per_sec']:.0f} images/s, loader alone {loader_rate:.0f}, "
            f"end to end {e2e_rate:.0f}, waiting for data {wait_frac:.0%} ({bound}-bound)")
        return AdviseRow(b, image_size, "ok", loader_images_per_sec=loader_rate, end_to_end_images_per_sec=e2e_rate,
                         data_wait_fraction=wait_frac, bound=bound, peak_memory_mb=peak_mb, step_memory_mb=step_mb,
                         loader_memory_mb=loader_mb, model_timings=tuple(model_ts), loader_timings=tuple(loader_ts),
                         end_to_end_timings=tuple(e2e_ts), data_wait_s=tuple(waits), **fig)
    except OOM_ERRORS as e:   # the loader or the end-to-end loop ran out (CUDA: the batches share the GPU)
        error = " ".join(str(e).split())[:300] or type(e).__name__
        log(f"{where}: out of memory ({error})")
        return AdviseRow(b, image_size, "oom", error=error)
    finally:
        # Drop the row's tensors before freeing the caches (the closures share these cells).
        model = step = x = y = None  # noqa: F841
        batches.close()
        loader.close()
        free_caches(dev)
