"""Scale benchmark (``benchmarks/scale.py``) under pytest-benchmark: pack, disk, open and
``ImageLoader()`` costs of N tiny JPEGs, and the open cost of a synthetic index.

``LOADER_SCALE_IMAGES`` / ``LOADER_SCALE_INDEX`` set N (defaults: 128,100 and 10,000,000;
quick mode: 2,000 and 200,000). The figures go to ``extra_info``; only counts and the
storage bound are asserted (bytes are deterministic, times are not).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conftest import CACHE, QUICK

sys.path.insert(0, str(Path(__file__).parent))
import scale  # noqa: E402

IMAGES = int(os.environ.get("LOADER_SCALE_IMAGES", 2_000 if QUICK else 128_100))
INDEX = int(os.environ.get("LOADER_SCALE_INDEX", 200_000 if QUICK else 10_000_000))


def test_scale_images(benchmark):
    rows = []
    benchmark.pedantic(lambda: rows.append(scale.measure_images(IMAGES, CACHE / "scale", keep=False)),
                       rounds=1, iterations=1)
    (row,) = rows
    benchmark.extra_info.update(row)
    assert row["records"] == IMAGES and row["imageloader_s"] > 0
    assert row["disk_per_input_byte"] <= 1.15     # ~3 KB records: blocks, not a page each


def test_scale_synthetic_index(benchmark):
    rows = []
    benchmark.pedantic(lambda: rows.append(scale.measure_index(INDEX, CACHE / "scale")), rounds=1, iterations=1)
    (row,) = rows
    benchmark.extra_info.update(row)
    assert row["records"] == INDEX
