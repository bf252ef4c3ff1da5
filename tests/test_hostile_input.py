"""Hostile input at pack time (issue 21): one line, never a traceback or a hang; suspect JPEGs
caught at pack and verify time; absurd options refused naming the parameter; user model code
that exits; a full disk. Whatever could hang or take all memory on the code before the fix runs
in a child process, with a timeout and a memory limit."""

import errno
import io
import json
import os
import re
import resource
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import pytest
from PIL import Image

from loader import open_dataset, pack
from loader.advisor.modelspec import ModelSpecError, build_model, load_factory
from loader.convert import destination, imagecheck, packing
from loader.convert.imagecheck import MAX_FILE_BYTES, BadImage, check_bytes, suspect_reason
from loader.errors import ArgumentError, PackError
from loader.format import imageheader, recordguard
from loader.format.shards import ShardWriter
from loader.synthetic import photo_like_image
from tests.conftest import jpeg_bytes, run_cli, write

REPO = Path(__file__).resolve().parent.parent
CHILD_MEMORY = 2 * 2**30      # address space of a child: a read of the whole input fails fast


def quiet_pack(src, dst, **kw):
    return pack(src, dst, progress=False, workers=1, **kw)


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -c code`` with at most CHILD_MEMORY of address space, killed after ``timeout``."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))

    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env, preexec_fn=limit, check=False)


def pack_in_child(src: Path, dst: Path, **kw) -> subprocess.CompletedProcess:
    """Pack in a child; it prints ``OK <records> <skipped>`` or ``ERR <class>: <message>``."""
    return run_child(f"""
        from loader import pack
        from loader.errors import LoaderError
        try:
            r = pack({str(src)!r}, {str(dst)!r}, progress=False, workers=1, **{kw!r})
            print("OK", r.num_records, r.num_skipped)
        except LoaderError as e:
            print(f"ERR {{type(e).__name__}}: {{e}}")
        """)


def skipped_rows(dst: Path, name: str = "skipped.tsv") -> dict[str, str]:
    lines = (dst / name).read_text().splitlines()
    assert lines[0] == "source\treason"
    return dict(line.split("\t") for line in lines[1:])


@pytest.fixture
def src(tmp_path) -> Path:
    """SRC: one class of three photos."""
    root = tmp_path / "src"
    for i in range(3):
        write(root / "cat" / f"{i}.jpg", jpeg_bytes(seed=i))
    return root


# ------------------------------------------------------------------ item 7: labels files


def labels_error(src: Path, labels: Path, **kw) -> str:
    with pytest.raises(PackError) as e:
        quiet_pack(src, src.parent / "out", labels=labels, **kw)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg[:1000]
    assert not (src.parent / "out").exists()
    return msg


def test_deeply_nested_jsonl_label_is_one_file_line_error(src, tmp_path):
    labels = tmp_path / "l.jsonl"
    labels.write_text('{"path": "cat/0.jpg", "label": "cat"}\n'
                      '{"path": "cat/1.jpg", "label": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert labels_error(src, labels) == (f"{labels}:2: JSON nested too deeply to read; write one flat object per "
                                         f'line, e.g. {{"path": "cat/1.jpg", "label": "cat"}}')


def test_5000_digit_integer_label_is_one_file_line_error(src, tmp_path):
    labels = tmp_path / "l.jsonl"
    labels.write_text('{"path": "cat/0.jpg", "label": ' + "7" * 5000 + "}\n")
    assert labels_error(src, labels).startswith(f"{labels}:1: bad JSON (Exceeds the limit (4300 digits) for "
                                                f"integer string conversion")
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\ncat/0.jpg," + "7" * 5000 + "\n")
    assert labels_error(src, csv) == (f"{csv}:2: class index 77777777777777777777... (5,000 digits) is too "
                                      f"large; fix the label")


