"""Damaged shards and manifests end in one line naming the culprit, never a signal or a traceback
(issue 21 B). Everything that reads damaged LMDB files runs in a child process: LMDB maps the
file, and a read past its end is SIGBUS, not an exception; each test checks how the child ended.
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import loader
import loader.format.manifest
from tests.conftest import REPO, edit_columns, run_cli

# ImageLoader in a child: prints one JSON line with what happened.
LOAD_IN_A_CHILD = textwrap.dedent("""
    import json, sys, warnings
    from loader import ImageLoader
    from loader.errors import LoaderError
    path, kw = sys.argv[1], json.loads(sys.argv[2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ld = ImageLoader(path, image_size=16, with_indices=True, **kw)
            epoch = [idx.tolist() for _, _, idx in ld]
            out = {"epoch": epoch, "bad": ld.bad_records}
        except LoaderError as e:
            out = {"error": f"{type(e).__name__}: {e}"}
    out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    print(json.dumps(out))
""")


def load_in_child(path, **kw) -> dict:
    r = subprocess.run([sys.executable, "-c", LOAD_IN_A_CHILD, str(path), json.dumps(kw)], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, f"the child died (rc {r.returncode}): {r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """40 photo-like JPEGs (~35-65 KB: one LMDB value each, in overflow pages), 2 shards of 20."""
    from loader.synthetic import make_dataset

    root = tmp_path_factory.mktemp("photos")
    make_dataset(root / "src", classes=2, per_class=20, seed=1, workers=1)
    packed = root / "packed"
    loader.pack(root / "src", packed, shards=2, workers=1, progress=False)
    ds = loader.open_dataset(packed)
    assert [s.records for s in ds.manifest.shards] == [20, 20] and ds.manifest.shards[0].values == 20
    ds.close()
    return packed


def copy_of(photos, tmp_path):
    return shutil.copytree(photos, tmp_path / "copy")


# ---------------------------------------------------------------- B5: a shard cut short


@pytest.fixture
def truncated(photos, tmp_path):
    copy = copy_of(photos, tmp_path)
    shard = copy / "shard-00001.lmdb"
    size = shard.stat().st_size
    os.truncate(shard, size - 4096)
    return copy, f"shard {shard} is {size - 4096} bytes, its LMDB header needs {size}: the file is truncated"


@pytest.mark.parametrize("command", [["verify"], ["verify", "--no-decode"], ["info"]])
def test_truncated_shard_is_one_line_from_the_cli(truncated, command):
    copy, message = truncated
    r = run_cli(*command, str(copy))
    assert r.returncode == 2, f"rc {r.returncode} (-{signal.SIGBUS} is SIGBUS): {r.stderr[-2000:]}"
    assert r.stderr.startswith(f"error: {message}") and r.stderr.count("\n") == 1, r.stderr
    assert "re-pack with `loader pack SRC DST --overwrite`" in r.stderr


@pytest.mark.parametrize("on_error", ["raise", "replace"])
def test_truncated_shard_is_one_dataset_error_from_image_loader(truncated, on_error):
    copy, message = truncated
    got = load_in_child(copy, batch_size=8, train=False, on_error=on_error)
    assert got["error"].startswith(f"DatasetError: {message}"), got


# ---------------------------------------------------------------- B6: a damaged LMDB page


def overflow_page(shard, key: int) -> int:
    """Where (byte offset) the first overflow page of the value under ``key`` starts (the values of these shards are
    larger than a page, so each lives in overflow pages; the tree is one leaf, page 2 here)."""
    b = shard.read_bytes()
    psize = struct.unpack_from("<I", b, 40)[0]
    # The newer meta page's root.
    metas = [struct.unpack_from("<QQ", b, m * psize + 136) + (struct.unpack_from("<Q", b, m * psize + 128)[0],)
             for m in (0, 1)]
    root = max(metas, key=lambda m: m[1])[2]
    page = root * psize
    lower = struct.unpack_from("<H", b, page + 12)[0]
    for n in range((lower - 16) // 2):
        off = struct.unpack_from("<H", b, page + 16 + 2 * n)[0]
        _lo, _hi, flags, ksize = struct.unpack_from("<HHHH", b, page + off)
        if bytes(b[page + off + 8:page + off + 8 + ksize]) == b"%010d" % key:
            assert flags & 1, "the value is not in overflow pages"
            return struct.unpack_from("<Q", b, page + off + 8 + ksize)[0] * psize
    raise AssertionError(f"key {key} not in the root leaf")


@pytest.fixture
def corrupt_page(photos, tmp_path):
    """Record 5's value sits on a page whose header now says it is a leaf: LMDB raises
    MDB_CORRUPTED for it; then, in the same read transaction, MDB_BAD_TXN for every later read."""
    copy = copy_of(photos, tmp_path)
    shard = copy / "shard-00000.lmdb"
    ds = loader.open_dataset(copy)
    assert ds.locate(5) == ("shard-00000.lmdb", 5)
    ds.close()
    page = overflow_page(shard, 5)            # its byte offset
    with open(shard, "r+b") as f:
        f.seek(page + 10)                     # the page header's flags
        f.write(struct.pack("<H", 0x02))      # P_LEAF where P_OVERFLOW was
    return copy


def test_corrupt_page_is_one_bad_record_in_verify(corrupt_page):
    r = run_cli("verify", "--no-decode", str(corrupt_page))
    assert r.returncode == 1, f"rc {r.returncode}: {r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("record ")]
    assert len(lines) == 1, r.stdout                    # the records after it still read (a fresh transaction)
    assert lines[0].startswith("record 5 (shard-00000.lmdb key 0000000005, source ")
    assert lines[0].endswith("it cannot be read (LMDB: mdb_get: MDB_CORRUPTED: Located page was wrong type): "
                             "the shard is damaged")


def test_corrupt_page_raises_one_line_naming_shard_and_record(corrupt_page):
    got = load_in_child(corrupt_page, batch_size=8, train=False)
    assert got["error"] == (f"DatasetError: {corrupt_page}: record 5 (shard-00000.lmdb key 0000000005) cannot be "
                            f"read (LMDB: mdb_get: MDB_CORRUPTED: Located page was wrong type): the shard is "
                            f"damaged; re-pack with `loader pack SRC DST --overwrite`"), got


def test_corrupt_page_is_replaced_under_on_error_replace(corrupt_page):
    got = load_in_child(corrupt_page, batch_size=8, train=False, on_error="replace")
    seen = [i for idx in got["epoch"] for i in idx]
    assert got["bad"] == [5]
    assert seen == [i for i in range(40) if i != 5][:5] + [6] + list(range(6, 40))   # 5's slot: the next good one
    assert len(got["warnings"]) == 1 and "record 5 " in got["warnings"][0]
    assert "is damaged: it cannot be read (LMDB: mdb_get: MDB_CORRUPTED" in got["warnings"][0]


def test_offset_past_its_value_is_replaced_under_on_error_replace(photos, tmp_path):
    copy = copy_of(photos, tmp_path)
    edit_columns(copy, offsets=lambda a: np.where(np.arange(len(a)) == 12, 10**6, a))
    got = load_in_child(copy, batch_size=8, train=False, on_error="replace")
    assert got["bad"] == [12]
    assert [i for idx in got["epoch"] for i in idx] == list(range(12)) + [13] + list(range(13, 40))
    assert "is damaged: it is cut short: the value is " in got["warnings"][0]
    got = load_in_child(copy, batch_size=8, train=False)
    assert got["error"].startswith(f"DatasetError: {copy}: record 12 (shard-00000.lmdb key 0000000012) is cut "
                                   f"short: the value is "), got


def test_swapped_shards_are_one_line_at_open(photos, tmp_path):
    copy = copy_of(photos, tmp_path)
    a, b = copy / "shard-00000.lmdb", copy / "shard-00001.lmdb"
    a.rename(copy / "tmp")
    b.rename(a)
    (copy / "tmp").rename(b)
    sizes = {s.name: s.bytes for s in loader.format.manifest.read_manifest(copy).shards}
    r = run_cli("verify", "--no-decode", str(copy))
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr == (f"error: {copy}: shard shard-00000.lmdb is {a.stat().st_size} bytes, but the manifest says "
                        f"it holds {sizes['shard-00000.lmdb']} bytes of records: the file is truncated or another "
                        f"file; copy it again or re-pack with `loader pack SRC DST --overwrite`\n")


# ---------------------------------------------------------------- B7: hostile manifests


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "nests lists or objects too deeply to be a loader manifest"),
    ('{"format": "loader.lmdb-shards", "version": ' + "9" * 5000 + "}",
     "is not a loader manifest: it holds a number too long to read (Exceeds the limit (4300 digits) for integer "
     "string conversion: value has 5000 digits)"),
])
def test_hostile_manifest_is_one_line(photos, tmp_path, text, message):
    copy = copy_of(photos, tmp_path)
    (copy / "manifest.json").write_text(text)
    for command in ("info", "verify"):
        r = run_cli(command, str(copy))
        assert r.returncode == 2, f"rc {r.returncode}: {r.stderr[-2000:]}"
        assert r.stderr == (f"error: {copy / 'manifest.json'} {message}; re-pack with "
                            f"`loader pack SRC DST --overwrite`\n")
    limit = sys.get_int_max_str_digits()
    with pytest.raises(loader.errors.DatasetError) as e:        # in this process too: no host limit changed
        loader.open_dataset(copy)
    assert str(e.value).startswith(f"{copy / 'manifest.json'} ") and sys.get_int_max_str_digits() == limit


def test_manifest_larger_than_any_of_ours_is_refused_unread(photos, tmp_path, monkeypatch):
    from loader.errors import DatasetError
    from loader.format import files

    copy = copy_of(photos, tmp_path)
    monkeypatch.setattr(files, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(DatasetError, match=r"manifest.json is \d+ bytes, more than any loader manifest \(100\)"):
        loader.open_dataset(copy)
