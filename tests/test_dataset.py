import hashlib
import json
import multiprocessing as mp
import pickle
import shutil
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest

import loader
from loader import PackedDataset, open_dataset, pack
from loader.errors import DatasetError, LoaderError
from loader.format.files import file_digest
from loader.format.manifest import COLUMNS, read_manifest

V2 = Path(__file__).parent / "data" / "v2"   # packed by loader 0.1 (manifest version 2), with its SRC
V3 = Path(__file__).parent / "data" / "v3"   # V2's SRC packed by loader 0.2 (manifest version 3)


@pytest.fixture
def packed(image_tree, tmp_path):
    """image_tree packed into 2 shards (records 0-3 and 4-8)."""
    dst = tmp_path / "packed"
    pack(image_tree, dst, shards=2, workers=1, progress=False)
    return dst


@pytest.fixture
def legacy(tmp_path):
    """A copy of the version 2 dataset in tests/data/v2 (11 records, 3 classes, 1 shard)."""
    return Path(shutil.copytree(V2 / "packed", tmp_path / "legacy"))


def edit_column(dst, name, fn, **save):
    """Replace column ``name`` of a version 3 index by ``fn(values)``."""
    path = dst / COLUMNS[name][0]
    np.save(path, fn(np.load(path)), **save)


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
    assert ds.path == packed and ds.manifest.num_records == read_manifest(packed).num_records == 9
    # 2 KB records: each shard's records share one LMDB value (a block), end to end.
    assert [ds.locate(i) for i in (0, 3, 4, 8)] == [
        ("shard-00000.lmdb", 0), ("shard-00000.lmdb", 0), ("shard-00001.lmdb", 0), ("shard-00001.lmdb", 0)]
    batch = ds.read_batch([8, 0, 4, 4])
    assert [a.dtype for a in batch] == [np.uint8] * 4 and all(a.ndim == 1 for a in batch)
    assert [a.tobytes() for a in batch] == [ds.read(8), ds.read(0), ds.read(4), ds.read(4)]
    assert ds.read_batch(np.array([], dtype=np.int64)) == []
    assert ds.read(4) == (image_tree / ds.source(4)).read_bytes()
    assert ds.checksum(4) == f"{zlib.crc32(ds.read(4)):08x}" == f"{int(ds.manifest.crc32[4]):08x}"
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


def test_version_4_index_layout(packed):
    obj = json.loads((packed / "manifest.json").read_text())   # a small JSON header ...
    assert list(obj) == ["format", "version", "classes", "label_source", "multi_label", "shards",
                         "num_records", "conversions", "pack_params", "skipped", "unlisted"]
    assert obj["format"] == "loader.lmdb-shards" and obj["version"] == 4 and obj["num_records"] == 9
    assert (obj["label_source"], obj["multi_label"], obj["unlisted"]) == ("folders", False, 0)
    assert not (packed / "label_offsets.npy").exists() and not (packed / "label_values.npy").exists()
    assert [(s["first"], s["records"], s["values"]) for s in obj["shards"]] == [(0, 4, 1), (4, 5, 1)]
    for name, (fname, dtype) in COLUMNS.items():                # ... and plain .npy columns
        col = np.load(packed / fname, allow_pickle=False)
        assert col.dtype == dtype and col.shape == (9 + (name == "source_offsets"),), name
    m = read_manifest(packed)
    assert isinstance(m.labels, np.ndarray) and not m.labels.flags.writeable   # mapped, read-only
    assert m.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert m.offsets.tolist()[:4] == [0, *np.cumsum(m.lengths[:3]).tolist()]


def test_format_has_no_pickle(packed, image_tree):
    ds = open_dataset(packed)
    expected = {}       # (shard, key) -> the records it holds, in offset order
    for i in range(len(ds)):
        expected.setdefault(ds.locate(i), []).append((int(ds.manifest.offsets[i]),
                                                      (image_tree / ds.source(i)).read_bytes()))
    ds.close()  # py-lmdb allows one open per file and process
    for shard in ("shard-00000.lmdb", "shard-00001.lmdb"):
        env = lmdb.open(str(packed / shard), subdir=False, readonly=True, lock=False)
        with env.begin() as txn:
            rows = list(txn.cursor())
        env.close()
        assert rows, shard
        for key, value in rows:  # key: 10 ASCII digits; value: image files' bytes end to end, nothing else
            assert len(key) == 10 and key.isdigit()
            assert value == b"".join(data for _, data in sorted(expected[(shard, int(key))]))
            assert value[:2] == b"\xff\xd8" and b"\x80\x04\x95" not in value[:3]


