"""LMDB record read rate: ``PackedDataset.read_batch`` over all records (no decoding)."""

from __future__ import annotations

import numpy as np
import pytest

from loader.units import MB

CHUNK = 256


@pytest.mark.parametrize("order", ["sequential", "shuffled"])
def test_lmdb_read_batch(benchmark, measure, bench_packed, order):
    from loader.format.dataset import open_dataset

    ds = open_dataset(bench_packed)
    idx = np.arange(len(ds))
    if order == "shuffled":
        idx = np.random.default_rng(0).permutation(len(ds))
    nbytes = []

    def read_all():
        n = b = 0
        for lo in range(0, len(idx), CHUNK):
            arrays = ds.read_batch(idx[lo:lo + CHUNK])
            n += len(arrays)
            b += sum(a.nbytes for a in arrays)
        nbytes.append(b)
        return n

    try:
        rate = measure(read_all, order=order, chunk=CHUNK)    # images (= records) per second
        benchmark.extra_info["records_per_sec"] = rate
        benchmark.extra_info["mb_per_sec"] = rate * nbytes[-1] / len(idx) / MB
        assert rate > 0 and nbytes[-1] > 0
    finally:
        ds.close()


def test_record_guard(benchmark, measure, bench_packed):
    """What the first epoch pays per record to keep damaged records from DALI
    (loader.format.recordguard: CRC-32 of the stored bytes + a walk of the image header)."""
    from loader.format.dataset import open_dataset
    from loader.format.recordguard import RecordGuard

    ds = open_dataset(bench_packed)
    idx = np.arange(len(ds))
    arrays = ds.read_batch(idx)

    def check_all():
        RecordGuard(ds).check(idx, arrays)    # a fresh guard: every record is checked
        return len(idx)

    try:
        rate = measure(check_all)               # records per second, one core
        benchmark.extra_info["us_per_record"] = 1e6 / rate
        assert rate > 0
    finally:
        ds.close()
