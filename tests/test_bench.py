"""`loader bench` (loader.bench): the harness on a tiny dataset, contenders, rows, and the batch-size recommendation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from loader.bench import (
    CONTENDERS,
    BenchInterrupted,
    BenchRow,
    BenchSettings,
    ContenderSpec,
    batch_bytes,
    bench,
    format_table,
    make_contender,
    recommend_batch_size,
    time_steps,
)
from loader.cli import parse_sizes
from loader.errors import ArgumentError, LoaderError

ROOT = Path(__file__).resolve().parents[1]
BATCH, BATCHES = 8, 2
FIELDS = {
    "pipeline": str, "batch_size": int, "image_size": int, "workers": int, "threads": int,
    "images_per_sec": float, "images_per_sec_runs": list, "images": int, "seconds": float,
    "first_batch_ms": float, "create_s": float, "peak_rss_mb": float, "device": str, "train": bool,
}
FAST = {"batch_sizes": (BATCH,), "image_sizes": (64,), "batches": BATCHES, "repeats": 1, "workers": 1,
        "threads": 1, "warmup": 1, "device": "cpu"}


def run_bench(src, packed=None, progress=False, notes=None, **settings):
    """bench() with FAST settings overridden by ``settings``; rows as JSON dicts."""
    rows = bench(src, BenchSettings(**{**FAST, **settings}), packed=packed, progress=progress, notes=notes)
    assert all(isinstance(r, BenchRow) for r in rows)
    return [r.to_dict() for r in rows]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(image folder, packed dataset) of 2 classes x 24 photo-like images."""
    from loader.convert.packing import pack
    from loader.synthetic import make_dataset

    base = tmp_path_factory.mktemp("bench")
    src = base / "imgs"
    make_dataset(src, classes=2, per_class=24, workers=1)
    packed = base / "imgs.packed"
    pack(src, packed, progress=False, workers=1)
    return src, packed


def _check_rows(rows, *, pipelines, train=True, image_size=64):
    assert [r["pipeline"] for r in rows] == list(pipelines)
    for r in rows:
        for key, typ in FIELDS.items():
            assert key in r, key
            assert isinstance(r[key], typ), (key, r[key])
        assert r["batch_size"] == BATCH and r["image_size"] == image_size and r["train"] is train
        assert r["workers"] == 1 and r["threads"] == 1
        # a real count: every batch full (train drops the last partial batch)
        assert r["images"] == BATCHES * BATCH
        assert r["seconds"] > 0
        assert r["images_per_sec"] > 0
        assert math.isclose(r["images_per_sec"], r["images"] / r["seconds"], rel_tol=1e-9)
        assert r["images_per_sec_runs"] == [r["images_per_sec"]]
        assert r["first_batch_ms"] > 0 and r["create_s"] >= 0 and r["peak_rss_mb"] > 0
        assert r["device"] == "cpu"
        assert r["gpu_mem_mb"] is None and r["gpu_peak_memory_mb"] is None     # no GPU, no figure
        ratio = r["ratio_vs_dataloader"]
        if "dataloader" in pipelines:
            assert math.isclose(ratio, r["images_per_sec"] / rows[pipelines.index("dataloader")]["images_per_sec"])
        else:
            assert ratio is None


def test_bench_api_all_contenders(tiny):
    src, packed = tiny
    notes = []
    rows = run_bench(src, packed, notes=notes)
    _check_rows(rows, pipelines=["dataloader", "dataloader-lmdb", "loader", "decode-limit"])
    assert {r["pipeline"] for r in rows} == set(CONTENDERS)
    loader_row = rows[2]
    assert math.isclose(loader_row["pct_of_decode_limit"],
                        100 * loader_row["images_per_sec"] / rows[3]["images_per_sec"])
    # DataLoader rows count their worker process in the RSS
    assert rows[0]["workers_rss_mb"] > 0 and rows[2]["workers_rss_mb"] == 0
    table = format_table([BenchRow.from_dict(r) for r in rows])
    for name in CONTENDERS:
        assert name in table


