"""`loader bench` on a packed dataset in object storage (moto's S3 on loopback, tests/s3server.py): the
local `loader` row beside `loader (cold cache)` and `loader (warm cache)`, their cache figures, and no
temporary cache folder left behind. Counts and bytes are asserted, never speeds."""

from __future__ import annotations

import json
import tempfile

import pytest
from conftest import run_cli

import loader
from loader.bench import BenchInterrupted, BenchSettings, bench
from loader.bench import harness as harness_mod
from loader.errors import ArgumentError

pytest_plugins = ["s3server"]     # the fixtures s3_server and s3_env (a plugin: imported by pytest only)

BATCH, BATCHES = 8, 2
FAST = {"batch_sizes": (BATCH,), "image_sizes": (64,), "batches": BATCHES, "repeats": 1, "workers": 1,
        "threads": 1, "warmup": 1, "device": "cpu", "settle": False, "pipelines": ("loader",)}
ROWS = ["loader", "loader (warm cache)", "loader (cold cache)"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """An image folder of 2 classes x 24 photo-like images."""
    from loader.synthetic import make_dataset

    src = tmp_path_factory.mktemp("bench-remote") / "imgs"
    make_dataset(src, classes=2, per_class=24, workers=1)
    return src


def _object_sizes(endpoint: str, bucket: str, prefix: str) -> dict[str, int]:
    from s3server import s3_client

    objs = s3_client(endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1:]: o["Size"] for o in objs}


@pytest.fixture
def remote(photos, s3_env, s3_server):
    """(url, {object name: bytes}) of the photos packed into 3 shards on the test bucket."""
    url = f"s3://{s3_env}/ds/photos.packed"
    loader.pack(photos, url, shards=3, workers=1, progress=False)
    sizes = _object_sizes(s3_server, s3_env, "ds/photos.packed")
    assert sum(k.startswith("shard-") for k in sizes) == 3
    return url, sizes


def _rows(url, **settings):
    notes: list[str] = []
    rows = bench(url, BenchSettings(**{**FAST, **settings}), progress=False, notes=notes)
    return {r.pipeline: r for r in rows}, notes


def test_cache_rows_beside_the_local_row_with_a_limit(remote, tmp_path):
    url, sizes = remote
    shards = [v for k, v in sizes.items() if k.startswith("shard-")]
    index = sum(v for k, v in sizes.items() if not k.startswith("shard-"))
    limit = index + 2 * max(shards) + 1024        # the smallest the cache accepts (+ slack): shards get evicted
    cache = tmp_path / "cache"
    rows, notes = _rows(url, cache_dir=cache, cache_limit=limit)
    assert list(rows) == ROWS
    local, warm, cold = rows["loader"], rows["loader (warm cache)"], rows["loader (cold cache)"]
    assert local.url is None and local.cache_peak_bytes is None and local.ratio_vs_loader is None
    assert local.images == warm.images == BATCH * BATCHES
    assert cold.images == BATCH * (BATCHES + 1)      # its first batch is inside its measurement
    for r in (warm, cold):
        assert r.url == url and r.cache_limit == limit
        assert r.first_batch_ms > 0 and r.time_to_first_batch_ms >= r.first_batch_ms
        assert r.images_per_sec > 0 and r.ratio_vs_loader == pytest.approx(r.images_per_sec / local.images_per_sec)
        # At least the index and one shard, never above the limit.
        assert index + min(shards) <= r.cache_peak_bytes <= limit
    assert cold.cache_start_files == 0 and cold.cache_start_bytes == 0    # an empty cache_dir at its start
    # The cold row against a local loader started as it is, measured beside it; the warm row has none.
    assert cold.local_started_images_per_sec > 0
    assert cold.ratio_vs_loader_started == pytest.approx(cold.images_per_sec / cold.local_started_images_per_sec)
    assert warm.ratio_vs_loader_started is None and warm.local_started_images_per_sec is None
    assert warm.cache_start_bytes >= index + min(shards)                   # filled before it was measured
    assert any("downloaded into" in n for n in notes)
    assert list(cache.iterdir()) == []          # the bench's folder in cache_dir is gone; cache_dir stays


