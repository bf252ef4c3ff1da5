"""Object-store faults through a fault-injecting proxy (tests/faultproxy.py) in front of moto: 503 SlowDown,
a reset connection, a truncated body and a stalled response are retried with bounded jittered backoff and
the bytes are right; a store that always answers 503 is one line after the bounded retries; kill -9 during
a stalled download leaves a cache the next run uses; 8 ranks on one node download each shard once.

Covered elsewhere, not repeated here: 403/404 and missing credentials are one line naming the URL
(test_remote_pack.py::test_missing_object_and_bucket_are_one_line, ::test_wrong_credentials_are_one_line_naming_
what_to_set, ::test_missing_credentials_are_one_line_naming_what_to_set); a full cache disk is one line naming
cache_dir (test_cache.py::test_a_full_cache_disk_is_one_line_naming_cache_dir); kill -9 mid-download with a
local store (test_cache.py::test_kill_9_mid_download_leaves_a_cache_the_next_run_uses) and mid-upload
(test_remote_pack.py::test_kill_9_during_upload_leaves_no_dataset_and_a_rerun_succeeds).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import pack_jpeg_classes, record_bytes
from s3server import upload_pack

import loader
import loader.storage.objectstore as objectstore
from loader.errors import DatasetError
from loader.format.dataset import open_dataset

pytest_plugins = ["s3server", "faultproxy"]

SHARDS = 4


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """32 small JPEGs in 2 classes, 4 shards (a local pack, uploaded to each test's bucket)."""
    root = tmp_path_factory.mktemp("faults")
    pack_jpeg_classes(root, classes=2, per_class=16, shards=SHARDS, seed_step=70, size=(64, 48))
    return root / "packed"




@pytest.mark.parametrize("fault,times", [("503", 2), ("reset", 1), ("truncate", 1), ("stall", 1)])
def test_a_transient_fault_is_retried_and_the_bytes_are_right(packed, proxied, s3_server, tmp_path, monkeypatch,
                                                               fault, times):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    monkeypatch.setenv("LOADER_STALL_TIMEOUT", "1")        # the stall (2 s) outlasts it: a timeout, retried
    key = "shard-00001.lmdb"
    proxy.add(fault, path=f"/{key}$", times=times, seconds=2.0)
    delays: list[float] = []
    store = objectstore.ObjectStore(url, sleep=delays.append)
    store.download(key, tmp_path / "got")
    assert (tmp_path / "got").read_bytes() == (packed / key).read_bytes()
    assert proxy.gets(key) == times + 1           # each fault once, then the good answer
    assert len(delays) == times and all(0 <= d <= objectstore._BACKOFF_FIRST * 2 ** k for k, d in enumerate(delays))


@pytest.mark.parametrize("fault", ["503", "reset", "truncate"])
def test_a_ranged_read_is_retried_too(packed, proxied, s3_server, fault):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    key = "shard-00002.lmdb"
    proxy.add(fault, path=f"/{key}$", times=1)
    store = objectstore.ObjectStore(url, sleep=lambda s: None)
    assert store.read(key, 100, 5000) == (packed / key).read_bytes()[100:5000]
    assert proxy.gets(key) == 2


def test_faults_on_the_way_through_open_dataset_still_give_the_pack_s_records(packed, proxied, s3_server, tmp_path):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    proxy.add("503", path=r"/shard-00000\.lmdb$", times=1)
    proxy.add("reset", path=r"/shard-00001\.lmdb$", times=1)
    proxy.add("truncate", path=r"/shard-00002\.lmdb$", times=1)
    proxy.add("slow", path=r"/shard-00003\.lmdb$", times=1, rate=200_000)
    proxy.add("503", path=r"/labels\.npy$", times=1)
    ds = open_dataset(url, cache_dir=tmp_path / "cache")
    assert record_bytes(ds) == record_bytes(open_dataset(packed))
    assert [proxy.downloads(f"shard-{s:05d}.lmdb") for s in range(SHARDS)] == [2, 2, 2, 1]
    assert proxy.downloads("labels.npy") == 2


def test_always_503_is_one_line_after_the_bounded_retries(packed, proxied, s3_server, tmp_path):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    key = "shard-00003.lmdb"
    proxy.add("503", path=f"/{key}$", times=None)
    delays: list[float] = []
    with pytest.raises(DatasetError) as info:
        objectstore.ObjectStore(url, sleep=delays.append).download(key, tmp_path / "got")
    msg = str(info.value)
    assert "\n" not in msg and f"{url}/{key}" in msg
    assert f"gave up after {objectstore.RETRIES + 1} attempts" in msg
    assert proxy.gets(key) == objectstore.RETRIES + 1
    assert len(delays) == objectstore.RETRIES


def _read_all(url: str, cache_dir: str) -> str:
    ds = loader.open_dataset(url, cache_dir=cache_dir)
    return hashlib.sha256(b"".join(record_bytes(ds))).hexdigest()


def test_kill_9_during_a_stalled_download_leaves_a_cache_the_next_run_uses(packed, proxied, s3_server, tmp_path):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    key = "shard-00000.lmdb"
    proxy.add("stall", path=f"/{key}$", times=1, seconds=5.0)
    cache_dir = tmp_path / "cache"
    child = mp.get_context("spawn").Process(target=_read_all, args=(url, str(cache_dir)))
    child.start()
    try:
        deadline = time.monotonic() + 120
        while proxy.gets(key) == 0 and time.monotonic() < deadline and child.is_alive():
            time.sleep(0.05)
        assert proxy.gets(key) == 1            # the child is inside the stalled GET
        child.kill()                           # SIGKILL
    finally:
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    (entry,) = [d for d in cache_dir.iterdir() if d.is_dir()]
    assert list(entry.glob(f"{key}.tmp-*")) and not (entry / key).exists()     # the reservation it left
    ds = open_dataset(url, cache_dir=cache_dir)
    assert ds.path == entry
    assert record_bytes(ds) == record_bytes(open_dataset(packed))
    assert not list(entry.glob("*.tmp-*"))
    assert proxy.downloads(key) == 2 and proxy.downloads("labels.npy") == 1    # the index was complete


def _rank(url: str, cache_dir: str, rank: int) -> str:
    ds = loader.open_dataset(url, cache_dir=cache_dir)
    order = np.roll(np.arange(len(ds)), rank * 5)     # each rank starts elsewhere, reading ahead from there
    ds.read_ahead(order)
    return hashlib.sha256(b"".join(a.tobytes() for a in ds.read_batch(np.arange(len(ds))))).hexdigest()


def test_eight_ranks_on_a_node_download_each_shard_once(packed, proxied, s3_server, tmp_path):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    proxy.add("slow", path=r"\.lmdb$", times=None, rate=200_000)    # downloads overlap across the ranks
    with mp.get_context("spawn").Pool(8) as pool:
        digests = pool.starmap(_rank, [(url, str(tmp_path / "cache"), r) for r in range(8)])
    assert digests == [hashlib.sha256(b"".join(record_bytes(open_dataset(packed)))).hexdigest()] * 8
    shards = sorted(f.name for f in packed.glob("shard-*.lmdb"))
    index = sorted(f.name for f in packed.iterdir() if f.suffix in (".npy", ".bin"))   # what a reader fetches
    # One download operation per shard and index file on the node; manifest.json is read by each rank
    # (its bytes name the cache entry).
    assert {k: proxy.downloads(k) for k in shards + index} == {k: 1 for k in shards + index}
    assert {k: proxy.gets(k) for k in shards} == {k: 1 for k in shards}     # no ranged re-reads either
    assert proxy.downloads("manifest.json") == 8
