"""Large downloads in ranged parts (loader.storage.parts): the pool takes the most urgent part first, a shard
comes down byte-identical in exactly its ranges (through the fault proxy, faults retried per part), an
object whose size changed is one line without retries, and read-ahead marks each download with its
shard's place in the plan. PART_BYTES is made small so the test shards (tens of KB) have several parts."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import pack_jpeg_classes, record_bytes
from s3server import upload_pack

import loader.storage.objectstore as objectstore
import loader.storage.parts as parts
import loader.storage.readahead as readahead
from loader.errors import DatasetError
from loader.format.dataset import open_dataset
from loader.storage.store import LocalStore

pytest_plugins = ["s3server", "faultproxy"]

PART = 4096


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """24 small JPEGs in 2 classes, 3 shards of several 4 KiB parts each."""
    root = tmp_path_factory.mktemp("parts")
    pack_jpeg_classes(root, classes=2, per_class=12, shards=3, seed_step=40, size=(64, 48))
    return root / "packed"


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(parts, "PART_BYTES", PART)
    monkeypatch.setattr(parts, "MIN_PART_BYTES", PART)


def ranges(proxy, key: str) -> list[tuple[int, int]]:
    """The (first, last) byte of every GET of ``key`` the proxy saw, in arrival order."""
    out = []
    for r in list(proxy.log):
        if r.method == "GET" and r.path.endswith("/" + key):
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", (r.range or "").strip())
            assert m, f"a GET of {key} without a closed range: {r.range!r}"
            out.append((int(m.group(1)), int(m.group(2))))
    return out


def test_the_pool_runs_the_most_urgent_part_first():
    pool = parts._Pool(1)
    gate, ran = threading.Event(), []
    pool.submit(parts.NOW, gate.wait)             # holds the only worker while the rest queue up
    futures = [pool.submit(rank, lambda tag=tag: ran.append(tag))
               for rank, tag in [(5, "5a"), (2, "2a"), (5, "5b"), (parts.NOW, "now"), (2, "2b"), (0, "0")]]
    gate.set()
    for f in futures:
        f.result(timeout=10)
    assert ran == ["now", "0", "2a", "2b", "5a", "5b"]


def test_a_download_is_one_part_per_connection_within_the_bounds():
    mib = 1 << 20
    assert parts.part_size(2 * mib - 1) is None                       # under two minimum parts: one GET
    assert parts.part_size(2 * mib) == mib
    assert parts.part_size(15 * mib) == -(-15 * mib // parts.PARTS_IN_FLIGHT)    # every connection on it
    assert parts.part_size(64 * mib) == 8 * mib
    assert parts.part_size(512 * mib) == parts.PART_BYTES == 8 * mib  # at most 8 MiB a GET: 64 parts


def test_urgency_is_per_thread_and_restored():
    assert parts.current_urgency() == parts.NOW
    seen = []
    with parts.urgency(4):
        t = threading.Thread(target=lambda: seen.append(parts.current_urgency()))
        t.start()
        t.join()
        seen.append(parts.current_urgency())
    assert seen == [parts.NOW, 4] and parts.current_urgency() == parts.NOW


def test_a_shard_comes_down_in_exactly_its_parts(packed, proxied, s3_server, tmp_path, small_parts):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    key = "shard-00001.lmdb"
    data = (packed / key).read_bytes()
    assert len(data) > 3 * PART
    objectstore.ObjectStore(url).download(key, tmp_path / "got", size=len(data))
    assert (tmp_path / "got").read_bytes() == data
    got = sorted(ranges(proxy, key))
    want = [(a, min(a + PART, len(data)) - 1) for a in range(0, len(data), PART)]
    assert got == want                            # each part once, together exactly the object
    assert proxy.downloads(key) == 1              # one download (its part from byte 0)


def test_without_a_size_or_under_two_parts_it_is_one_get(packed, proxied, s3_server, tmp_path, small_parts):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    key = "shard-00000.lmdb"
    data = (packed / key).read_bytes()
    store = objectstore.ObjectStore(url)
    store.download(key, tmp_path / "a")
    parts.MIN_PART_BYTES = len(data)              # (monkeypatch restores it) under two parts: one GET
    store.download(key, tmp_path / "b", size=len(data))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == data
    assert proxy.gets(key) == 2


@pytest.mark.parametrize("fault,times", [("503", 2), ("reset", 1), ("truncate", 1)])
def test_a_faulty_part_is_retried_alone_and_the_bytes_are_right(packed, proxied, s3_server, tmp_path,
                                                                  small_parts, fault, times):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    key = "shard-00002.lmdb"
    data = (packed / key).read_bytes()
    proxy.add(fault, path=f"/{key}$", times=times)
    delays: list[float] = []
    objectstore.ObjectStore(url, sleep=delays.append).download(key, tmp_path / "got", size=len(data))
    assert (tmp_path / "got").read_bytes() == data
    n = -(-len(data) // PART)
    assert proxy.gets(key) == n + times and len(delays) == times
    assert sorted(set(ranges(proxy, key))) == [(a, min(a + PART, len(data)) - 1) for a in range(0, len(data), PART)]


def test_an_object_whose_size_changed_is_one_line_without_retries(packed, proxied, s3_server, tmp_path,
                                                                  small_parts, monkeypatch):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    key = "shard-00001.lmdb"
    size = (packed / key).stat().st_size
    monkeypatch.setattr(parts, "PARTS_IN_FLIGHT", 2)
    monkeypatch.setattr(parts, "_pool", None)     # a pool of 2 for this test (and a fresh one after it)
    delays: list[float] = []
    with pytest.raises(DatasetError) as e:
        objectstore.ObjectStore(url, sleep=delays.append).download(key, tmp_path / "got", size=size + 1)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{url}/{key} is {size} bytes, the index says {size + 1}:")
    assert delays == [] and proxy.gets(key) <= 2  # no retry; the parts not begun never asked
    monkeypatch.setattr(parts, "_pool", None)


def test_a_remote_dataset_read_through_parts_gives_the_local_records(packed, proxied, s3_server, tmp_path,
                                                                    small_parts):
    bucket, proxy = proxied
    url = upload_pack(packed, s3_server, bucket)
    ds = open_dataset(url, cache_dir=tmp_path / "cache")
    local = open_dataset(packed)
    try:
        assert record_bytes(ds) == record_bytes(local)
    finally:
        ds.close()
        local.close()
    for f in sorted(packed.glob("shard-*.lmdb")):
        assert proxy.downloads(f.name) == 1 and proxy.gets(f.name) == -(-f.stat().st_size // PART)


class UrgencyStore(LocalStore):
    """A LocalStore that records the urgency each shard download ran at."""

    def __init__(self, root):
        super().__init__(root, url=Path(root).as_uri())
        self.urgency: dict[str, int] = {}

    def download(self, key, dest, *, size=None):
        if key.endswith(".lmdb"):
            self.urgency[key] = parts.current_urgency()
        super().download(key, dest, size=size)


def test_read_ahead_marks_each_download_with_its_place_in_the_plan(packed, tmp_path, monkeypatch):
    from loader.format.dataset import open_remote

    monkeypatch.setattr(readahead, "READ_AHEAD_THREADS", 2)
    store = UrgencyStore(packed)
    ds = open_remote(packed.as_uri(), cache_dir=tmp_path / "c", store=store)
    try:
        firsts = [s.first for s in ds.manifest.shards] + [len(ds)]
        order = [2, 0, 1]
        records = np.concatenate([np.arange(firsts[s], firsts[s + 1]) for s in order])
        ds.read_ahead(records)
        ds._ahead.join(30)
        assert store.urgency == {ds.manifest.shards[s].name: k for k, s in enumerate(order)}
    finally:
        ds.close()
    store2 = UrgencyStore(packed)                 # the reader's own fetch, no read-ahead: now
    ds = open_remote(packed.as_uri(), cache_dir=tmp_path / "c2", store=store2)
    try:
        ds.read_batch(np.array([0]))
        assert store2.urgency == {ds.manifest.shards[0].name: parts.NOW}
    finally:
        ds.close()


class OverlapStore(LocalStore):
    """A LocalStore whose shard downloads say they have begun (as the object store does once its requests
    are queued), then take ``delay`` s: records the order they began in and how many ran at once."""

    def __init__(self, root, delay=0.05):
        super().__init__(root, url=Path(root).as_uri())
        self.delay, self.began, self.most, self._now = delay, [], 0, 0
        self._lock = threading.Lock()

    def download(self, key, dest, *, size=None):
        if not key.endswith(".lmdb"):
            return super().download(key, dest, size=size)
        with self._lock:
            self.began.append(key)
            self._now += 1
            self.most = max(self.most, self._now)
        parts.begun()
        try:
            import time

            time.sleep(self.delay)
            super().download(key, dest, size=size)
        finally:
            with self._lock:
                self._now -= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_read_ahead_begins_downloads_in_plan_order_and_overlaps_them(packed, tmp_path, monkeypatch, seed):
    from loader.format.dataset import open_remote

    monkeypatch.setattr(readahead, "READ_AHEAD_THREADS", 3)
    store = OverlapStore(packed)
    ds = open_remote(packed.as_uri(), cache_dir=tmp_path / "c", store=store)
    try:
        order = np.random.default_rng(seed).permutation(len(ds.manifest.shards)).tolist()
        firsts = [s.first for s in ds.manifest.shards] + [len(ds)]
        ds.read_ahead(np.concatenate([np.arange(firsts[s], firsts[s + 1]) for s in order]))
        ds._ahead.join(30)
        assert store.began == [ds.manifest.shards[s].name for s in order]
        assert store.most >= 2                    # begun in order, then run side by side
    finally:
        ds.close()


def test_the_bench_proxy_s_range_cache_answers_parts_with_the_object_s_bytes(packed, s3_env, s3_server, tmp_path,
                                                                              small_parts, monkeypatch):
    """benchmarks/moto_bench.py reads through FaultProxy(range_cache=True): ranged GETs answered from the
    whole object fetched once (moto reads all of it per ranged GET); the parts must still be the object."""
    from faultproxy import FaultProxy

    url = upload_pack(packed, s3_server, s3_env)
    proxy = FaultProxy(s3_server, range_cache=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        for key in ("shard-00000.lmdb", "shard-00002.lmdb"):
            data = (packed / key).read_bytes()
            objectstore.ObjectStore(url).download(key, tmp_path / key, size=len(data))
            assert (tmp_path / key).read_bytes() == data
            assert proxy.gets(key) == -(-len(data) // PART)
        assert sorted(p.rsplit("/", 1)[-1] for p in proxy.range_cache) == ["shard-00000.lmdb", "shard-00002.lmdb"]
    finally:
        proxy.stop()