def test_version_2_dataset_opens_with_identical_records(legacy):
    """tests/data/v2 was written by the previous release: it still opens, reads, verifies."""
    from loader.check.verify import verify

    ds = open_dataset(legacy)
    assert ds.manifest.version == 2 and len(ds) == 11 and ds.manifest.keys is None
    assert ds.classes == ("a_bird", "b_dog", "c_cat")
    for i in range(len(ds)):
        src = (V2 / "src" / ds.source(i)).read_bytes()
        if ds.manifest.converted(i) is None:
            assert ds.read(i) == src and ds.read_batch([i])[0].tobytes() == src
        assert ds.checksum(i) == f"{zlib.crc32(ds.read(i)):08x}"
    assert [ds.manifest.converted(i) for i in range(11)].count("exif-rotate") == 1
    assert ds.manifest.num_converted() == 1 and ds.locate(7) == ("shard-00000.lmdb", 7)
    ds.close()
    assert verify(legacy, progress=False) == []
    from loader.cli import dataset_info, main

    info = dataset_info(legacy)
    assert (info["version"], info["num_records"], info["num_converted"], info["num_skipped"]) == (2, 11, 1, 1)
    assert [c["count"] for c in info["classes"]] == [4, 3, 4] and info["shards"][0]["values"] == 11
    assert main(["verify", str(legacy), "--quiet"]) == 0
    # ... and ImageLoader reads it: every record once per eval epoch, labels from the manifest.
    ld = loader.ImageLoader(legacy, batch_size=4, train=False, image_size=16, with_indices=True)
    seen = [(i, lab) for _, labels, idx in ld for i, lab in zip(idx.tolist(), labels.tolist())]
    ld.close()
    assert sorted(seen) == [(i, int(info_label)) for i, info_label in enumerate(open_dataset(legacy).labels)]


def test_version_3_dataset_opens_as_folders_reads_and_verifies(tmp_path):
    """tests/data/v3 was written by loader 0.2: it opens (label source "folders", single-label),
    reads the same bytes as its SRC and verifies."""
    from loader.check.verify import verify
    from loader.cli import dataset_info, main

    v3 = Path(shutil.copytree(V3 / "packed", tmp_path / "v3"))
    ds = open_dataset(v3)
    m = ds.manifest
    assert (m.version, len(ds), ds.classes) == (3, 11, ("a_bird", "b_dog", "c_cat"))
    assert (ds.label_source, ds.multi_label, m.unlisted, ds.label_offsets, ds.label_values) == (
        "folders", False, 0, None, None)
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    for i in range(len(ds)):
        src = (V2 / "src" / ds.source(i)).read_bytes()
        if m.converted(i) is None:
            assert ds.read(i) == src and ds.read_batch([i])[0].tobytes() == src
        assert ds.checksum(i) == f"{zlib.crc32(ds.read(i)):08x}"
    assert m.num_converted() == 1
    assert np.array_equal(ds.multi_hot(np.arange(11)), np.eye(3, dtype=np.float32)[ds.labels])
    ds.close()
    assert verify(v3, progress=False) == []
    assert main(["verify", str(v3), "--quiet"]) == 0
    info = dataset_info(v3)
    assert (info["version"], info["label_source"], info["multi_label"], info["num_unlisted"]) == (
        3, "folders", False, 0)
    assert [c["count"] for c in info["classes"]] == [4, 3, 4] and info["num_skipped"] == 1