def test_without_a_limit_the_warm_cache_holds_the_whole_dataset_and_no_temp_folder_stays(remote, tmp_path,
                                                                                        monkeypatch):
    url, sizes = remote
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))      # the default cache_dir: the system's temp folder
    rows, _ = _rows(url, repeats=2)
    warm, cold = rows["loader (warm cache)"], rows["loader (cold cache)"]
    assert warm.repeats == cold.repeats == 2 and cold.images == 2 * BATCH * (BATCHES + 1)
    assert warm.cache_limit is None and cold.cache_start_bytes == 0
    # Every object a reader needs fetched once into the warm cache (lock, pin and marker files are empty;
    # skipped.tsv, the pack's list of skipped inputs, is not read).
    needed = sum(v for k, v in sizes.items() if k != "skipped.tsv")
    assert warm.cache_peak_bytes == warm.cache_start_bytes == needed
    assert 0 < cold.cache_peak_bytes <= sum(sizes.values())
    assert list(tmp.iterdir()) == []


def test_folder_src_packed_to_a_url_then_benched(photos, s3_env, s3_server, tmp_path):
    url = f"s3://{s3_env}/new/photos.packed"
    notes: list[str] = []
    rows = bench(photos, BenchSettings(**{**FAST, "pipelines": ("loader", "dataloader"), "cache_dir": tmp_path}),
                 packed=url, progress=False, notes=notes)
    assert [r.pipeline for r in rows] == ["dataloader", *ROWS]
    assert any(n.startswith(f"packed 48 images into {url}") for n in notes)
    assert _object_sizes(s3_server, s3_env, "new/photos.packed")["manifest.json"] > 0
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_remote_bench_keeps_its_rows_and_removes_its_folder(remote, tmp_path, monkeypatch):
    url, _ = remote
    real = harness_mod.time_steps

    def interrupt(step, **kw):     # Ctrl-C in the middle of the cold row's measurement (no warm-up: cold)
        if kw["warmup"] == 0:
            step()
            raise KeyboardInterrupt
        return real(step, **kw)

    monkeypatch.setattr(harness_mod, "time_steps", interrupt)
    with pytest.raises(BenchInterrupted) as e:
        _rows(url, cache_dir=tmp_path)
    assert [r.pipeline for r in e.value.rows] == ["loader", "loader (warm cache)"]
    assert list(tmp_path.iterdir()) == []


def test_a_url_without_a_dataset_is_one_line(s3_env):
    with pytest.raises(loader.errors.LoaderError, match=r"holds no packed dataset \(no manifest.json\)"):
        bench(f"s3://{s3_env}/nothing", BenchSettings(**FAST), progress=False)


def test_cache_limit_is_validated():
    with pytest.raises(ArgumentError, match="cache_limit must be a positive number of bytes") as e:
        BenchSettings(cache_limit="lots")
    assert e.value.param == "cache_limit"
    assert BenchSettings(cache_limit="2MB").cache_limit == 2_000_000


def test_cli_bench_of_a_url_json(remote, tmp_path):
    url, _ = remote
    out = tmp_path / "rows.json"
    r = run_cli("bench", url, "--pipelines", "loader", "--batch-size", str(BATCH), "--image-size", "64",
                "--batches", "2", "--rounds", "1", "--threads", "1", "--device", "cpu", "--quiet",
                "--cache-dir", str(tmp_path / "c"), "--cache-limit", "50MB", "--json", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [x["pipeline"] for x in rows] == ROWS
    assert rows[2]["cache_limit"] == 50_000_000 and rows[2]["cache_start_bytes"] == 0
    assert "loader (cold cache)" in r.stdout
    assert "loader (cold cache) at batch 8, 64 px: " in r.stdout and "(cache_limit 50.0 MB)" in r.stdout
    assert list((tmp_path / "c").iterdir()) == []


def test_cache_settings_on_a_local_dataset_are_a_note(photos, tmp_path):
    notes: list[str] = []
    rows = bench(photos, BenchSettings(**{**FAST, "cache_limit": "1GB"}), packed=tmp_path / "p", progress=False,
                 notes=notes)
    assert [r.pipeline for r in rows] == ["loader"] and rows[0].url is None
    assert f"cache_dir and cache_limit apply to a dataset at a URL; {tmp_path / 'p'} is read in place" in notes[-1]


def test_cli_bad_cache_limit_names_the_flag(tmp_path):
    r = run_cli("bench", str(tmp_path), "--cache-limit", "lots")
    assert r.returncode != 0
    assert "--cache-limit must be a positive number of bytes" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
