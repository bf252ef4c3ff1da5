import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loader import PackReport, open_dataset, pack
from loader.convert.packing import plan_shards, shard_ranges
from loader.errors import ArgumentError, PackError
from loader.format.manifest import record_checksum
from loader.synthetic import photo_like_image
from tests.conftest import write

REPO = Path(__file__).resolve().parents[1]


def quiet_pack(src, dst, **kw):
    kw.setdefault("workers", 1)
    return pack(src, dst, progress=False, **kw)


def add_bad_files(src: Path, good_jpeg: bytes) -> dict[str, str]:
    """Bad files of every kind in class b_dog; returns relpath -> expected reason prefix."""
    d = src / "b_dog"
    (d / "corrupt.jpg").write_bytes(good_jpeg[:200] + b"\x00" * 50 + b"garbage" * 40)
    (d / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (d / "zero.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image\n")
    return {
        "b_dog/corrupt.jpg": "corrupt or truncated JPEG",
        "b_dog/notes.txt": "not an image (unrecognised format)",
        "b_dog/truncated.jpg": "corrupt or truncated JPEG: image file is truncated",
        "b_dog/zero.jpg": "empty file (0 bytes)",
    }


# ------------------------------------------------------------------ round trip


def test_round_trip_bytes_labels_sources(image_tree, tmp_path):
    report = quiet_pack(image_tree, tmp_path / "out")
    assert isinstance(report, PackReport)
    assert (report.num_records, report.num_skipped, report.shards) == (9, 0, 1)
    assert report.classes == ("a_bird", "b_dog", "c_cat")
    assert report.dst == str(tmp_path / "out")
    ds = open_dataset(tmp_path / "out")
    assert len(ds) == 9 and ds.classes == ("a_bird", "b_dog", "c_cat")
    assert ds.labels.dtype == np.int32 and ds.heights.dtype == np.int32
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [ds.source(i) for i in range(9)] == [
        "a_bird/img_0.jpg", "a_bird/img_1.jpg", "a_bird/img_2.jpg",
        "b_dog/deep/er/img_2.jpg", "b_dog/img_0.jpg", "b_dog/img_1.jpg",
        "c_cat/img_0.jpg", "c_cat/img_1.jpg", "c_cat/img_2.jpg"]
    for i in range(9):
        original = (image_tree / ds.source(i)).read_bytes()
        assert ds.read(i) == original  # stored byte-for-byte
        assert ds.checksum(i) == record_checksum(original)
        assert (int(ds.heights[i]), int(ds.widths[i])) == (48, 64)
    assert [ds.manifest.converted(i) for i in range(9)] == [None] * 9
    assert (tmp_path / "out" / "skipped.tsv").read_text() == "source\treason\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [  # no -lock file left
        "checksums.npy", "converted.npy", "heights.npy", "keys.npy", "labels.npy", "lengths.npy",
        "manifest.json", "offsets.npy", "shard-00000.lmdb", "skipped.tsv", "source_offsets.npy",
        "sources.bin", "widths.npy"]
    assert not list(tmp_path.glob("out.partial-*"))


def test_max_side_downscales_and_keeps_aspect(image_tree, tmp_path):
    report = quiet_pack(image_tree, tmp_path / "out", max_side=32, quality=90)
    ds = open_dataset(tmp_path / "out")
    assert report.num_records == 9
    assert [ds.manifest.converted(i) for i in range(9)] == ["max-side"] * 9
    assert ds.heights.tolist() == [24] * 9 and ds.widths.tolist() == [32] * 9
    assert ds.manifest.pack_params["max_side"] == 32 and ds.manifest.pack_params["quality"] == 90
    for i in range(9):
        stored = Image.open(io.BytesIO(ds.read(i)))
        assert stored.format == "JPEG" and stored.size == (32, 24)
        expected = Image.open(image_tree / ds.source(i)).convert("RGB").resize((32, 24), Image.LANCZOS)
        diff = np.abs(np.asarray(stored, np.int16) - np.asarray(expected, np.int16))
        assert diff.mean() < 8, diff.mean()  # JPEG (4:2:0) of a 32x24 textured image