def test_labels_file_that_is_a_fifo_or_dev_zero_is_refused_at_once(src, tmp_path):
    fifo = tmp_path / "l.csv"
    os.mkfifo(fifo)
    zero = tmp_path / "z.jsonl"
    zero.symlink_to("/dev/zero")
    for labels, what in ((fifo, "a FIFO (named pipe)"), (zero, "a device")):
        # Before the fix: open() of the FIFO blocked forever; /dev/zero was read until memory ran out.
        r = pack_in_child(src, tmp_path / "out", labels=str(labels))
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout == (f"ERR PackError: labels file {labels} is {what}, not a regular file; pass a "
                            f".csv/.jsonl/.json-lines file\n")


def test_50mb_line_is_refused_without_quoting_it(src, tmp_path):
    labels = tmp_path / "l.jsonl"
    labels.write_text('{"path": "/' + "a" * 50_000_000 + '", "label": "cat"}\n')
    assert labels_error(src, labels) == (f"{labels}:1: line is longer than 1,048,576 bytes (MAX_LINE_BYTES); a "
                                         f"row holds one path and its labels: is this the labels file?")


def test_long_path_is_quoted_cut_with_its_length(src, tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_text("path,label\n/" + "a" * 100_000 + ",cat\n")    # under csv's field limit
    msg = labels_error(src, labels)
    assert msg.startswith(f"{labels}:2: path '/aaaa") and "... (100,003 characters) is absolute" in msg


# ------------------------------------------------------------------ item 7: huge files in SRC


def test_sparse_file_over_the_cap_is_skipped_unread(src, tmp_path):
    big = src / "cat" / "huge.jpg"
    with open(big, "wb") as f:           # sparse: no disk used
        f.truncate(3 * 10**9)
    # Before the fix the child read all 3 GB (MemoryError under its memory limit, no file named).
    r = pack_in_child(src, tmp_path / "out")
    assert r.returncode == 0 and r.stdout == "OK 3 1\n", (r.stdout, r.stderr[-2000:])
    assert skipped_rows(tmp_path / "out") == {
        "cat/huge.jpg": f"file is 3,000,000,000 bytes, over the per-file cap of {MAX_FILE_BYTES:,} (MAX_FILE_BYTES); "
                        f"shrink or split it, or leave it out of SRC"}
    ds = open_dataset(tmp_path / "out")
    assert [ds.read(i) for i in range(3)] == [(src / "cat" / f"{i}.jpg").read_bytes() for i in range(3)]


def test_file_turned_fifo_after_the_scan_is_bad_not_a_hang(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    r = run_child(f"""
        from loader.convert.packing import _process
        print(_process({str(fifo)!r}, None, 95, False))
        """, timeout=60)
    assert (r.returncode, r.stdout) == (0, "(2, 'not a regular file (a FIFO, device or socket); leave it out "
                                           "of SRC')\n"), r.stderr[-2000:]


def test_file_cap_holds_when_the_size_lies(monkeypatch):
    monkeypatch.setattr(imagecheck, "MAX_FILE_BYTES", 10)
    with pytest.raises(BadImage, match="file is 11 bytes, over the per-file cap of 10"):
        imagecheck.read_capped(io.BytesIO(bytes(100)), 0)     # a file that says 0 bytes (as /proc does)
    assert imagecheck.read_capped(io.BytesIO(bytes(10)), 10) == bytes(10)


# ------------------------------------------------------------------ item 9: suspect JPEGs


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def cut_with_eoi(seed: int = 1, **kw) -> bytes:
    """A photo whose scan is cut after a third, with an end-of-image marker appended."""
    good = jpeg(photo_like_image(seed, size=(500, 400)), quality=90, **kw)
    return good[:len(good) // 3] + b"\xff\xd9"


def claims_9000x9000() -> bytes:
    """A 1.7 KB JPEG whose start-of-frame header claims 9000x9000 pixels."""
    data = jpeg(photo_like_image(2, size=(48, 40)), quality=90)
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + struct.pack(">HH", 9000, 9000) + data[i + 9:]


CUT_REASON = ("suspect JPEG: its data stops early (premature end of data) and the bottom {}% decodes as flat "
              "grey; re-export or re-download it")
CLAIM_REASON = ("suspect JPEG: its header claims 9000x9000 pixels (height x width) but the file has only {:,} "
                "bytes, fewer than the 39,480 that many pixels need at least: its image data is missing")


@pytest.fixture
def suspect_src(src) -> Path:
    write(src / "cat" / "cut.jpg", cut_with_eoi())
    write(src / "cat" / "claim.jpg", claims_9000x9000())
    return src


def test_suspect_jpegs_are_skipped_with_the_reason_and_good_photos_stored_byte_for_byte(suspect_src, tmp_path):
    claim = (suspect_src / "cat" / "claim.jpg").read_bytes()
    assert 1000 < len(claim) < 2000
    report = quiet_pack(suspect_src, tmp_path / "out")
    assert (report.num_records, report.num_skipped, report.suspect) == (3, 2, ())
    assert skipped_rows(tmp_path / "out") == {"cat/claim.jpg": CLAIM_REASON.format(len(claim)),
                                              "cat/cut.jpg": CUT_REASON.format(64)}
    ds = open_dataset(tmp_path / "out")
    assert [ds.source(i) for i in range(3)] == ["cat/0.jpg", "cat/1.jpg", "cat/2.jpg"]
    assert all(ds.read(i) == (suspect_src / ds.source(i)).read_bytes() for i in range(3))
    assert not (tmp_path / "out" / packing.SUSPECT_NAME).exists()
    with pytest.raises(PackError, match=r"bad image .*claim\.jpg: suspect JPEG: its header claims 9000x9000"):
        quiet_pack(suspect_src, tmp_path / "strict", strict=True)


def test_keep_suspect_stores_and_lists_them_and_verify_reports_them(suspect_src, tmp_path):
    report = quiet_pack(suspect_src, tmp_path / "out", keep_suspect=True)
    claim = (suspect_src / "cat" / "claim.jpg").read_bytes()
    expected = {"cat/claim.jpg": CLAIM_REASON.format(len(claim)), "cat/cut.jpg": CUT_REASON.format(64)}
    assert (report.num_records, report.num_skipped) == (5, 0) and dict(report.suspect) == expected
    assert skipped_rows(tmp_path / "out", packing.SUSPECT_NAME) == expected
    assert "5 images (0 skipped, 2 suspect kept)" in report.summary()
    ds = open_dataset(tmp_path / "out")
    assert all(ds.read(i) == (suspect_src / ds.source(i)).read_bytes() for i in range(5))
    # verify decodes with DALI, which gets damaged data: in a child process.
    r = run_cli("verify", str(tmp_path / "out"), "--quiet", timeout=300)
    assert r.returncode == 1, (r.stdout, r.stderr[-2000:])
    lines = r.stdout.splitlines()
    by_source = {ds.source(i): i for i in range(5)}
    assert sorted(lines[:-1]) == sorted(
        f"record {by_source[src]} (shard-00000.lmdb key {ds.locate(by_source[src])[1]:010d}, source {src}): {why}"
        for src, why in expected.items())
    assert lines[-1] == f"verified 5 records in {tmp_path / 'out'}: 2 bad"


@pytest.mark.parametrize("kw", [{}, {"max_side": 128}, {"subsampling": 0}, {"gray": True}, {"restart": True}])
def test_cut_jpegs_are_suspect_at_every_scale_and_kind(kw):
    im = photo_like_image(5, size=(500, 400))
    enc = {}
    if kw.get("gray"):
        im = im.convert("L")
    if kw.get("restart"):
        enc["restart_marker_blocks"] = 4
    if "subsampling" in kw:
        enc["subsampling"] = kw["subsampling"]
    good = jpeg(im, quality=90, **enc)
    cut = good[:len(good) // 2] + b"\xff\xd9"
    max_side = kw.get("max_side")
    assert check_bytes(good, max_side=max_side).suspect is None
    with pytest.raises(BadImage, match=r"^suspect JPEG: its data stops early"):
        check_bytes(cut, max_side=max_side)
    kept = check_bytes(cut, max_side=max_side, keep_suspect=True)
    assert kept.suspect.startswith("suspect JPEG: its data stops early") and kept.data == (
        cut if max_side is None else kept.data)
    assert suspect_reason(cut) == kept.suspect and suspect_reason(good) is None


def test_grey_but_whole_jpegs_are_not_suspect():
    """Flat grey 128 at the bottom-right is what a cut scan decodes as; a whole image can be that too."""
    grey = jpeg(Image.new("RGB", (64, 48), (128, 128, 128)))
    bottom = photo_like_image(3, size=(160, 120))
    bottom.paste((128, 128, 128), (0, 80, 160, 120))
    for data in (grey, jpeg(bottom, quality=90), jpeg(bottom.convert("L"), quality=90)):
        c = check_bytes(data)
        assert c.suspect is None and c.converted is None and c.data == data
        assert suspect_reason(data) is None
    # A progressive file cut short keeps a whole (blurry) image: not suspect, as before.
    prog = jpeg(photo_like_image(4, size=(160, 120)), quality=90, progressive=True)
    assert suspect_reason(prog[:len(prog) // 2] + b"\xff\xd9") is None


def test_header_parsing_has_one_home():
    assert recordguard.header_size is imageheader.header_size
    assert imagecheck.jpeg_frame_marker is imageheader.jpeg_frame_marker
    assert imagecheck.PNG_SIGNATURE is imageheader.PNG_SIGNATURE
    assert not hasattr(imagecheck, "_PNG_SIGNATURE") and not hasattr(recordguard, "_PNG_SIGNATURE")
    data = claims_9000x9000()
    assert imageheader.header_size(data) == (9000, 9000) and imageheader.jpeg_frame_marker(data) == 0xC0


# ------------------------------------------------------------------ item 10: options, user model code


@pytest.mark.parametrize("kw, param", [
    ({"shard_size_mb": float("inf")}, "shard_size_mb"),
    ({"shard_size_mb": float("nan")}, "shard_size_mb"),
    ({"shard_size_mb": 10**12}, "shard_size_mb"),
    ({"shard_size_mb": 1e-300}, "shard_size_mb"),
    ({"shard_size_mb": True}, "shard_size_mb"),
    ({"shard_size_mb": "512"}, "shard_size_mb"),
    ({"shards": 10**9}, "shards"),
    ({"shards": 2.0}, "shards"),
    ({"workers": 10**6}, "workers"),
    ({"max_side": 10**9}, "max_side"),
    ({"quality": True}, "quality"),
    ({"overwrite": "yes"}, "overwrite"),
    ({"strict": 1}, "strict"),
    ({"progress": None}, "progress"),
    ({"keep_suspect": "no"}, "keep_suspect"),
    ({"unlabeled": 1}, "unlabeled"),
    ({"unlabeled": True, "labels": "l.csv"}, "unlabeled"),
    ({"classes": ["a"], "classes_from": "x"}, "classes"),
    ({"classes": "a,b"}, "classes"),
    ({"labels": 3}, "labels"),
    ({"classes_from": 3}, "classes_from"),
])
def test_bad_options_are_refused_naming_the_parameter_not_a_flag(src, tmp_path, kw, param):
    with pytest.raises(ArgumentError) as e:
        pack(src, tmp_path / "out", **{"progress": False, **kw})
    msg = str(e.value)
    assert e.value.param == param and msg.startswith(param + " ") and "--" not in msg, msg
    assert not (tmp_path / "out").exists()


def test_inf_shard_size_never_reaches_the_manifest(src, tmp_path):
    with pytest.raises(ArgumentError, match=r"^shard_size_mb must be a number of MB from 1e-06 \(one byte\) "
                                            r"to 1,048,576 \(got inf\)$"):
        quiet_pack(src, tmp_path / "out", shard_size_mb=float("inf"))
    # The largest allowed size still writes a manifest that strict JSON reads.
    quiet_pack(src, tmp_path / "ok", shard_size_mb=2**20)
    json.loads((tmp_path / "ok" / "manifest.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    # And the index writer itself never writes a non-JSON number (a bug would raise, not write).
    from loader.convert.indexwriter import IndexWriter

    (tmp_path / "w").mkdir()
    w = IndexWriter(tmp_path / "w", capacity=0)
    with pytest.raises(ValueError, match="not JSON compliant"):
        w.finish(classes=[], shards=[], pack_params={"shard_size_mb": float("inf")}, skipped=0)
    assert not (tmp_path / "w" / "manifest.json").exists()


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    (tmp_path / "exits_at_import.py").write_text("import sys\nprint('bye')\nsys.exit(0)\n")
    (tmp_path / "argparse_at_import.py").write_text(
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--depth', type=int)\n"
        "args = p.parse_args()\ndef model():\n    pass\n")
    (tmp_path / "exits_when_called.py").write_text("import sys\ndef model(num_classes):\n    sys.exit(3)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["loader", "advise", "photos.packed", "--model", "argparse_at_import:model"])
    yield
    for name in ("exits_at_import", "argparse_at_import", "exits_when_called"):
        sys.modules.pop(name, None)


def test_model_module_that_exits_at_import_is_one_line(user_modules, capsys):
    stdout, stderr = sys.stdout, sys.stderr
    with pytest.raises(ModelSpecError) as e:
        load_factory("exits_at_import:model")
    assert str(e.value) == ("--model exits_at_import:model: importing 'exits_at_import' called sys.exit(0); its "
                            "last output: 'bye'; put the module's script code under `if __name__ == '__main__':`")
    with pytest.raises(ModelSpecError) as e:
        load_factory("argparse_at_import:model")
    assert str(e.value).startswith("--model argparse_at_import:model: importing 'argparse_at_import' called "
                                   "sys.exit(2); its last output: '")
    assert str(e.value).endswith("its last output: 'loader: error: unrecognized arguments: advise photos.packed "
                                 "--model argparse_at_import:model'; put the module's script code under "
                                 "`if __name__ == '__main__':`")
    assert capsys.readouterr() == ("", "")      # argparse's usage for `loader` is not printed
    assert (sys.stdout, sys.stderr) == (stdout, stderr)


def test_model_factory_that_exits_when_called_is_one_line(user_modules):
    factory = load_factory("exits_when_called:model")
    with pytest.raises(ModelSpecError, match=r"^--model m:f: calling it called sys\.exit\(3\); a model factory "
                                             r"must return a torch\.nn\.Module$"):
        build_model(factory, 10, spec="m:f")


# ------------------------------------------------------------------ item 11: a full disk


@pytest.mark.parametrize("error, what", [
    (lmdb.Error("mdb_txn_commit: No space left on device"), "the disk is full"),
    (lmdb.Error("mdb_txn_commit: Input/output error"), "an I/O error (often a full disk)"),
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
])
def test_full_disk_names_the_file_system_and_leaves_nothing(src, tmp_path, monkeypatch, error, what):
    def full(self):
        raise error
    monkeypatch.setattr(ShardWriter, "flush", full)
    dst = tmp_path / "out"
    with pytest.raises(PackError) as e:
        quiet_pack(src, dst)
    msg = str(e.value)
    text = getattr(error, "strerror", None) or str(error)
    mount = destination.mount_point(tmp_path)
    assert msg.startswith(f"writing {dst} failed: {what} ({text}); the file system at {mount} has ")
    assert msg.endswith(" MB free; free some space or pass a DST on another disk (nothing was left at DST)")
    assert "\n" not in msg and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs (needs root and permission to mount; skipped otherwise)."""
    where = tmp_path / "tiny"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True,
                       check=False) if os.geteuid() == 0 else None
    if r is None or r.returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or not permitted)")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_really_full_disk_names_it_and_leaves_nothing(tmp_path, tiny_disk):
    from loader.synthetic import make_dataset

    make_dataset(tmp_path / "photos", classes=2, per_class=40, seed=0, workers=1)    # ~4 MB
    dst = tiny_disk / "out"
    with pytest.raises(PackError) as e:
        quiet_pack(tmp_path / "photos", dst)
    msg = str(e.value)
    assert msg.startswith(f"writing {dst} failed: the disk is full (") and "\n" not in msg, msg
    assert re.search(rf"; the file system at {re.escape(str(tiny_disk))} has 0\.[0-9] MB free; free some space ", msg)
    assert os.listdir(tiny_disk) == []
