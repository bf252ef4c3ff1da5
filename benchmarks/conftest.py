"""Shared fixtures for the pytest-benchmark suites (``pytest benchmarks/ --benchmark-only``).

The data are photo-like JPEGs from scripts/make_dataset.py, generated once and
cached in ``.cache/bench-data/`` at the repository root (ignored by git), with
their packed copy next to them.

``LOADER_BENCH_QUICK=1`` selects a small quick mode (2 classes x 40 images, one
round, small batches) that CI runs once so the suites cannot rot; the default
is ~3000 images (10 classes x 300) and 3 rounds. Every benchmark stores its
images/s (median over rounds, and the per-round figures) in ``extra_info``.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest

from loader.format.manifest import MANIFEST_NAME
from loader.units import available_cores

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-data"
QUICK = os.environ.get("LOADER_BENCH_QUICK", "").strip() not in ("", "0")

if QUICK:
    CLASSES, PER_CLASS, ROUNDS, WARMUP_ROUNDS, BATCH_SIZE = 2, 40, 1, 0, 16
else:
    CLASSES, PER_CLASS, ROUNDS, WARMUP_ROUNDS, BATCH_SIZE = 10, 300, 3, 1, 64
IMAGE_SIZE = 224


def cores() -> int:
    return available_cores()


@pytest.fixture(scope="session")
def bench_images() -> Path:
    """The image folder (generated on first use, then reused)."""
    from loader.synthetic import make_dataset

    dst = CACHE / f"photos-{CLASSES}x{PER_CLASS}"
    make_dataset(dst, classes=CLASSES, per_class=PER_CLASS, seed=0)
    return dst


@pytest.fixture(scope="session")
def bench_packed(bench_images) -> Path:
    """The packed copy of :func:`bench_images` (packed on first use, then reused)."""
    from loader.convert.packing import pack
    from loader.format.dataset import open_dataset

    dst = bench_images.with_name(bench_images.name + ".packed")
    if (dst / MANIFEST_NAME).is_file():
        try:
            ds = open_dataset(dst)
            n = len(ds)
            ds.close()
            if n == CLASSES * PER_CLASS:
                return dst
        except Exception:  # noqa: BLE001, S110 - damaged or stale cache: re-pack
            pass
    pack(bench_images, dst, overwrite=True, progress=False)
    return dst


class Rate:
    """Times each round with the clock of every measuring command (:func:`loader.measure.time_steps`);
    writes images/s into ``benchmark.extra_info``."""

    def __init__(self, benchmark, unit: str = "images"):
        self.benchmark, self.unit = benchmark, unit
        self.timings = []

    def timed(self, fn, sync=None):
        """Wrap ``fn() -> count`` so each call is one timed step of the harness."""
        from loader.measure import time_steps

        def target():
            t = time_steps(fn, batches=1, sync=sync)
            self.timings.append(t)
            return t.count
        return target

    def finish(self, rounds: int, **extra) -> float:
        timed = self.timings[-rounds:]   # drop warm-up rounds
        runs = [t.rate for t in timed]
        median = statistics.median(runs)
        info = self.benchmark.extra_info
        info[f"{self.unit}_per_sec"] = median
        info[f"{self.unit}_per_sec_runs"] = runs
        info[self.unit] = timed[-1].count
        info["quick"] = QUICK
        info.update(extra)
        assert all(t.count > 0 for t in timed)
        return median


def pedantic(benchmark, fn, *, unit: str = "images", rounds: int = ROUNDS,
             warmup_rounds: int = WARMUP_ROUNDS, sync=None, **extra) -> float:
    """Run ``fn() -> count`` ``rounds`` times (plus warm-up) under pytest-benchmark; return median rate.

    ``sync`` runs before each clock read (a CUDA contender's :meth:`sync`).
    """
    rate = Rate(benchmark, unit)
    benchmark.pedantic(rate.timed(fn, sync), rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    return rate.finish(rounds, **extra)


@pytest.fixture
def measure(benchmark):
    """``measure(fn, unit="images", **extra_info) -> median rate``: see :func:`pedantic`."""
    def run(fn, **kwargs):
        return pedantic(benchmark, fn, **kwargs)
    return run


@pytest.fixture(scope="session")
def bench_config():
    """The mode's sizes: quick, classes, per_class, rounds, batch_size, image_size, workers."""
    from types import SimpleNamespace

    return SimpleNamespace(quick=QUICK, classes=CLASSES, per_class=PER_CLASS, rounds=ROUNDS,
                           batch_size=BATCH_SIZE, image_size=IMAGE_SIZE, workers=cores())