def test_summary_line(image_tree, tmp_path):
    report = quiet_pack(image_tree, tmp_path / "out")
    line = report.summary()
    assert "\n" not in line
    assert line.startswith(f"packed 9 images (0 skipped) into {tmp_path / 'out'}: 3 classes, 1 shard, ")
    assert "images/s" in line and "MB/s" in line
    assert report.input_bytes == sum(p.stat().st_size for p in image_tree.rglob("*.jpg"))
    assert report.output_bytes == sum(p.stat().st_size for p in (tmp_path / "out").iterdir())
    assert report.seconds > 0 and report.images_per_sec == pytest.approx(9 / report.seconds)


def test_progress_bar_on_stderr(image_tree, tmp_path, capsys):
    pack(image_tree, tmp_path / "out", workers=1, progress=True)
    err = capsys.readouterr().err
    assert "9/9" in err and "img/s" in err


# ------------------------------------------------------------------ sharding, determinism


def test_plan_and_ranges():
    assert plan_shards(0, 5, None, 512) == 1
    assert plan_shards(10**9 + 1, 50, None, 500) == 3
    assert plan_shards(10**12, 4, None, 1) == 4        # at most one shard per image
    assert plan_shards(10, 4, 2, 512) == 2
    assert shard_ranges(9, 2) == [(0, 4), (4, 9)]
    assert shard_ranges(3, 3) == [(0, 1), (1, 2), (2, 3)]


def test_bad_files_skipped_inside_their_shard(image_tree, tmp_path, make_jpeg):
    (image_tree / "b_dog" / "img_1.jpg").write_bytes(b"")  # item 5 of 9 -> shard 1 of 2
    report = quiet_pack(image_tree, tmp_path / "out", shards=2)
    ds = open_dataset(tmp_path / "out")
    shards = ds.manifest.shards
    assert [(s.name, s.first, s.records) for s in shards] == [
        ("shard-00000.lmdb", 0, 4), ("shard-00001.lmdb", 4, 4)]
    assert report.num_records == 8 and report.skipped == (("b_dog/img_1.jpg", "empty file (0 bytes)"),)
    # Small records share a block: shard 0's four records are its value 0, end to end.
    assert ds.locate(3) == ("shard-00000.lmdb", 0) and [s.entries for s in shards] == [1, 1]
    assert ds.manifest.offsets[3] == sum(int(ds.manifest.lengths[i]) for i in range(3))
    assert ds.locate(4) == ("shard-00001.lmdb", 0)
    assert ds.source(4) == "b_dog/img_0.jpg" and ds.source(5) == "c_cat/img_0.jpg"
    assert shards[0].bytes == sum(len(ds.read(i)) for i in range(4))


def test_auto_shard_count_from_size(image_tree, tmp_path):
    total = sum(p.stat().st_size for p in image_tree.rglob("*.jpg"))
    size_mb = total / 3.5 / 10**6  # -> ceil(3.5) = 4 shards
    report = quiet_pack(image_tree, tmp_path / "out", shard_size_mb=size_mb)
    assert report.shards == 4
    assert [s.records for s in open_dataset(tmp_path / "out").manifest.shards] == [2, 2, 2, 3]


def test_output_identical_for_any_worker_count(image_tree, tmp_path, make_jpeg):
    reasons = add_bad_files(image_tree, make_jpeg(seed=99))
    rgba = io.BytesIO()
    Image.new("RGBA", (20, 10), (200, 10, 10, 128)).save(rgba, "PNG")
    (image_tree / "c_cat" / "alpha.png").write_bytes(rgba.getvalue())
    outs = {}
    for w in (1, 4):
        report = pack(image_tree, tmp_path / f"w{w}", workers=w, shard_size_mb=0.005, progress=False)
        outs[w] = (report, open_dataset(tmp_path / f"w{w}"))
    (r1, ds1), (r4, ds4) = outs[1], outs[4]
    assert r1.shards == r4.shards >= 3  # shard count never depends on workers
    index_files = [p.name for p in (tmp_path / "w1").iterdir() if not p.name.endswith(".lmdb")]
    assert len(index_files) == 12   # manifest, skipped.tsv, 9 columns, sources.bin
    for name in index_files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w4" / name).read_bytes(), name
    assert len(ds1) == len(ds4) == 10
    assert all(ds1.read(i) == ds4.read(i) for i in range(len(ds1)))
    assert "workers" not in ds1.manifest.pack_params
    assert dict(r4.skipped).keys() == reasons.keys()


