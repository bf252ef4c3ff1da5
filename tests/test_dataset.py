import hashlib
import json
import multiprocessing as mp
import pickle
import shutil

import lmdb
import numpy as np
import pytest

from loader import PackedDataset, open_dataset, pack
from loader.errors import DatasetError, LoaderError
from loader.manifest import Manifest, read_manifest


@pytest.fixture
def packed(image_tree, tmp_path):
    """image_tree packed into 2 shards (records 0-3 and 4-8)."""
    dst = tmp_path / "packed"
    pack(image_tree, dst, shards=2, workers=1, progress=False)
    return dst


def edit_manifest(dst, **changes):
    path = dst / "manifest.json"
    obj = json.loads(path.read_text())
    for key, value in changes.items():
        if callable(value):
            value(obj)
        else:
            obj[key] = value
    path.write_text(json.dumps(obj))


def test_accessors(packed, image_tree):
    ds = open_dataset(packed)
    assert isinstance(ds, PackedDataset) and len(ds) == 9
    assert ds.path == packed and ds.manifest == read_manifest(packed)
    assert [ds.locate(i) for i in (0, 3, 4, 8)] == [
        ("shard-00000.lmdb", 0), ("shard-00000.lmdb", 3), ("shard-00001.lmdb", 0), ("shard-00001.lmdb", 4)]
    batch = ds.read_batch([8, 0, 4, 4])
    assert [a.dtype for a in batch] == [np.uint8] * 4 and all(a.ndim == 1 for a in batch)
    assert [a.tobytes() for a in batch] == [ds.read(8), ds.read(0), ds.read(4), ds.read(4)]
    assert ds.read_batch(np.array([], dtype=np.int64)) == []
    assert ds.read(4) == (image_tree / ds.source(4)).read_bytes()
    assert ds.checksum(4) == ds.manifest.checksums[4]
    assert "9 records" in repr(ds)


@pytest.mark.parametrize("bad", [-1, 9, 100])
def test_out_of_range_indices(packed, bad):
    ds = open_dataset(packed)
    for f in (ds.read, ds.source, ds.locate, ds.checksum):
        with pytest.raises(IndexError, match=f"record index {bad} out of range for 9 records"):
            f(bad)
    with pytest.raises(IndexError):
        ds.read_batch([0, bad])


def test_two_datasets_on_same_files(packed):
    a, b = open_dataset(packed), open_dataset(packed)
    assert a.read(2) == b.read(2)
    a.close()
    assert b.read(7) == open_dataset(packed).read(7)


def test_pickle_drops_open_shards(packed):
    ds = open_dataset(packed)
    first = ds.read(5)  # opens an LMDB environment in this process
    state = pickle.dumps(ds)
    assert b"Environment" not in state and len(state) < 10_000
    ds2 = pickle.loads(state)
    assert all(r._env is None for r in ds2._readers)
    assert ds2.read(5) == first and ds2.classes == ds.classes


def _child_read(ds, q):
    q.put([ds.read(i) for i in range(len(ds))])


def test_reads_after_fork(packed):
    ds = open_dataset(packed)
    expected = [ds.read(i) for i in range(len(ds))]  # parent has open envs now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(ds, q))
    p.start()
    got = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0 and got == expected


def test_manifest_json_round_trip(packed):
    text = (packed / "manifest.json").read_text()
    m = Manifest.from_json(text)
    assert m.to_json() == text
    assert m.format == "loader.lmdb-shards" and m.version == 2 and m.num_records == 9
    assert m.labels.dtype == np.int64 and m.heights.dtype == np.int32 and m.widths.dtype == np.int32
    assert [s.first for s in m.shards] == [0, 4] and [s.records for s in m.shards] == [4, 5]


