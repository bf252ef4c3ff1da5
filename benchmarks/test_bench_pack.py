"""Pack rate: ``loader.pack`` of the generated image folder (images/s, and MB/s of input)."""

from __future__ import annotations

import shutil
import statistics

from loader.units import MB


def test_pack_rate(benchmark, measure, bench_images, bench_config, tmp_path):
    from loader.convert.packing import pack

    dst = tmp_path / "packed"
    reports = []

    def one_pack():
        shutil.rmtree(dst, ignore_errors=True)
        report = pack(bench_images, dst, progress=False)
        reports.append(report)
        return report.num_records

    rate = measure(one_pack, workers=bench_config.workers)
    timed = reports[-bench_config.rounds:]
    benchmark.extra_info["mb_per_sec"] = statistics.median(r.mb_per_sec for r in timed)
    benchmark.extra_info["input_mb"] = timed[-1].input_bytes / MB
    assert timed[-1].num_records == bench_config.classes * bench_config.per_class
    assert timed[-1].num_skipped == 0 and rate > 0


def _rate_on_every_core(measure, bench_images, bench_config, per_file) -> float:
    """images/s of ``per_file(path)`` over every file pack reads, on a pool of every core."""
    import multiprocessing as mp
    import os

    from loader.convert.scan import scan

    _, items = scan(bench_images)                       # exactly the files pack reads
    paths = [os.path.join(bench_images, rel) for rel, _ in items]
    with mp.get_context("fork").Pool(bench_config.workers) as pool:
        return measure(lambda: sum(pool.imap_unordered(per_file, paths, chunksize=16)),
                       workers=bench_config.workers)


def _decode_file(path: str) -> int:
    from PIL import Image

    with open(path, "rb") as f:
        im = Image.open(f)
        im.load()
    return 1


def test_full_decode_rate(benchmark, measure, bench_images, bench_config):
    """The pack target's yardstick: every core fully decoding the same files with PIL.

    Pack decodes every image to validate it, so its rate is compared with this
    one (the README reports pack as a fraction of it, both from one run).
    """
    assert _rate_on_every_core(measure, bench_images, bench_config, _decode_file) > 0


def _check_file(path: str) -> int:
    from loader.convert.imagecheck import check_image

    check_image(path)
    return 1


def test_check_rate(benchmark, measure, bench_images, bench_config):
    """What pack's workers do per file (``check_image``: read, decode to validate,
    decide what to store), on every core, without writing anything.

    A kept JPEG is validated at 1/8 scale (see :mod:`loader.convert.imagecheck`), so this
    runs well above :func:`test_full_decode_rate`; pack's rate over this one is
    the share its writing and bookkeeping leave.
    """
    assert _rate_on_every_core(measure, bench_images, bench_config, _check_file) > 0