def test_folder_pack_is_the_version_3_output_but_for_the_header(tmp_path):
    """Re-packing tests/data/v2/src now gives tests/data/v3's files byte for byte, but for
    manifest.json, which differs only in the version, the new label keys and loader_version."""
    pack(V2 / "src", tmp_path / "now", workers=1, progress=False)
    old_dir, new_dir = V3 / "packed", tmp_path / "now"
    assert sorted(p.name for p in new_dir.iterdir()) == sorted(p.name for p in old_dir.iterdir())
    for p in old_dir.iterdir():
        if p.name not in ("manifest.json", "shard-00000.lmdb"):
            assert (new_dir / p.name).read_bytes() == p.read_bytes(), p.name
    old, new = open_dataset(old_dir), open_dataset(new_dir)
    assert [new.read(i) for i in range(len(new))] == [old.read(i) for i in range(len(old))]
    new_header = json.loads((new_dir / "manifest.json").read_text())
    old_header = json.loads((old_dir / "manifest.json").read_text())
    assert {k: new_header.pop(k) for k in ("label_source", "multi_label", "unlisted")} == {
        "label_source": "folders", "multi_label": False, "unlisted": 0}
    assert (old_header.pop("version"), new_header.pop("version")) == (3, 4)
    # Since loader 0.4 each shard entry also records the digest of its file (optional in version 4).
    assert [s.pop("digest") for s in new_header["shards"]] == [file_digest(new_dir / "shard-00000.lmdb")]
    assert new_header["pack_params"].pop("loader_version") == loader.__version__
    old_header["pack_params"].pop("loader_version")
    assert new_header == old_header


def test_columns_are_shared_not_copied(tmp_path):
    """Opening maps the columns: a second process opening the same (large) index grows its
    resident memory by far less than the column bytes, and only what it reads is faulted in."""
    from loader.convert.indexwriter import IndexWriter
    from loader.format.shards import ShardInfo, ShardWriter

    n = 2_000_000
    dst = tmp_path / "big"
    dst.mkdir()
    with ShardWriter(dst / "shard-00000.lmdb") as w:
        w.append(b"\xff\xd8" + bytes(4094))
    index = IndexWriter(dst, capacity=n)
    zeros, ones = np.zeros(n, np.int32), np.ones(n, np.int32)
    index.extend(labels=zeros, heights=ones, widths=ones, crcs=zeros, keys=zeros, offsets=zeros,
                 lengths=ones, sources=b"", source_ends=zeros)
    index.finish(classes=["a"], shards=[ShardInfo("shard-00000.lmdb", 0, n, 4096, 1)], pack_params={},
                 skipped=0)
    column_bytes = sum((dst / f).stat().st_size for f, _ in COLUMNS.values())
    assert column_bytes > 50_000_000
    code = ("import sys; from loader.bench.procstat import rss_bytes; from loader import open_dataset; "
            "before = rss_bytes(); ds = open_dataset(sys.argv[1]); grew = rss_bytes() - before; "
            "print(len(ds), int(ds.labels[-1]), grew)")
    import subprocess
    import sys
    for _ in range(2):   # the second process finds the columns in the page cache
        out = subprocess.run([sys.executable, "-c", code, str(dst)], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out[:2] == [str(n), "0"]
        assert int(out[2]) < column_bytes / 10, (out, column_bytes)


# ------------------------------------------------------------------ damaged / hostile datasets


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", "a\\b", ""])
def test_unsafe_shard_names_refused(packed, name):
    edit_manifest(packed, shards=lambda o: o["shards"][0].update(name=name))
    with pytest.raises(DatasetError, match="unsafe shard name"):
        open_dataset(packed)


def test_shard_count_disagreement_names_the_shard(packed, legacy):
    edit_manifest(packed, shards=lambda o: o["shards"][1].update(values=2))
    with pytest.raises(DatasetError, match=r"shard shard-00001.lmdb holds 1 values but the manifest says 2"):
        open_dataset(packed)
    def shift(o):
        o["shards"][0]["records"] = 10
        o["num_records"] = 10
        for k in ("labels", "heights", "widths", "checksums", "sources", "converted"):
            o[k] = o[k][:10]
    edit_manifest(legacy, shards=shift)
    with pytest.raises(DatasetError, match=r"shard shard-00000.lmdb holds 11 values but the manifest says 10"):
        open_dataset(legacy)


def test_missing_shard(packed):
    (packed / "shard-00001.lmdb").unlink()
    with pytest.raises(DatasetError, match=r"shard shard-00001.lmdb is missing .*5 records"):
        open_dataset(packed)


def test_unsupported_version(packed):
    edit_manifest(packed, version=6)
    with pytest.raises(DatasetError, match=r"unsupported manifest version 6 \(this loader reads versions 1, 2, 3, 4, "
                                           r"5\)"):
        open_dataset(packed)


def test_checksums_are_crc32_and_version_1_blake2b_manifests_still_verify(legacy):
    from loader.check.verify import verify

    packed = legacy
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
    ({"labels": [0] * 10}, "'labels' has 10 entries but num_records is 11"),
    ({"labels": [0] * 10 + [3]}, "record 10 has label 3, outside the 3 classes"),
    ({"labels": [0] * 10 + ["x"]}, "'labels' must be a list of integers"),
    ({"num_records": 12}, "'labels' has 11 entries but num_records is 12"),
    ({"shards": lambda o: o["shards"][0].update(first=5)}, "starts at record 5, expected 0"),
    ({"shards": lambda o: o["shards"][0].update(records=10)}, "shards hold 10 records in all but num_records is 11"),
    ({"heights": [0] * 11}, "heights and widths must be >= 1"),
])
def test_inconsistent_legacy_manifest(legacy, change, message):
    edit_manifest(legacy, **change)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_dataset(legacy)