def test_format_has_no_pickle(packed, image_tree):
    obj = json.loads((packed / "manifest.json").read_text())  # plain JSON
    assert obj["format"] == "loader.lmdb-shards"
    ds = open_dataset(packed)
    sources = {ds.locate(i): (image_tree / ds.source(i)).read_bytes() for i in range(len(ds))}
    ds.close()  # py-lmdb allows one open per file and process
    for shard in ("shard-00000.lmdb", "shard-00001.lmdb"):
        env = lmdb.open(str(packed / shard), subdir=False, readonly=True, lock=False)
        with env.begin() as txn:
            rows = list(txn.cursor())
        env.close()
        assert rows, shard
        for key, value in rows:  # key: 10 ASCII digits; value: the image file's bytes, nothing else
            assert len(key) == 10 and key.isdigit()
            assert value == sources[(shard, int(key))]
            assert value[:2] == b"\xff\xd8" and b"\x80\x04\x95" not in value[:3]


# ------------------------------------------------------------------ damaged / hostile datasets


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", "a\\b", ""])
def test_unsafe_shard_names_refused(packed, name):
    edit_manifest(packed, shards=lambda o: o["shards"][0].update(name=name))
    with pytest.raises(DatasetError, match="unsafe shard name"):
        open_dataset(packed)


def test_shard_count_disagreement_names_the_shard(packed):
    def shift(o):
        o["shards"][0]["records"] = 3
        o["shards"][1]["first"] = 3
        o["shards"][1]["records"] = 6
    edit_manifest(packed, shards=shift)
    with pytest.raises(DatasetError, match=r"shard shard-00000.lmdb holds 4 records but the manifest says 3"):
        open_dataset(packed)


def test_missing_shard(packed):
    (packed / "shard-00001.lmdb").unlink()
    with pytest.raises(DatasetError, match=r"shard shard-00001.lmdb is missing .*5 records"):
        open_dataset(packed)


def test_unsupported_version(packed):
    edit_manifest(packed, version=3)
    with pytest.raises(DatasetError, match=r"unsupported manifest version 3 \(this loader reads versions 1, 2\)"):
        open_dataset(packed)


def test_checksums_are_crc32_and_version_1_blake2b_manifests_still_verify(packed):
    import zlib

    from loader.verify import verify

    ds = open_dataset(packed)
    assert [ds.checksum(i) for i in range(len(ds))] == [f"{zlib.crc32(ds.read(i)):08x}" for i in range(len(ds))]
    records = [ds.read(i) for i in range(len(ds))]
    ds.close()
    # A dataset packed by version 1 (blake2b-64 checksums) opens and verifies ...
    edit_manifest(packed, version=1,
                  checksums=[hashlib.blake2b(r, digest_size=8).hexdigest() for r in records])
    assert verify(packed, decode=False, progress=False) == []
    # ... and a wrong one is still caught, with the version 1 digest in the message.
    edit_manifest(packed, checksums=lambda o: o["checksums"].__setitem__(3, "0" * 16))
    bad = verify(packed, decode=False, progress=False)
    assert [b[0] for b in bad] == [3]
    assert hashlib.blake2b(records[3], digest_size=8).hexdigest() in bad[0][4]