# ------------------------------------------------------------------ bad input


def test_bad_files_listed_in_skipped_tsv(image_tree, tmp_path, make_jpeg):
    reasons = add_bad_files(image_tree, make_jpeg(seed=99, size=(200, 150)))
    report = quiet_pack(image_tree, tmp_path / "out")
    assert report.num_records == 9 and report.num_skipped == 4
    assert "(4 skipped)" in report.summary()
    assert [rel for rel, _ in report.skipped] == sorted(reasons)
    for rel, reason in report.skipped:
        assert reason.startswith(reasons[rel]), (rel, reason)
    lines = (tmp_path / "out" / "skipped.tsv").read_text().splitlines()
    assert lines[0] == "source\treason"
    assert [tuple(line.split("\t")) for line in lines[1:]] == list(report.skipped)
    assert open_dataset(tmp_path / "out").manifest.skipped == 4


def test_strict_fails_on_first_bad_file_and_leaves_nothing(image_tree, tmp_path, make_jpeg):
    add_bad_files(image_tree, make_jpeg(seed=99))
    with pytest.raises(PackError) as e:
        quiet_pack(image_tree, tmp_path / "out", strict=True)
    msg = str(e.value)
    assert str(image_tree / "b_dog" / "corrupt.jpg") in msg and "corrupt or truncated JPEG" in msg
    assert "strict=True stops at the first bad file" in msg and e.value.param == "strict"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no DST, no partial folder


def test_all_files_bad(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(PackError, match=r"no usable images in .*: all 1 files are bad \(first: a/x.jpg: not an image"):
        quiet_pack(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.partial-*"))


@pytest.mark.parametrize("kw, message", [
    ({"shards": 0}, "shards must be an integer from 1 to 100,000 (got 0)"),
    ({"workers": 0}, "workers must be an integer from 1 to 1024 (got 0)"),
    ({"quality": 0}, "quality must be an integer from 1 to 100 (got 0)"),
    ({"quality": 101}, "quality must be an integer from 1 to 100 (got 101)"),
    ({"max_side": 15}, "max_side must be an integer from 16 to 65,500 pixels (got 15)"),
    ({"shard_size_mb": 0}, "shard_size_mb must be a number of MB from 1e-06 (one byte) to 1,048,576 (got 0)"),
])
def test_invalid_options(image_tree, tmp_path, kw, message):
    with pytest.raises(ArgumentError) as e:     # library messages name the parameter (param=), not a flag
        quiet_pack(image_tree, tmp_path / "out", **kw)
    assert str(e.value) == message and e.value.param == next(iter(kw))
    assert not (tmp_path / "out").exists()


def test_dst_exists_needs_overwrite(image_tree, tmp_path):
    quiet_pack(image_tree, tmp_path / "out")
    with pytest.raises(PackError, match=r"out exists; pass `overwrite` to replace it"):
        quiet_pack(image_tree, tmp_path / "out")
    (image_tree / "a_bird" / "img_0.jpg").unlink()
    assert quiet_pack(image_tree, tmp_path / "out", overwrite=True).num_records == 8
    assert len(open_dataset(tmp_path / "out")) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # old copy deleted


def test_overwrite_refuses_to_delete_non_dataset(image_tree, tmp_path):
    precious = tmp_path / "out" / "thesis.tex"
    precious.parent.mkdir()
    precious.write_text("years of work")
    with pytest.raises(PackError, match="is not a packed dataset"):
        quiet_pack(image_tree, tmp_path / "out", overwrite=True)
    assert precious.read_text() == "years of work"


def test_dst_inside_src_refused(image_tree):
    with pytest.raises(PackError, match="is inside SRC"):
        quiet_pack(image_tree, image_tree / "packed")


def test_dst_parent_not_creatable(image_tree, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(PackError, match=r"cannot create .*afile.*choose a DST in a writable folder"):
        quiet_pack(image_tree, tmp_path / "afile" / "out")


def test_stale_partial_folders_of_dead_packs_are_removed(image_tree, tmp_path):
    # A pack that died after making its partial folder (marked as ours: name and marker file).
    made = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                           "from loader.convert.destination import make_partial; "
                           "p = make_partial(Path(sys.argv[1])); (p / 'shard-00000.lmdb').write_bytes(b'half'); "
                           "print(p)", str(tmp_path / "out")],
                          capture_output=True, text=True, check=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO))).stdout.strip()
    stale = Path(made)
    assert stale.name.startswith("out.partial-") and list(stale.glob(".loader-pack-temp-partial-*"))
    quiet_pack(image_tree, tmp_path / "out")
    assert not stale.exists()


