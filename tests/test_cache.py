"""The node-local shard cache (loader.storage.cache) and datasets opened through it (loader.storage.remote),
all on file:// URLs and a store that counts its downloads, so no object-store backend is needed."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import multiprocessing as mp
import os
import signal
import stat
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, pack_jpeg_classes, write

import loader
from loader.errors import ArgumentError, DatasetError
from loader.format.dataset import open_dataset, open_remote
from loader.storage.cache import ShardCache, parse_bytes
from loader.storage.store import LocalStore

INDEX = ("manifest.json", "labels.npy", "heights.npy", "widths.npy", "checksums.npy", "keys.npy", "offsets.npy",
         "lengths.npy", "converted.npy", "source_offsets.npy", "sources.bin")


class CountingStore(LocalStore):
    """A LocalStore that appends each downloaded key to ``log`` (one line per download, O_APPEND:
    safe across processes); ``fault`` damages downloads: "truncate" (all), "truncate-once",
    "flip" (one byte), "kill" (write half the file, then SIGKILL this process)."""

    def __init__(self, root, log, fault=None):
        super().__init__(root, url=Path(root).as_uri())
        self.log, self.fault = str(log), fault

    def download(self, key, dest, *, size=None):
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (key + "\n").encode())
        os.close(fd)
        data = (self.root / key).read_bytes()
        if key.endswith(".lmdb") and self.fault == "kill":
            with open(dest, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if key.endswith(".lmdb") and (self.fault == "truncate" or
                                      (self.fault == "truncate-once" and downloads(self.log)[key] == 1)):
            data = data[:-100]
        if key.endswith(".lmdb") and self.fault == "flip":
            data = data[:50] + bytes([data[50] ^ 1]) + data[51:]
        Path(dest).write_bytes(data)


def downloads(log) -> Counter:
    return Counter(Path(log).read_text().split()) if Path(log).exists() else Counter()


def cached_bytes(cache_dir: Path) -> int:
    """Bytes of every file under cache_dir (temp files included, lock and pin files are empty), counted
    under the cache-wide lock (no eviction or reservation mid-walk) and once per inode (a temp file
    renamed mid-walk is one file)."""
    cache_dir = Path(cache_dir)
    if not cache_dir.exists():
        return 0
    fd = os.open(cache_dir / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        sizes = {}
        for f in cache_dir.rglob("*"):
            try:
                st = f.stat()
            except FileNotFoundError:     # renamed or removed while we walked
                continue
            if stat.S_ISREG(st.st_mode):
                sizes[st.st_ino] = max(sizes.get(st.st_ino, 0), st.st_size)
        return sum(sizes.values())
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def six(tmp_path_factory) -> Path:
    """48 small photo-like JPEGs in 2 classes packed into 6 shards."""
    root = tmp_path_factory.mktemp("six")
    pack_jpeg_classes(root, classes=2, per_class=24, shards=6, seed_step=100, size=(96, 72))
    assert len(list((root / "packed").glob("shard-*.lmdb"))) == 6
    return root / "packed"


def all_records(ds) -> list[bytes]:
    return [a.tobytes() for a in ds.read_batch(np.arange(len(ds)))]


def largest_shard(packed: Path) -> int:
    return max(f.stat().st_size for f in packed.glob("shard-*.lmdb"))


def index_bytes(packed: Path) -> int:
    return sum((packed / k).stat().st_size for k in INDEX)


def _read_all_in_child(packed: str, cache_dir: str, log: str) -> str:
    ds = open_remote(Path(packed).as_uri(), cache_dir=cache_dir, store=CountingStore(packed, log))
    return hashlib.sha256(b"".join(all_records(ds))).hexdigest()


def test_eight_processes_download_each_file_once(six, tmp_path):
    with mp.get_context("spawn").Pool(8) as pool:      # a child's exception is raised here
        digests = pool.starmap(_read_all_in_child, [(str(six), str(tmp_path / "cache"), str(tmp_path / "log"))] * 8)
    want = hashlib.sha256(b"".join(all_records(open_dataset(six)))).hexdigest()
    assert digests == [want] * 8
    shards = sorted(f.name for f in six.glob("shard-*.lmdb"))
    # manifest.json is read by each process (its bytes name the entry) and written from those bytes:
    # never downloaded; every other index file and every shard exactly once on the node.
    assert downloads(tmp_path / "log") == Counter({k: 1 for k in [*INDEX[1:], *shards]})
    entries = [d for d in (tmp_path / "cache").iterdir() if d.is_dir()]
    assert len(entries) == 1 and not list(entries[0].glob("*.tmp-*"))


def test_two_datasets_never_share_an_entry_and_one_dataset_is_shared(six, tmp_path):
    other = tmp_path / "other"
    write(other / "src" / "a" / "0.jpg", jpeg_bytes(seed=7))
    write(other / "src" / "b" / "0.jpg", jpeg_bytes(seed=8))
    loader.pack(other / "src", other / "packed", workers=1, progress=False)
    cache = tmp_path / "cache"
    a = open_dataset(six.as_uri(), cache_dir=cache)
    b = open_dataset((other / "packed").as_uri(), cache_dir=cache)
    a2 = open_dataset(six.as_uri(), cache_dir=cache)
    assert a.path != b.path and a.path == a2.path and a.path.parent == b.path.parent == cache
    assert all_records(a) == all_records(open_dataset(six)) and all_records(b) == all_records(
        open_dataset(other / "packed"))
    # The same bytes under another URL (a copy of the dataset) are another entry: the URL is in the name.
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in six.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert open_dataset(copy.as_uri(), cache_dir=cache).path not in (a.path, b.path)


def test_a_plain_path_never_touches_the_cache(six, tmp_path):
    ds = open_dataset(six, cache_dir=tmp_path / "cache", cache_limit="1GB")
    assert type(ds).__name__ == "PackedDataset" and ds.path == six
    assert not (tmp_path / "cache").exists()


def test_default_cache_dir_is_loader_cache(six, tmp_path, monkeypatch):
    monkeypatch.setenv("LOADER_CACHE", str(tmp_path / "env-cache"))
    ds = open_dataset(six.as_uri())
    assert ds.path.parent == tmp_path / "env-cache"


def test_lru_keeps_bytes_under_the_limit_and_refetches_evicted_shards(six, tmp_path):
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    limit = index_bytes(six) + 3 * largest_shard(six)
    ds = open_remote(six.as_uri(), cache_dir=cache_dir, cache_limit=limit, store=CountingStore(six, log))
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], cached_bytes(cache_dir))
            except FileNotFoundError:     # a file removed while we walked
                pass

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    want = all_records(open_dataset(six))
    rng = np.random.default_rng(0)
    try:
        for _epoch in range(2):
            order = rng.permutation(len(ds))
            for batch in np.array_split(order, 12):
                got = ds.read_batch(batch)
                assert [g.tobytes() for g in got] == [want[i] for i in batch]
                peak[0] = max(peak[0], cached_bytes(cache_dir))
    finally:
        stop.set()
        t.join()
    assert 0 < peak[0] <= limit
    counts = downloads(log)
    assert sum(counts[f"shard-{s:05d}.lmdb"] for s in range(6)) > 6     # evicted shards were fetched again
    assert all(counts[k] == 1 for k in INDEX[1:])                        # the index is never evicted


def _pin_and_die(packed: str, cache_dir: str) -> None:
    ds = open_dataset(Path(packed).as_uri(), cache_dir=cache_dir)
    ds.read_batch([ds.manifest.shards[1].first])      # shard 1 open: pinned
    os.kill(os.getpid(), signal.SIGKILL)


def test_eviction_respects_pins_and_ignores_a_dead_process_pin(six, tmp_path):
    cache_dir = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_pin_and_die, args=(str(six), str(cache_dir)))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL
    reader = open_dataset(six.as_uri(), cache_dir=cache_dir)        # no limit: shards stay open (pinned)
    firsts = [s.first for s in reader.manifest.shards]
    reader.read_batch([firsts[0]])
    entry = reader.path
    limited = open_dataset(six.as_uri(), cache_dir=cache_dir, cache_limit=index_bytes(six) + 3 * largest_shard(six))
    assert limited.path == entry
    limited.read_batch([firsts[2]])                  # 0 (pinned), 1 (its pinner is dead), 2: three shards fit
    assert sorted(f.name for f in entry.glob("shard-*.lmdb")) == [f"shard-0000{s}.lmdb" for s in (0, 1, 2)]
    limited.read_batch([firsts[3]])                  # room for 3: the least recent unpinned one (1) goes
    assert sorted(f.name for f in entry.glob("shard-*.lmdb")) == [f"shard-0000{s}.lmdb" for s in (0, 2, 3)]
    for s in (4, 5, 1):
        limited.read_batch([firsts[s]])
        assert (entry / "shard-00000.lmdb").exists()   # pinned by `reader` all along
    reader.close()
    limited.read_batch([firsts[4]])
    assert not (entry / "shard-00000.lmdb").exists()   # unpinned and least recently used: evicted


def test_a_limit_below_two_shards_is_refused_stating_the_minimum(six, tmp_path):
    with pytest.raises(ArgumentError) as info:
        open_dataset(six.as_uri(), cache_dir=tmp_path / "cache", cache_limit=index_bytes(six) + largest_shard(six))
    e = info.value
    assert e.param == "cache_limit" and "\n" not in str(e)
    assert "at least" in str(e) and "2 x its largest shard" in str(e) and six.as_uri() in str(e)


@pytest.mark.parametrize("value,want", [("50GB", 50 * 10**9), ("1.5MB", 1_500_000), ("512MiB", 512 * 2**20),
                                        (123, 123), ("123", 123), (None, None)])
def test_parse_bytes(value, want):
    assert parse_bytes(value) == want


def test_a_size_mismatch_is_fetched_again_once(six, tmp_path):
    log = tmp_path / "log"
    ds = open_remote(six.as_uri(), cache_dir=tmp_path / "cache", store=CountingStore(six, log, "truncate-once"))
    assert all_records(ds) == all_records(open_dataset(six))
    assert {downloads(log)[f"shard-{s:05d}.lmdb"] for s in range(6)} == {2}


def test_a_shard_damaged_twice_is_one_line_naming_it_and_the_url(six, tmp_path):
    log = tmp_path / "log"
    ds = open_remote(six.as_uri(), cache_dir=tmp_path / "cache", store=CountingStore(six, log, "truncate"))
    with pytest.raises(DatasetError) as info:
        ds.read_batch([0])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{six.as_uri()}/shard-00000.lmdb is ")
    assert "downloaded twice" in msg and downloads(log)["shard-00000.lmdb"] == 2
    assert not list(ds.path.glob("shard-00000.lmdb*tmp*")) and not (ds.path / "shard-00000.lmdb").exists()


def test_a_digest_mismatch_is_fetched_again_then_refused(six, tmp_path):
    key = "shard-00002.lmdb"
    good = "sha256:" + hashlib.sha256((six / key).read_bytes()).hexdigest()
    cache, log = ShardCache(tmp_path / "cache"), tmp_path / "log"
    size = (six / key).stat().st_size
    with pytest.raises(DatasetError) as info:
        cache.fetch(CountingStore(six, log, "flip"), key, size=size, digest=good, entry="e")
    assert "has digest" in str(info.value) and key in str(info.value) and downloads(log)[key] == 2
    assert not list((tmp_path / "cache" / "e").glob(key + "*tmp*")) and not (tmp_path / "cache" / "e" / key).exists()
    path = cache.fetch(CountingStore(six, log), key, size=size, digest=good, entry="e")
    assert path.read_bytes() == (six / key).read_bytes() and downloads(log)[key] == 3


def _download_and_die(packed: str, cache_dir: str, log: str) -> None:
    ds = open_remote(Path(packed).as_uri(), cache_dir=cache_dir, store=CountingStore(packed, log, "kill"))
    ds.read_batch([0])


def test_kill_9_mid_download_leaves_a_cache_the_next_run_uses(six, tmp_path):
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    p = mp.get_context("spawn").Process(target=_download_and_die, args=(str(six), str(cache_dir), str(log)))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL
    (entry,) = [d for d in cache_dir.iterdir() if d.is_dir()]
    assert [f.name for f in entry.glob("shard-00000.lmdb*tmp*")] != [] and not (entry / "shard-00000.lmdb").exists()
    ds = open_remote(six.as_uri(), cache_dir=cache_dir, store=CountingStore(six, log))
    assert ds.path == entry
    assert all_records(ds) == all_records(open_dataset(six))
    assert not list(entry.glob("*tmp*"))
    assert downloads(log)["shard-00000.lmdb"] == 2 and downloads(log)["labels.npy"] == 1


def test_an_abandoned_temp_file_is_cleaned_and_not_counted(six, tmp_path):
    cache = ShardCache(tmp_path / "cache", cache_limit=10**9)
    entry = cache.entry("e")
    (entry / "shard-00001.lmdb.tmp-999999").write_bytes(b"x" * 1000)   # its lock is free: a dead download
    assert cache.usage()[0] == 0 and not (entry / "shard-00001.lmdb.tmp-999999").exists()


def test_a_full_cache_disk_is_one_line_naming_cache_dir(six, tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DatasetError) as info:
        open_dataset(six.as_uri(), cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"cache_dir {tmp_path / 'cache'} is full: ")
    assert "manifest.json" in msg or ".npy" in msg
    # Nothing half-written is left.
    assert not [f for f in (tmp_path / "cache").rglob("*") if f.is_file() and f.stat().st_size]
    monkeypatch.undo()                                  # room again: the next open works
    assert all_records(open_dataset(six.as_uri(), cache_dir=tmp_path / "cache")) == all_records(open_dataset(six))


def _epoch_in_child(packed: str, cache_dir: str, log: str, limit: int, seed: int) -> bool:
    ds = open_remote(Path(packed).as_uri(), cache_dir=cache_dir, cache_limit=limit, store=CountingStore(packed, log))
    want = all_records(open_dataset(packed))
    for batch in np.array_split(np.random.default_rng(seed).permutation(len(ds)), 8):
        if [a.tobytes() for a in ds.read_batch(batch)] != [want[i] for i in batch]:
            return False
    return True


def test_four_processes_share_a_limited_cache_without_exceeding_it(six, tmp_path):
    cache_dir = tmp_path / "cache"
    limit = index_bytes(six) + 3 * largest_shard(six)
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], cached_bytes(cache_dir))
            except FileNotFoundError:
                pass

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        with mp.get_context("spawn").Pool(4) as pool:
            ok = pool.starmap(_epoch_in_child, [(str(six), str(cache_dir), str(tmp_path / "log"), limit, seed)
                                                for seed in range(4)])
    finally:
        stop.set()
        t.join()
    assert ok == [True] * 4 and 0 < peak[0] <= limit
    assert downloads(tmp_path / "log")["labels.npy"] == 1