def _pickled(a):
    return np.array([object()] * len(a), dtype=object)


# Hostile or damaged version 3 columns: each fails at open with one line naming the file.
@pytest.mark.parametrize("name, fn, save, message", [
    ("labels", lambda a: a.astype(np.int64), {}, "labels.npy: column 'labels' has dtype int64, expected int32"),
    ("labels", lambda a: a[:8], {}, "has shape (8,) but the manifest promises 9 records"),
    ("labels", lambda a: np.where(np.arange(9) == 6, -1, a).astype(np.int32), {},
     "record 6 has labels -1, outside [0, 2]"),
    ("labels", lambda a: np.full(9, 3, np.int32), {}, "record 0 has labels 3, outside [0, 2]"),
    ("heights", lambda a: np.zeros(9, np.int32), {}, "record 0 has heights 0, outside [1, ]"),
    ("keys", lambda a: np.where(np.arange(9) == 5, 1, a).astype(np.int32), {},
     "record 5 has key 1, outside shard shard-00001.lmdb's 1 values"),
    ("keys", lambda a: np.full(9, -2, np.int32), {}, "record 0 has key -2"),
    ("lengths", lambda a: np.zeros(9, np.uint32), {}, "record 0 has lengths 0"),
    ("converted", lambda a: np.full(9, 7, np.uint8), {}, "record 0 has converted 7, outside [, 0]"),
    ("checksums", _pickled, {"allow_pickle": True}, "column 'checksums' has dtype object"),
    ("labels", _pickled, {"allow_pickle": True}, "column 'labels' has dtype object"),
    ("source_offsets", lambda a: a[::-1].copy(), {}, "source_offsets must start at 0"),
    ("source_offsets", lambda a: np.concatenate([a[:5], a[4:5] - 1, a[6:]]), {}, "source_offsets decrease"),
])
def test_hostile_columns_fail_at_open(packed, name, fn, save, message):
    edit_column(packed, name, fn, **save)
    with pytest.raises(DatasetError) as e:
        open_dataset(packed)
    msg = str(e.value)
    assert message in msg and COLUMNS[name][0] in msg and "\n" not in msg, msg


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "widths.npy").unlink(), "widths.npy is missing"),
    (lambda p: (p / "keys.npy").write_bytes((p / "keys.npy").read_bytes()[:-4]), "truncated or padded"),
    (lambda p: (p / "offsets.npy").write_bytes((p / "offsets.npy").read_bytes() + b"x"), "truncated or padded"),
    (lambda p: (p / "labels.npy").write_bytes(b"\x80\x04\x95 pickled"), "is not a valid .npy column"),
    (lambda p: (p / "sources.bin").write_bytes(b"a/b.jpg"), "sources.bin is 7 bytes but source_offsets end at"),
    (lambda p: (p / "sources.bin").unlink(), "sources.bin is missing"),
])
def test_damaged_index_files_fail_at_open(packed, damage, message):
    damage(packed)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(".", r"\.")) as e:
        open_dataset(packed)
    assert "\n" not in str(e.value)


def test_column_linked_outside_the_dataset_is_refused(packed, tmp_path):
    outside = tmp_path / "labels.npy"
    (packed / "labels.npy").rename(outside)
    (packed / "labels.npy").symlink_to(outside)
    with pytest.raises(DatasetError, match="labels.npy: column 'labels' is a link to .* outside the dataset folder"):
        open_dataset(packed)