# ------------------------------------------------------------------ atomicity (SIGKILL)


@pytest.fixture(scope="module")
def big_src(tmp_path_factory):
    """400 copies of a 640x480 photo-like JPEG: a few seconds of packing with 1 worker."""
    src = tmp_path_factory.mktemp("big") / "src"
    buf = io.BytesIO()
    photo_like_image(1, size=(640, 480)).save(buf, "JPEG", quality=95)
    for i in range(400):
        d = src / f"class_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:04d}.jpg").write_bytes(buf.getvalue())
    return src


def kill_pack_midway(src: Path, dst: Path, *extra: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "loader", "pack", str(src), str(dst),
                             "--workers", "1", "--quiet", *extra],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (found := list(dst.parent.glob(f"{dst.name}.partial-{proc.pid}-*/shard-00000.lmdb"))):
        assert proc.poll() is None, "pack ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    partial = found[0].parent
    time.sleep(0.1)  # into the shard, far from done
    assert proc.poll() is None, "pack finished before it could be killed; use a bigger dataset"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists()  # it was killed mid-way, with work in progress


def test_sigkill_leaves_no_dst(big_src, tmp_path):
    dst = tmp_path / "out"
    kill_pack_midway(big_src, dst)
    assert not dst.exists()


def test_sigkill_during_overwrite_keeps_previous_dataset(big_src, image_tree, tmp_path):
    dst = tmp_path / "out"
    quiet_pack(image_tree, dst)
    before = (dst / "manifest.json").read_bytes()
    kill_pack_midway(big_src, dst, "--overwrite")
    ds = open_dataset(dst)
    assert len(ds) == 9 and (dst / "manifest.json").read_bytes() == before
    assert json.loads(before)["num_records"] == 9


def test_workers_start_clean_when_torch_is_loaded(image_tree, tmp_path, monkeypatch):
    # Forking a process that has torch/DALI loaded is unsafe: pack must then
    # start fresh workers (forkserver) and still give the same output.
    import types

    from loader.convert.packing import _pool_context

    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    assert _pool_context().get_start_method() in ("forkserver", "spawn")
    quiet_pack(image_tree, tmp_path / "clean", workers=2)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "nvidia.dali", raising=False)   # loaded by other tests
    assert _pool_context().get_start_method() == "fork"
    quiet_pack(image_tree, tmp_path / "forked", workers=2)
    assert (tmp_path / "clean" / "manifest.json").read_bytes() == (tmp_path / "forked" / "manifest.json").read_bytes()