def test_bench_cli_json_and_png(tiny, tmp_path):
    src, packed = tiny
    out_json, out_png = tmp_path / "rows.json", tmp_path / "plot.png"
    proc = subprocess.run(
        [sys.executable, "-m", "loader", "bench", str(src), "--packed", str(packed),
         "--batch-size", str(BATCH), "--image-size", "64", "--batches", str(BATCHES), "--rounds", "1",
         "--dataloader-workers", "1", "--threads", "1", "--warmup", "1", "--device", "cpu",
         "--json", str(out_json), "--plot", str(out_png), "--memory-budget", "100"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out_json.read_text())
    assert isinstance(rows, list)
    _check_rows(rows, pipelines=["dataloader", "dataloader-lmdb", "loader", "decode-limit"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "images/s" in proc.stdout and "recommendation:" in proc.stdout
    assert "of the decode limit" in proc.stdout
    assert "repeat 1/1" in proc.stderr          # progress lines


def test_bench_packed_src_skips_dataloader(tiny):
    _, packed = tiny
    notes = []
    rows = run_bench(packed, notes=notes, pipelines=("dataloader", "dataloader-lmdb", "loader"))
    _check_rows(rows, pipelines=["dataloader-lmdb", "loader"])
    assert any("skipping `dataloader`" in n for n in notes)
    assert rows[1]["ratio_vs_dataloader_lmdb"] == pytest.approx(
        rows[1]["images_per_sec"] / rows[0]["images_per_sec"])


def test_bench_eval(tiny):
    src, packed = tiny
    notes = []
    rows = run_bench(src, packed, notes=notes, train=False, pipelines=("loader", "dataloader", "decode-limit"))
    names = [r["pipeline"] for r in rows]
    assert names == ["dataloader", "loader", "decode-limit"]     # eval's limit: the centre-window decode
    loader_row = rows[1]
    assert loader_row["pct_of_decode_limit"] == pytest.approx(
        100 * loader_row["images_per_sec"] / rows[2]["images_per_sec"])
    for r in rows:
        assert r["train"] is False and r["images"] == BATCHES * BATCH   # 48 images: full batches


def test_bench_interrupt_keeps_measured_rows(tiny):
    src, packed = tiny
    lines = []

    def progress(msg):
        lines.append(msg)
        if "repeat 1/2" in msg and len([m for m in lines if "repeat" in m]) == 2:
            raise KeyboardInterrupt

    with pytest.raises(BenchInterrupted) as info:
        run_bench(src, packed, progress=progress, repeats=2, pipelines=("loader", "dataloader"))
    rows = [r.to_dict() for r in info.value.rows]
    assert [r["pipeline"] for r in rows] == ["dataloader", "loader"]
    assert all(len(r["images_per_sec_runs"]) == 1 and r["images_per_sec"] > 0 for r in rows)


def test_bench_cli_interrupt_exit_130(tiny, tmp_path, monkeypatch, capsys):
    import loader.bench as lb
    from loader.cli import main

    def fake_bench(*a, **k):
        raise BenchInterrupted([BenchRow("loader", 8, 64, 100.0, workers=1, threads=1)])

    monkeypatch.setattr(lb, "bench", fake_bench)
    out_json = tmp_path / "partial.json"
    assert main(["bench", str(tiny[0]), "--json", str(out_json)]) == 130
    assert json.loads(out_json.read_text())[0]["pipeline"] == "loader"
    assert "loader" in capsys.readouterr().out


# The library's part of each message (BenchSettings names the parameter; the CLI shows the flag
# instead: tests/test_cli.py checks that part).
@pytest.mark.parametrize("argv, msg", [
    (["--batch-size", "8,0"], "must be a non-empty sequence of integers >= 1, got (8, 0)"),
    (["--image-size", "4"], "must be a non-empty sequence of integers >= 8 (pixels), got (4,)"),
    (["--pipelines", "loader,nope"], "must name some of loader, dataloader, dataloader-lmdb, decode-limit"),
])
def test_bench_cli_bad_options(tiny, argv, msg, capsys):
    from loader.cli import main

    assert main(["bench", str(tiny[0]), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1


def test_bench_missing_src(tmp_path, capsys):
    with pytest.raises(LoaderError, match="does not exist"):
        bench(tmp_path / "nope", progress=False)
    from loader.cli import main

    assert main(["bench", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_batch_larger_than_dataset(tiny):
    with pytest.raises(LoaderError, match="larger than the dataset"):
        run_bench(tiny[1], batch_sizes=(64,))


def test_parse_sizes():
    assert parse_sizes("16,32, 64", "--batch-sizes") == (16, 32, 64)
    assert parse_sizes("64,64", "--batch-sizes") == (64,)
    for bad in ("", "a", "1.5", "8,,16"):
        with pytest.raises(LoaderError):
            parse_sizes(bad, "--batch-sizes")
    for bad in ((), (0,), (-1,), (8, 0), (True,), 8, None):     # ranges: BenchSettings, once
        with pytest.raises(ArgumentError, match="^batch_sizes must be a non-empty sequence of integers >= 1, got "
                           ) as e:
            BenchSettings(batch_sizes=bad)
        assert e.value.param == "batch_sizes"


# ------------------------------------------------------------------ recommend_batch_size


def _rows(pairs, size=224, device="cpu", pipeline="loader"):
    return [BenchRow(pipeline, b, size, v, device=device) for b, v in pairs]


def test_recommend_smallest_within_tolerance():
    rows = _rows([(16, 700.0), (32, 960.0), (64, 990.0), (128, 1000.0), (256, 998.0)])
    rows += _rows([(16, 5000.0)], pipeline="decode-limit")     # other pipelines are ignored
    rec = recommend_batch_size(rows)
    assert rec.batch_size == 32 and rec.best_batch_size == 128      # 960 >= 0.95 * 1000
    assert recommend_batch_size(rows, tolerance=0.02).batch_size == 64
    assert recommend_batch_size(rows, tolerance=0.0).batch_size == 128
    assert "32" in rec.text and "host" in rec.text


def test_recommend_boundary_exactly_at_tolerance():
    rows = _rows([(8, 95.0), (16, 100.0)])
    assert recommend_batch_size(rows).batch_size == 8


def test_recommend_memory_math_exact():
    rec = recommend_batch_size(_rows([(64, 1000.0)]), prefetch=2)
    one = 64 * 3 * 224 * 224 * 4 + 64 * 8
    assert rec.batch_bytes == one == batch_bytes(64, 224) == 38_535_680
    assert rec.queue_bytes == 2 * one
    assert recommend_batch_size(_rows([(64, 1000.0)]), prefetch=3).queue_bytes == 3 * one
    gpu = recommend_batch_size(_rows([(64, 1000.0)], device="cuda:0"))
    assert gpu.device == "GPU" and "GPU memory" in gpu.text


def test_recommend_memory_budget():
    per_image = 3 * 224 * 224 * 4 + 8            # 602120 bytes
    rows = _rows([(32, 960.0), (64, 1000.0)])
    rec = recommend_batch_size(rows, memory_budget_mb=100, prefetch=2)
    # (prefetch + 1) batches must fit: floor(100 MB / (3 * per_image)) = 55, MB = 10^6 bytes
    assert rec.max_batch_in_budget == (100 * 10**6) // (3 * per_image) == 55
    assert rec.batch_size == 32
    tight = recommend_batch_size(rows, memory_budget_mb=50, prefetch=2, tolerance=0.0)
    assert tight.batch_size == 64 and tight.max_batch_in_budget == 27
    assert "does not fit" in tight.text
    assert recommend_batch_size(rows).max_batch_in_budget is None


def test_recommend_needs_rows_and_one_size():
    with pytest.raises(ValueError):
        recommend_batch_size([])
    rows = _rows([(32, 1.0)], size=128) + _rows([(32, 2.0)], size=224)
    with pytest.raises(ValueError, match="image_size"):
        recommend_batch_size(rows)
    assert recommend_batch_size(rows, image_size=128).image_size == 128


def test_bench_module_help_runs():
    proc = subprocess.run([sys.executable, "-m", "loader.bench", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "--batch-size " in proc.stdout


# ------------------------------------------------------------------ pieces: rows, timing, contenders

# The JSON schema of `loader bench --json`, key for key: as it was before bench became a package,
# plus `gpu_peak_memory_mb` (issue 14: each contender's own GPU memory; null on the CPU).
SCHEMA = ["pipeline", "batch_size", "image_size", "images_per_sec", "workers", "threads", "images_per_sec_runs",
          "images", "seconds", "repeats", "first_batch_ms", "create_s", "peak_rss_mb", "workers_rss_mb",
          "gpu_mem_mb", "ratio_vs_dataloader", "ratio_vs_dataloader_lmdb", "pct_of_decode_limit", "device",
          "train", "warmup", "pack_s", "gpu_peak_memory_mb",
          # Added with the cache rows of a dataset at a URL (tests/test_bench_remote.py): appended, so a
          # reader of the 23 fields above is unaffected.
          "url", "ratio_vs_loader", "time_to_first_batch_ms", "cache_peak_bytes", "cache_limit",
          "cache_start_bytes", "cache_start_files", "service_workers", "bytes_per_image", "wait_share",
          "trainer_ms_per_batch", "local_started_images_per_sec", "ratio_vs_loader_started"]


def test_row_json_schema_and_round_trip():
    row = BenchRow("loader", 64, 224, 1234.5, images_per_sec_runs=(1200.0, 1234.5, 1300.0), images=640)
    d = row.to_dict()
    assert list(d) == SCHEMA and len(SCHEMA) == 36 and d["gpu_peak_memory_mb"] is None
    assert d["url"] is None and d["cache_peak_bytes"] is None
    assert d["images_per_sec_runs"] == [1200.0, 1234.5, 1300.0]
    assert json.loads(json.dumps(d)) == d
    assert BenchRow.from_dict(d) == row
    with pytest.raises(ValueError, match="unknown keys"):
        BenchRow.from_dict({**d, "extra": 1})
    old = {k: v for k, v in d.items() if k in SCHEMA[:23]}     # a row written before the cache fields
    assert BenchRow.from_dict(old) == row


def test_time_steps_counts_warmup_apart_and_syncs():
    calls, syncs = [], []

    def step():
        calls.append(1)
        return 5

    t = time_steps(step, warmup=3, batches=4, sync=lambda: syncs.append(len(calls)))
    assert (t.count, t.steps, len(calls)) == (20, 4, 7)
    assert syncs == [3, 7]                      # before the clock starts and before it stops
    assert t.rate == pytest.approx(20 / t.seconds)
    t = time_steps(step, seconds=0.05)
    assert t.seconds >= 0.05 and t.count == 5 * t.steps
    with pytest.raises(ValueError):
        time_steps(step)


def test_dataloader_contender_close_stops_its_workers(tiny):
    import os

    src, packed = tiny
    c = make_contender(ContenderSpec("dataloader", packed=packed, folder=src, batch_size=BATCH,
                                     image_size=64, workers=2))
    c.create()
    assert c.first() == BATCH                   # notes the processes the first batch started
    pids = c.worker_pids
    for _ in range(len(c.obj) + 2):             # across an epoch boundary: persistent workers stay
        assert c.step() == BATCH
    assert len(pids) == 2 and all(os.path.exists(f"/proc/{p}") for p in pids)
    c.close()
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)   # joined, not left to the GC


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda:0", True)])
def test_the_dataloader_baseline_pins_memory_only_for_a_gpu(tiny, device, pinned):
    """On the CPU nothing changes (no pinning); on CUDA the baseline pins, as a careful GPU user's does."""
    src, packed = tiny
    for name in ("dataloader", "dataloader-lmdb"):
        c = make_contender(ContenderSpec(name, packed=packed, folder=src, batch_size=BATCH, image_size=64,
                                         workers=0, device=device))
        c.create()                                 # builds the DataLoader; no batch, no device needed
        assert c.obj.pin_memory is pinned, (name, device)
        c.close()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available: the GPU rows run instead")
def test_a_gpu_bench_without_cuda_is_a_one_line_error(tiny, capsys):
    with pytest.raises(ArgumentError, match="^device='cuda' but CUDA is not available") as e:
        run_bench(tiny[0], tiny[1], device="cuda")
    assert e.value.param == "device"
    from loader.cli import main

    assert main(["bench", str(tiny[0]), "--packed", str(tiny[1]), "--batch-size", "8", "--quiet",
                 "--device", "cuda:0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "device='cuda:0' but CUDA is not available" in err


def test_bench_of_an_unlabeled_pack_and_its_recipe_options(tmp_path):
    """A pack without class folders benches against the LMDB DataLoader; the folder baseline says
    why it cannot run and what to pass instead; --eval-mode and --color-jitter are validated."""
    from loader.convert.packing import pack
    from loader.synthetic import photo_like_image

    src = tmp_path / "flat"
    src.mkdir()
    for i in range(24):
        photo_like_image(i, size=(90, 70)).save(src / f"{i}.jpg", quality=90)
    packed = tmp_path / "packed"
    pack(src, packed, unlabeled=True, workers=1, progress=False)
    rows = run_bench(src, packed, pipelines=("loader", "dataloader-lmdb"), batch_sizes=(8,), image_sizes=(32,),
                     color_jitter=0.4)
    assert sorted(r["pipeline"] for r in rows) == ["dataloader-lmdb", "loader"]
    assert all(r["images_per_sec"] > 0 for r in rows)
    with pytest.raises(LoaderError, match=r"pipelines=\('loader', 'dataloader-lmdb', 'decode-limit'\)"):
        run_bench(src, packed, pipelines=("loader", "dataloader"), batch_sizes=(8,), image_sizes=(32,))
    for bad, msg in ((dict(eval_mode="exact"), "eval_mode must be one of torchvision, fast, got 'exact'"),
                     (dict(color_jitter=-1.0), "color_jitter must be a number >= 0, got -1.0")):
        with pytest.raises(ArgumentError, match=f"^{msg}$") as e:
            BenchSettings(**bad)
        assert e.value.param == msg.split()[0]