def test_offsets_past_the_value_are_named_at_read(packed):
    """Offsets cannot be checked without reading the shards: a read past a value is refused."""
    edit_column(packed, "offsets", lambda a: np.where(np.arange(9) == 2, 10**6, a).astype(np.uint32))
    ds = open_dataset(packed)
    with pytest.raises(DatasetError, match=r"record 2 \(shard-00000.lmdb key 0000000000\) is cut short"):
        ds.read_batch([0, 2])
    with pytest.raises(DatasetError, match="the index wants bytes 1000000"):
        ds.read(2)


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

    import loader.format.shards as sh

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
    {"heights": [float("nan")] * 11},                  # json writes NaN, and Python's json reads it
    {"heights": [float("inf")] * 11},
    {"widths": [10**30] * 11},                          # past int64
    {"heights": [-5] * 11},
    {"widths": [0] * 11},
    {"heights": [True] * 11},                           # bool is an int in Python, not in the format
    {"labels": [1.0] * 11},
    {"num_records": "11"},
    {"num_records": -1},
    {"num_records": 10**30},
    {"classes": "abc"},
    {"checksums": [None] * 11},
    {"sources": [7] * 11},
    {"shards": {"name": "shard-00000.lmdb"}},
    {"shards": lambda o: o["shards"][0].update(records=-4)},
    {"shards": lambda o: o["shards"][0].update(first=float("nan"))},
    {"shards": lambda o: o["shards"][0].update(name=None)},
])
def test_hostile_legacy_manifest_values_are_one_line_errors(legacy, change):
    assert_one_line_error_at_open(legacy, change)


def assert_one_line_error_at_open(dst, change):
    edit_manifest(dst, **change)
    with pytest.raises(DatasetError) as e:
        open_dataset(dst)
    msg = str(e.value)
    assert "\n" not in msg and str(dst) in msg, msg


@pytest.mark.parametrize("change", [
    {"num_records": "9"},
    {"num_records": -1},
    {"num_records": 10**30},
    {"num_records": 10},
    {"classes": "abc"},
    {"classes": ["a", "a", "b"]},
    {"conversions": [7]},
    {"conversions": "exif"},
    {"skipped": -1},
    {"shards": {"name": "shard-00000.lmdb"}},
    {"shards": []},
    {"shards": lambda o: o["shards"][0].update(records=-4)},
    {"shards": lambda o: o["shards"][0].update(values=9)},
    {"shards": lambda o: o["shards"][0].update(values=True)},
    {"shards": lambda o: o["shards"][0].pop("values")},
    {"shards": lambda o: o["shards"][0].update(first=float("nan"))},
    {"shards": lambda o: o["shards"][0].update(name=None)},
    {"pack_params": None},
])
def test_hostile_header_values_are_one_line_errors(packed, change):
    assert_one_line_error_at_open(packed, change)


def test_shard_symlinked_outside_the_dataset_is_refused(packed, tmp_path):
    outside = tmp_path / "elsewhere.lmdb"
    (packed / "shard-00001.lmdb").rename(outside)
    (packed / "shard-00001.lmdb").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the dataset folder") as e:
        open_dataset(packed)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, what", [("sources.bin", "the file of source paths"),
                                        ("manifest.json", "the manifest")])
def test_index_file_linked_outside_the_dataset_is_refused_unread(packed, tmp_path, name, what):
    """No file of a dataset is read through a link that leaves DST: its content never shows up."""
    secret = tmp_path / "secret.txt"
    secret.write_text('{"format": "TOP SECRET"}')
    (packed / name).unlink()
    (packed / name).symlink_to(secret)
    with pytest.raises(DatasetError) as e:
        open_dataset(packed)
    assert str(e.value) == (f"{packed / name}: {what} is a link to {secret}, outside the dataset folder; copy "
                            f"the dataset with its files (cp -rL) or re-pack with `loader pack SRC DST --overwrite`")
    assert "SECRET" not in str(e.value)


def test_links_inside_the_dataset_folder_are_fine(packed):
    (packed / "sources.bin").rename(packed / "sources.real")
    (packed / "sources.bin").symlink_to("sources.real")
    assert open_dataset(packed).source(0) == "a_bird/img_0.jpg"


def test_a_missing_dataset_names_where_an_interrupted_overwrite_left_the_old_one(packed):
    old = packed.with_name(f"{packed.name}.old-4242-0123456789abcdef")
    packed.rename(old)
    with pytest.raises(DatasetError) as e:
        open_dataset(packed)
    assert str(e.value).endswith(f"; {old} may hold the previous dataset, left by a pack that was interrupted "
                                 f"while replacing it: the next `loader pack` to {packed} moves it back")