def test_missing_manifest(tmp_path):
    with pytest.raises(DatasetError) as e:
        open_dataset(tmp_path)
    assert str(e.value) == (f"not a packed dataset: {tmp_path} has no manifest.json; "
                            f"create one with `loader pack SRC DST`")
    assert isinstance(e.value, LoaderError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("change, message", [
    ({"format": "something-else"}, "not a loader manifest"),
    ({"labels": [0] * 8}, "'labels' has 8 entries but num_records is 9"),
    ({"labels": [0] * 8 + [3]}, "record 8 has label 3, outside the 3 classes"),
    ({"labels": [0] * 8 + ["x"]}, "'labels' must be a list of integers"),
    ({"num_records": 10}, "'labels' has 9 entries but num_records is 10"),
    ({"shards": lambda o: o["shards"][1].update(first=5)}, "starts at record 5, expected 4"),
    ({"shards": lambda o: o["shards"][1].update(records=4)}, "shards hold 8 records in all but num_records is 9"),
    ({"heights": [0] * 9}, "heights and widths must be >= 1"),
])
def test_inconsistent_manifest(packed, change, message):
    edit_manifest(packed, **change)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_dataset(packed)


def test_manifest_not_json(packed):
    (packed / "manifest.json").write_bytes(b"\x80\x04\x95 pickled?")
    with pytest.raises(DatasetError, match="is not valid JSON"):
        open_dataset(packed)


def test_copied_dataset_still_opens(packed, tmp_path):
    # Shard paths are relative to the dataset folder: it can be moved.
    shutil.move(packed, tmp_path / "moved")
    assert len(open_dataset(tmp_path / "moved")) == 9


def test_a_reader_finalized_while_a_shard_opens_does_not_deadlock(packed, tmp_path):
    """The garbage collector can finalize a leftover reader inside ``lmdb.open`` (any allocation
    may start it) while this thread holds the shard table's lock: its release must not wait,
    and the shard it held is still closed (by the next open or close)."""
    import gc
    import threading

    import loader.shards as sh

    other = tmp_path / "other"
    shutil.copytree(packed, other)

    class Cycle:
        pass

    gc.collect()
    gc.disable()                         # the collector runs only where the test says
    garbage = Cycle()
    garbage.me, garbage.ds = garbage, open_dataset(packed)
    assert garbage.ds.read(0)            # its reader holds the shard open
    (held,) = [k for k in sh._OPEN if k[1] == (packed / "shard-00000.lmdb").stat().st_ino]
    del garbage
    real_open = sh.lmdb.open

    def open_and_collect(*a, **k):     # stands for an allocation that happens to start the GC
        gc.collect()
        return real_open(*a, **k)

    sh.lmdb.open = open_and_collect
    try:
        result = []
        t = threading.Thread(target=lambda: result.append(open_dataset(other)), daemon=True)
        t.start()
        t.join(20)
        assert not t.is_alive(), "deadlock: a finalizer waited on the lock its own thread holds"
    finally:
        sh.lmdb.open = real_open
        gc.enable()
    (ds,) = result
    ds.close()                                          # deferred, then drained by a later release
    assert held not in sh._OPEN and not sh._PENDING
    again = open_dataset(packed)                        # and the file opens again
    assert again.read(0)
    again.close()


# Hostile values at open: each a one-line DatasetError naming the manifest, nothing read outside DST.
@pytest.mark.parametrize("change", [
    {"heights": [float("nan")] * 9},                   # json writes NaN, and Python's json reads it
    {"heights": [float("inf")] * 9},
    {"widths": [10**30] * 9},                           # past int64
    {"heights": [-5] * 9},
    {"widths": [0] * 9},
    {"heights": [True] * 9},                            # bool is an int in Python, not in the format
    {"labels": [1.0] * 9},
    {"num_records": "9"},
    {"num_records": -1},
    {"num_records": 10**30},
    {"classes": "abc"},
    {"checksums": [None] * 9},
    {"sources": [7] * 9},
    {"shards": {"name": "shard-00000.lmdb"}},
    {"shards": lambda o: o["shards"][0].update(records=-4)},
    {"shards": lambda o: o["shards"][0].update(first=float("nan"))},
    {"shards": lambda o: o["shards"][0].update(name=None)},
])
def test_hostile_manifest_values_are_one_line_errors(packed, change):
    edit_manifest(packed, **change)
    with pytest.raises(DatasetError) as e:
        open_dataset(packed)
    msg = str(e.value)
    assert "\n" not in msg and str(packed) in msg, msg


def test_shard_symlinked_outside_the_dataset_is_refused(packed, tmp_path):
    outside = tmp_path / "elsewhere.lmdb"
    (packed / "shard-00001.lmdb").rename(outside)
    (packed / "shard-00001.lmdb").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the dataset folder") as e:
        open_dataset(packed)
    assert "\n" not in str(e.value)