def test_read_only_parent(image_tree, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: permissions are not enforced (see test_dst_parent_not_creatable)")
        with pytest.raises(PackError, match="choose a DST in a writable folder"):
            quiet_pack(image_tree, parent / "out")
    finally:
        parent.chmod(0o700)


def test_file_changed_after_check_is_checked_again(tmp_path, make_jpeg):
    # Kept files are re-read by the parent: if one changed since the worker
    # checked it, only bytes checked again are stored.
    from loader.convert.packing import _BAD, _DATA, _KEEP, _load_kept, _process

    p = tmp_path / "a.jpg"
    p.write_bytes(make_jpeg(seed=1, size=(64, 48)))
    checked = _process(str(p), None, 95, False)
    assert checked[0] == _KEEP and checked[1:3] == (48, 64)
    assert _load_kept(str(p), checked, None, 95, False) == (_DATA, p.read_bytes(), 48, 64, None, checked[3], None)
    new = make_jpeg(seed=2, size=(30, 20))
    p.write_bytes(new)
    assert _load_kept(str(p), checked, None, 95, False) == (_DATA, new, 20, 30, None, int(record_checksum(new), 16),
                                                            None)
    p.write_bytes(b"")
    assert _load_kept(str(p), checked, None, 95, False) == (_BAD, "empty file (0 bytes)")


def _jpeg_of_size(base: bytes, size: int) -> bytes:
    """``base`` (a JPEG) grown to exactly ``size`` bytes with comment (COM) segments after SOI."""
    pad = size - len(base)
    segments = []
    while pad > 0:
        body = min(pad - 4, 65533) if pad > 4 else 0
        body = max(body, 0)
        segments.append(b"\xff\xfe" + (body + 2).to_bytes(2, "big") + b"c" * body)
        pad -= 4 + body
    out = base[:2] + b"".join(segments) + base[2:]
    assert len(out) == size, (len(out), size)
    return out


@pytest.mark.parametrize("size", [1024, 2_700, 4_097, 32_769, 40_000, 65_537, 200_000])
def test_storage_within_15_percent_of_the_images_for_any_record_size(tmp_path, make_jpeg, size):
    """LMDB gives a value over ~2 KB whole 4 KB pages; blocks of small records keep the shard
    within 1.15x of the image bytes at every size >= 1 KB (worst case: one ~32 KB record per block)."""
    base = make_jpeg(seed=3, size=(16, 16), quality=50)
    n = max(40, 2_000_000 // size)
    for i in range(n):
        write(tmp_path / "src" / "c" / f"{i:05d}.jpg", _jpeg_of_size(base[:2] + bytes([0xFF, 0xFE, 0, 4]) +
                                                                     i.to_bytes(2, "big") + base[2:], size))
    report = pack(tmp_path / "src", tmp_path / "dst", workers=1, progress=False)
    assert report.num_records == n and report.num_skipped == 0
    ds = open_dataset(tmp_path / "dst")
    assert all(len(ds.read(i)) == size for i in (0, n // 2, n - 1))
    shard_bytes = (tmp_path / "dst" / "shard-00000.lmdb").stat().st_size
    assert ds.manifest.shards[0].bytes == n * size
    assert shard_bytes / (n * size) <= 1.15, shard_bytes / (n * size)


def test_verify_catches_one_flipped_byte_in_a_small_or_a_large_record(tmp_path, make_jpeg):
    from loader.check.verify import verify

    base = make_jpeg(seed=5, size=(16, 16), quality=50)
    sizes = [1_500, 90_000, 1_500, 3_000, 90_000, 2_000]      # blocks and records of their own
    for i, size in enumerate(sizes):
        write(tmp_path / "src" / "c" / f"{i}.jpg",
              _jpeg_of_size(base[:2] + bytes([0xFF, 0xFE, 0, 3, i]) + base[2:], size))
    pack(tmp_path / "src", tmp_path / "dst", workers=1, progress=False)
    ds = open_dataset(tmp_path / "dst")
    assert [ds.locate(i)[1] for i in range(6)] == [0, 1, 2, 2, 3, 4]   # 2 and 3 share a block
    records = [ds.read(i) for i in range(6)]
    ds.close()
    shard = tmp_path / "dst" / "shard-00000.lmdb"
    for victim in (3, 4):                          # a small record in a block, a large one alone
        blob = bytearray(shard.read_bytes())
        at = blob.find(records[victim])              # each record's first bytes are its own
        assert at > 0 and blob.find(records[victim], at + 1) == -1
        blob[at + len(records[victim]) // 2] ^= 0x01
        shard.write_bytes(bytes(blob))
        bad = [b[0] for b in verify(tmp_path / "dst", decode=False, progress=False)]
        assert bad == ([3] if victim == 3 else [3, 4])
