"""Label sources at pack time: --labels (CSV / JSON Lines, multi-label), --unlabeled, --classes,
--classes-from; the version 4 index that records them, and its hostile-input checks."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from loader import cli, open_dataset, pack
from loader.convert.labelfile import read_label_file
from loader.errors import ArgumentError, DatasetError, PackError
from loader.format.manifest import LABEL_COLUMNS, read_manifest
from tests.conftest import jpeg_bytes, run_cli, write

# Files of the flat SRC, by seed: nested folders, a file directly in SRC, one hidden file.
FILES = ["a/0.jpg", "a/1.jpg", "a/2.jpg", "b/x/3.jpg", "b/4.jpg", "5.jpg", "c d/6.jpg"]


def quiet_pack(src, dst, **kw):
    kw.setdefault("workers", 1)
    return pack(src, dst, progress=False, **kw)


@pytest.fixture
def flat_src(tmp_path) -> Path:
    """SRC with no class layout to speak of: the labels come from a file."""
    src = tmp_path / "src"
    for seed, rel in enumerate(FILES):
        write(src / rel, jpeg_bytes(seed=seed))
    write(src / ".hidden.jpg", jpeg_bytes(seed=99))      # ignored: not counted, not packed
    write(src / "a" / ".DS_Store", b"junk")
    return src


def write_labels(path: Path, rows, fmt: str) -> Path:
    """``rows``: (path, label) with label a str, int or list; CSV lists are joined with '|'."""
    if fmt == "csv":
        def field(v):
            return "|".join(map(str, v)) if isinstance(v, list) else str(v)
        text = "path,label\n" + "".join(f"{p},{field(label)}\n" for p, label in rows)
    else:
        text = "".join(json.dumps({"path": p, "label": label}) + "\n" for p, label in rows)
    path.write_text(text)
    return path


def packed_files(dst: Path) -> list[str]:
    return sorted(p.name for p in dst.iterdir())


# ------------------------------------------------------------------ single-label round trips


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json-lines"])
@pytest.mark.parametrize("kind", ["names", "ints"])
def test_labels_file_round_trips_exact_labels_in_row_order(flat_src, tmp_path, fmt, kind):
    rows = [("b/4.jpg", "dog"), ("5.jpg", "cat"), ("a/0.jpg", "emu"), ("c d/6.jpg", "dog"),
            ("b/x/3.jpg", "cat")]
    if kind == "ints":
        rows = [(p, {"dog": 3, "cat": 0, "emu": 1}[c]) for p, c in rows]
    labels = write_labels(tmp_path / f"labels.{fmt}", rows, "csv" if fmt == "csv" else "jsonl")
    report = quiet_pack(flat_src, tmp_path / "out", labels=labels)
    ds = open_dataset(tmp_path / "out")
    if kind == "names":
        expected_classes = ("cat", "dog", "emu")       # sorted unique names
        expected = [expected_classes.index(c) for _, c in rows]
    else:
        expected_classes = ("0", "1", "2", "3")        # 0..max; "2" has no image
        expected = [c for _, c in rows]
    assert ds.classes == report.classes == expected_classes
    assert ds.labels.dtype == np.int32 and ds.labels.tolist() == expected
    assert [ds.source(i) for i in range(len(ds))] == [p for p, _ in rows]     # the file's row order
    assert all(ds.read(i) == (flat_src / p).read_bytes() for i, (p, _) in enumerate(rows))
    assert (ds.label_source, ds.multi_label, ds.label_offsets, ds.label_values) == ("file", False, None, None)
    # 7 files under SRC (hidden ones not counted), 5 listed: 2 unlisted, not packed.
    assert report.num_unlisted == 2 and ds.manifest.unlisted == 2
    assert "(0 skipped, 2 unlisted)" in report.summary()
    assert not (tmp_path / "out" / LABEL_COLUMNS["label_offsets"][0]).exists()
    onehot = ds.multi_hot(np.arange(len(ds)))
    assert onehot.dtype == np.float32 and onehot.shape == (5, len(expected_classes))
    assert np.array_equal(onehot.argmax(1), expected) and onehot.sum() == 5


def test_csv_details_quotes_whitespace_dot_paths_blank_lines(flat_src, tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_bytes("\ufeffpath,label\r\n\"c d/6.jpg\", dog \r\n\r\n./a//1.jpg,cat\r\n".encode())
    report = quiet_pack(flat_src, tmp_path / "out", labels=labels)
    ds = open_dataset(tmp_path / "out")
    assert ds.classes == ("cat", "dog") and ds.labels.tolist() == [1, 0]
    assert [ds.source(0), ds.source(1)] == ["c d/6.jpg", "a/1.jpg"]       # stored canonical
    assert report.num_unlisted == 5


def test_labels_file_inside_src_is_not_counted_unlisted(flat_src, tmp_path):
    labels = write_labels(flat_src / "labels.csv", [("a/0.jpg", "cat"), ("5.jpg", "dog")], "csv")
    assert quiet_pack(flat_src, tmp_path / "out", labels=labels).num_unlisted == 5
    extra = write(flat_src / "notes.csv", b"x")      # another file is counted
    assert quiet_pack(flat_src, tmp_path / "out", labels=labels, overwrite=True).num_unlisted == 6
    extra.unlink()


def test_classes_pin_order_and_index_for_a_labels_file(flat_src, tmp_path):
    labels = write_labels(tmp_path / "l.jsonl", [("a/0.jpg", "zebra"), ("a/1.jpg", 0), ("5.jpg", "ant")],
                          "jsonl")
    quiet_pack(flat_src, tmp_path / "out", labels=labels, classes=["zebra", "ant", "unused"])
    ds = open_dataset(tmp_path / "out")
    assert ds.classes == ("zebra", "ant", "unused") and ds.labels.tolist() == [0, 0, 1]
    info = cli.dataset_info(str(tmp_path / "out"))
    assert [(c["name"], c["count"]) for c in info["classes"]] == [("zebra", 2), ("ant", 1), ("unused", 0)]


def test_bad_images_are_skipped_and_records_keep_row_order(flat_src, tmp_path):
    (flat_src / "a" / "1.jpg").write_bytes(b"not a jpeg")
    rows = [("5.jpg", ["cat"]), ("a/1.jpg", ["dog"]), ("a/0.jpg", ["dog", "cat"]), ("b/4.jpg", [])]
    labels = write_labels(tmp_path / "l.jsonl", rows, "jsonl")
    report = quiet_pack(flat_src, tmp_path / "out", labels=labels)
    assert report.num_records == 3 and [rel for rel, _ in report.skipped] == ["a/1.jpg"]
    assert (tmp_path / "out" / "skipped.tsv").read_text().splitlines()[1].startswith("a/1.jpg\t")
    ds = open_dataset(tmp_path / "out")
    assert [ds.source(i) for i in range(3)] == ["5.jpg", "a/0.jpg", "b/4.jpg"]
    assert ds.label_offsets.tolist() == [0, 1, 3, 3] and ds.label_values.tolist() == [0, 0, 1]
    assert ds.multi_hot(np.arange(3)).tolist() == [[1, 0], [1, 1], [0, 0]]


# ------------------------------------------------------------------ multi-label


MULTI_ROWS = [("a/0.jpg", ["dog", "cat"]), ("a/1.jpg", "emu"), ("b/4.jpg", []), ("5.jpg", ["emu", "emu"]),
              ("b/x/3.jpg", ["cat", "dog", "emu"]), ("c d/6.jpg", ["dog"])]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_multi_label_multi_hot_matches_the_file(flat_src, tmp_path, fmt):
    rows = MULTI_ROWS if fmt == "jsonl" else [r for r in MULTI_ROWS if r[1] != []]   # CSV has no []
    labels = write_labels(tmp_path / f"l.{fmt}", rows, fmt)
    report = quiet_pack(flat_src, tmp_path / "out", labels=labels)
    ds = open_dataset(tmp_path / "out")
    classes = ("cat", "dog", "emu")
    assert ds.classes == classes and ds.multi_label and report.multi_label
    assert ds.labels.tolist() == [-1] * len(rows)
    expected = np.zeros((len(rows), 3), np.float32)
    for i, (_, label) in enumerate(rows):
        for name in [label] if isinstance(label, str) else label:
            expected[i, classes.index(name)] = 1
    order = np.array([4, 0, 0, len(rows) - 1, 2])                 # any records, any order, repeats
    got = ds.multi_hot(order)
    assert got.dtype == np.float32 and np.array_equal(got, expected[order])
    assert np.array_equal(ds.multi_hot(np.arange(len(ds))), expected)
    assert ds.multi_hot(np.array([], dtype=np.int64)).shape == (0, 3)
    # The CSR itself: sorted, de-duplicated class indices per record.
    rows_csr = [ds.label_values[ds.label_offsets[i]:ds.label_offsets[i + 1]].tolist() for i in range(len(ds))]
    assert rows_csr == [np.flatnonzero(r).tolist() for r in expected]
    assert ds.label_offsets.dtype == np.int64 and ds.label_values.dtype == np.int32
    with pytest.raises(IndexError, match="record index 99 out of range"):
        ds.multi_hot(np.array([0, 99]))
    info = cli.dataset_info(str(tmp_path / "out"))
    assert info["multi_label"] is True and info["label_source"] == "file"
    assert [c["count"] for c in info["classes"]] == expected.sum(0).astype(int).tolist()   # images having it
    from loader.check.verify import verify

    assert verify(tmp_path / "out", progress=False) == []


def test_multi_label_with_ints_and_a_pinned_empty_class(flat_src, tmp_path):
    labels = write_labels(tmp_path / "l.csv", [("a/0.jpg", [2, 0]), ("a/1.jpg", 2)], "csv")
    quiet_pack(flat_src, tmp_path / "out", labels=labels, classes=["x", "y", "z"])
    ds = open_dataset(tmp_path / "out")
    assert ds.multi_hot(np.arange(2)).tolist() == [[1, 0, 1], [0, 0, 1]]
    rc = cli.main(["info", str(tmp_path / "out")])
    assert rc == 0


def test_multi_label_pack_is_deterministic_across_worker_counts(flat_src, tmp_path):
    labels = write_labels(tmp_path / "l.jsonl", MULTI_ROWS, "jsonl")
    for w in (1, 2):
        quiet_pack(flat_src, tmp_path / f"w{w}", labels=labels, workers=w, shards=2)
    names = [n for n in packed_files(tmp_path / "w1") if not n.endswith(".lmdb")]
    assert "label_offsets.npy" in names and "label_values.npy" in names
    for name in names:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_label_file_parse_memory_stays_compact(tmp_path):
    """100k rows: the parse holds compact arrays (well under 200 bytes a row at its peak), so
    1M rows stay well under ~200 MB."""
    import tracemalloc

    n = 100_000
    path = tmp_path / "big.jsonl"
    path.write_text("".join(f'{{"path": "c{i % 100:03d}/img_{i:08d}.jpg", "label": ["n{i % 100}", '
                            f'"n{i * 7 % 100}"]}}\n' for i in range(n)))
    tracemalloc.start()
    lf = read_label_file(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(lf.items) == n and lf.multi_label and len(lf.classes) == 100
    assert lf.items[12345] == ("c045/img_00012345.jpg", -1)
    row = lf.label_values[lf.label_offsets[12345]:lf.label_offsets[12346]].tolist()
    assert [lf.classes[v] for v in row] == sorted({"n45", f"n{12345 * 7 % 100}"})
    assert peak / n < 160, peak / n


# ------------------------------------------------------------------ malformed labels files

CSV_HEAD = "path,label\n"
BAD_FILES = [
    # (file name, content, pack kwargs, line, message part)
    ("l.csv", "a/0.jpg,cat\n", {}, 1, "expected the header row 'path,label', found 'a/0.jpg,cat'"),
    ("l.csv", "file,class\na/0.jpg,cat\n", {}, 1, "expected the header row 'path,label'"),
    ("l.csv", "", {}, 1, "no header row 'path,label' (the file is empty)"),
    ("l.csv", CSV_HEAD, {}, 1, "lists no images"),
    ("l.csv", CSV_HEAD + "a/0.jpg,cat,extra\n", {}, 2, "3 columns, expected 2 (path,label)"),
    ("l.csv", CSV_HEAD + "a/0.jpg\n", {}, 2, "1 columns, expected 2"),
    ("l.csv", CSV_HEAD + "a/0.jpg,cat\na/1.jpg,\n", {}, 3, "empty label"),
    ("l.csv", CSV_HEAD + "a/0.jpg,cat|\n", {}, 2, "empty label"),
    ("l.csv", CSV_HEAD + "a/0.jpg,-1\n", {}, 2, "negative class index -1"),
    ("l.csv", CSV_HEAD + 'a/0.jpg,"cat\n', {}, 2, "malformed CSV (unexpected end of data)"),
    ("l.csv", CSV_HEAD + "a/0.jpg,cat\na/1.jpg,3\n", {}, 3,
     "class index 3 mixes with the class names used since line 2"),
    ("l.csv", CSV_HEAD + "a/0.jpg,cat\na/nope.jpg,cat\n", {}, 3, "'a/nope.jpg' does not exist in SRC"),
    ("l.csv", CSV_HEAD + "/etc/hostname,cat\n", {}, 2, "path '/etc/hostname' is absolute, outside SRC"),
    ("l.csv", CSV_HEAD + "a/../../x.jpg,cat\n", {}, 2, "goes up with '..', outside SRC"),
    ("l.csv", CSV_HEAD + "a,cat\n", {}, 2, "'a' is a folder, not an image file"),
    ("l.csv", CSV_HEAD + "a/0.jpg,cat\na/1.jpg,dog\n./a/0.jpg,dog\n", {}, 4,
     "'a/0.jpg' is listed twice (first at line 2)"),
    ("l.csv", CSV_HEAD + "a/0.jpg,emu\n", {"classes": ["cat", "dog"]}, 2,
     "class 'emu' is not in the given classes (2 classes)"),
    ("l.csv", CSV_HEAD + "a/0.jpg,2\n", {"classes": ["cat", "dog"]}, 2,
     "class index 2 is outside the given classes (2 classes: 0 to 1)"),
    ("l.jsonl", '{"path": "a/0.jpg", "label": "cat"}\n{"path": "a/1.jpg", "label": }\n', {}, 2, "bad JSON"),
    ("l.jsonl", '{"path": "a/0.jpg"}\n', {}, 1, "missing key 'label'"),
    ("l.jsonl", '{"label": "cat"}\n', {}, 1, "missing key 'path'"),
    ("l.jsonl", '["a/0.jpg", "cat"]\n', {}, 1, "expected a JSON object"),
    ("l.jsonl", '{"path": "a/0.jpg", "label": true}\n', {}, 1, "label true is a boolean, not a class"),
    ("l.jsonl", '{"path": "a/0.jpg", "label": [0, false]}\n', {}, 1, "label false is a boolean"),
    ("l.jsonl", '{"path": "a/0.jpg", "label": 1.5}\n', {}, 1, "label 1.5 has the wrong type"),
    ("l.jsonl", '{"path": "a/0.jpg", "label": null}\n', {}, 1, "label null has the wrong type"),
    ("l.jsonl", '{"path": "a/0.jpg", "label": [["cat"]]}\n', {}, 1, "a list inside a list has the wrong type"),
    ("l.jsonl", '{"path": "a/0.jpg", "label": -2}\n', {}, 1, "negative class index -2"),
    ("l.jsonl", '{"path": "a/0.jpg", "label": " "}\n', {}, 1, "empty label"),
    ("l.jsonl", '{"path": 7, "label": "cat"}\n', {}, 1, "path 7 is not a string"),
    ("l.jsonl", '{"path": "", "label": "cat"}\n', {}, 1, "empty path"),
    ("l.jsonl", '{"path": "a/0.jpg", "label": ["cat", 1]}\n', {}, 1,
     "class index 1 mixes with the class names used since line 1"),
    ("l.jsonl", '{"path": "a/0.jpg", "label": 1000000}\n', {}, 1, "class index 1000000 is too large"),
    ("l.json-lines", '\n{"path": "a/0.jpg", "label": 0}\n{"path": "a/0.jpg", "label": 1}\n', {}, 3,
     "'a/0.jpg' is listed twice (first at line 2)"),
]


@pytest.mark.parametrize("name, content, kw, line, message", BAD_FILES,
                         ids=[f"{i}-{c[4][:30]}" for i, c in enumerate(BAD_FILES)])
def test_malformed_labels_file_is_one_line_error_with_file_and_line(flat_src, tmp_path, name, content,
                                                                      kw, line, message):
    labels = tmp_path / name
    labels.write_text(content)
    with pytest.raises(PackError) as e:
        quiet_pack(flat_src, tmp_path / "out", labels=labels, **kw)
    msg = str(e.value)
    assert msg.startswith(f"{labels}:{line}: "), msg
    assert message in msg and "\n" not in msg, msg
    assert ";" in msg          # ... and what to do about it
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.partial-*"))


def test_not_utf8_and_symlink_out_of_src(flat_src, tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_bytes(b"path,label\na/0.jpg,cat\na/\xff.jpg,cat\n")
    with pytest.raises(PackError, match=r"l\.csv:3: not UTF-8 text"):
        quiet_pack(flat_src, tmp_path / "out", labels=labels)
    outside = write(tmp_path / "elsewhere" / "x.jpg", jpeg_bytes(seed=3))
    (flat_src / "link.jpg").symlink_to(outside)
    (flat_src / "inlink.jpg").symlink_to(flat_src / "a" / "0.jpg")     # inside SRC: fine
    labels.write_text(CSV_HEAD + "inlink.jpg,cat\nlink.jpg,cat\n")
    with pytest.raises(PackError) as e:
        quiet_pack(flat_src, tmp_path / "out", labels=labels)
    assert str(e.value).startswith(f"{labels}:3: 'link.jpg' is a symlink to {outside}, outside SRC")
    labels.write_text(CSV_HEAD + "inlink.jpg,cat\n")
    assert quiet_pack(flat_src, tmp_path / "out", labels=labels).num_records == 1


@pytest.mark.parametrize("name", ["labels.txt", "labels.json", "labels"])
def test_unknown_extension_names_file_and_accepted_extensions(flat_src, tmp_path, name):
    (tmp_path / name).write_text(CSV_HEAD + "a/0.jpg,cat\n")
    with pytest.raises(PackError) as e:
        quiet_pack(flat_src, tmp_path / "out", labels=tmp_path / name)
    assert str(e.value) == (f"labels file {tmp_path / name}: unknown extension; use .csv (header "
                            f"path,label) or .jsonl / .json-lines (one JSON object per line)")


def test_missing_labels_file(flat_src, tmp_path):
    with pytest.raises(PackError, match=r"cannot read labels file .*nope\.csv: No such file"):
        quiet_pack(flat_src, tmp_path / "out", labels=tmp_path / "nope.csv")
    assert not (tmp_path / "out").exists()


def test_cli_bad_labels_file_prints_error_and_exits_2(flat_src, tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_text(CSV_HEAD + "a/0.jpg,cat\na/0.jpg,cat\n")
    r = run_cli("pack", str(flat_src), str(tmp_path / "out"), "--labels", str(labels), "--quiet")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"error: {labels}:3: 'a/0.jpg' is listed twice (first at line 2); keep one row per image\n"
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ unlabeled


def test_unlabeled_packs_every_image_under_src(flat_src, tmp_path, capsys):
    report = quiet_pack(flat_src, tmp_path / "out", unlabeled=True)
    on_disk = sorted(os.path.relpath(os.path.join(d, f), flat_src).replace(os.sep, "/")
                     for d, dirs, files in os.walk(flat_src) for f in files if not f.startswith("."))
    assert on_disk == sorted(FILES) and "5.jpg" in on_disk        # a file directly in SRC too
    ds = open_dataset(tmp_path / "out")
    assert report.num_records == len(ds) == 7 and report.classes == () == ds.classes
    assert [ds.source(i) for i in range(7)] == on_disk            # sorted by path
    assert all(ds.read(i) == (flat_src / on_disk[i]).read_bytes() for i in range(7))
    assert ds.labels.tolist() == [-1] * 7 and ds.label_source == "none" and not ds.multi_label
    assert ds.multi_hot(np.arange(7)).shape == (7, 0)
    assert "unlabeled, 1 shard" in report.summary() and "unlisted" not in report.summary()
    assert cli.main(["verify", str(tmp_path / "out"), "--quiet", "--no-decode"]) == 0
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2:4] == ["labels    none (unlabeled)", "classes   0"] and out[4] == "shards    1"


def test_unlabeled_follows_symlinks_once_and_sorts_like_strings(tmp_path):
    src = tmp_path / "src"
    for seed, rel in enumerate(["a.jpg", "a/b.jpg", "a-b.jpg", "a0.jpg", "z/y/x.jpg"]):
        write(src / rel, jpeg_bytes(seed=seed))
    (src / "z" / "loop").symlink_to(src)                   # a loop back to SRC: not entered again
    quiet_pack(src, tmp_path / "out", unlabeled=True)
    ds = open_dataset(tmp_path / "out")
    assert [ds.source(i) for i in range(len(ds))] == ["a-b.jpg", "a.jpg", "a/b.jpg", "a0.jpg", "z/y/x.jpg"]


@pytest.mark.parametrize("kw, message", [
    ({"labels": "l.csv"}, "unlabeled cannot go with labels"),
    ({"classes": ["a"]}, "unlabeled cannot go with classes"),
    ({"classes_from": "x"}, "unlabeled cannot go with classes_from"),
])
def test_unlabeled_is_exclusive(flat_src, tmp_path, kw, message):
    with pytest.raises(ArgumentError) as e:
        quiet_pack(flat_src, tmp_path / "out", unlabeled=True, **kw)
    assert str(e.value).startswith(message) and e.value.param == "unlabeled"


# ------------------------------------------------------------------ --classes / --classes-from


def make_folders(root: Path, classes: dict[str, int]) -> Path:
    for k, (name, n) in enumerate(classes.items()):
        for i in range(n):
            write(root / name / f"{i}.jpg", jpeg_bytes(seed=10 * k + i))
    return root


def test_classes_from_gives_train_indices_to_a_val_set_lacking_a_class(tmp_path, capsys):
    train = make_folders(tmp_path / "train", {"ant": 2, "bee": 2, "cow": 2})
    val = make_folders(tmp_path / "val", {"ant": 1, "cow": 2})
    quiet_pack(train, tmp_path / "train.packed")
    # Without the pin, val would number cow 1: wrong for a model trained on train.
    assert open_dataset(quiet_pack(val, tmp_path / "plain").dst).classes == ("ant", "cow")
    quiet_pack(val, tmp_path / "val.packed", classes_from=tmp_path / "train.packed")
    ds = open_dataset(tmp_path / "val.packed")
    assert ds.classes == ("ant", "bee", "cow") and ds.labels.tolist() == [0, 2, 2]
    assert [ds.source(i) for i in range(3)] == ["ant/0.jpg", "cow/0.jpg", "cow/1.jpg"]
    info = cli.dataset_info(str(tmp_path / "val.packed"))
    assert [(c["name"], c["count"]) for c in info["classes"]] == [("ant", 1), ("bee", 0), ("cow", 2)]
    assert cli.main(["info", str(tmp_path / "val.packed")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines[4:7]] == [["0", "ant", "1"], ["1", "bee", "0"], ["2", "cow", "2"]]


def test_classes_from_fails_on_a_val_class_train_lacks(tmp_path):
    train = make_folders(tmp_path / "train", {"ant": 1, "bee": 1})
    val = make_folders(tmp_path / "val", {"ant": 1, "zebra": 1})
    quiet_pack(train, tmp_path / "train.packed")
    with pytest.raises(PackError) as e:
        quiet_pack(val, tmp_path / "val.packed", classes_from=tmp_path / "train.packed")
    assert str(e.value) == (f"class folder 'zebra' of {val} is not in the classes of "
                            f"{tmp_path / 'train.packed'} (2 classes); add the class there, or move "
                            f"the folder out of SRC")
    assert not (tmp_path / "val.packed").exists()
    # The same through a labels file, with the line named.
    labels = write_labels(tmp_path / "val.csv", [("ant/0.jpg", "ant"), ("zebra/0.jpg", "zebra")], "csv")
    with pytest.raises(PackError, match=r"val\.csv:3: class 'zebra' is not in the classes of .*train\.packed "
                                        r"\(2 classes\)"):
        quiet_pack(val, tmp_path / "val.packed", labels=labels, classes_from=tmp_path / "train.packed")


def test_classes_from_needs_a_packed_dataset_with_classes(flat_src, tmp_path):
    with pytest.raises(PackError, match=r"^classes_from .*: not a packed dataset"):
        quiet_pack(flat_src, tmp_path / "out", classes_from=tmp_path)
    quiet_pack(flat_src, tmp_path / "un", unlabeled=True)
    with pytest.raises(PackError, match="that dataset has no classes"):
        quiet_pack(flat_src, tmp_path / "out", classes_from=tmp_path / "un")


def test_classes_order_pins_indices_for_folders(image_tree, tmp_path):
    report = quiet_pack(image_tree, tmp_path / "out", classes=["c_cat", "a_bird", "b_dog", "d_none"])
    ds = open_dataset(tmp_path / "out")
    assert report.classes == ds.classes == ("c_cat", "a_bird", "b_dog", "d_none")
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]       # sorted by (pinned label, path)
    assert [ds.source(i) for i in (0, 3, 6)] == ["c_cat/img_0.jpg", "a_bird/img_0.jpg",
                                                 "b_dog/deep/er/img_2.jpg"]
    assert all(ds.read(i) == (image_tree / ds.source(i)).read_bytes() for i in range(9))
    assert [c["count"] for c in cli.dataset_info(str(tmp_path / "out"))["classes"]] == [3, 3, 3, 0]


@pytest.mark.parametrize("kw, message", [
    ({"classes": ["a", "b", "a"]}, "classes names class 'a' twice"),
    ({"classes": ["a", ""]}, "classes has an empty or non-string class name"),
    ({"classes": []}, "classes must be a non-empty list of class names"),
    ({"classes": "a,b"}, "classes must be a non-empty list of class names"),
    ({"classes": ["a"], "classes_from": "x"}, "classes and classes_from both pin the classes"),
])
def test_bad_classes_option(image_tree, tmp_path, kw, message):
    with pytest.raises(ArgumentError) as e:
        quiet_pack(image_tree, tmp_path / "out", **kw)
    assert str(e.value).startswith(message) and e.value.param == "classes"
    assert not (tmp_path / "out").exists()


def test_cli_flags_reach_pack_and_info_shows_label_source(flat_src, tmp_path, capsys):
    labels = write_labels(tmp_path / "l.jsonl", MULTI_ROWS[:3], "jsonl")
    rc = cli.main(["pack", str(flat_src), str(tmp_path / "m"), "--labels", str(labels), "--classes",
                   "emu, dog,cat", "--workers", "1", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "packed 3 images (0 skipped, 4 unlisted)" in out and "3 classes (multi-label)" in out
    assert open_dataset(tmp_path / "m").classes == ("emu", "dog", "cat")
    rc = cli.main(["info", str(tmp_path / "m"), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert (info["label_source"], info["multi_label"], info["num_unlisted"], info["version"]) == ("file", True, 4, 4)
    assert [(c["name"], c["count"]) for c in info["classes"]] == [("emu", 1), ("dog", 1), ("cat", 1)]
    assert cli.main(["info", str(tmp_path / "m")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "labels    labels file, multi-label, 4 files in SRC not listed (not packed)"
    assert lines[3] == "classes   3 (counts: records having the class)"
    folders = make_folders(tmp_path / "folders", {"a_bird": 1, "dog": 1})
    rc = cli.main(["pack", str(folders), str(tmp_path / "f"), "--classes-from", str(tmp_path / "m"),
                   "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: class folder 'a_bird' of ") and "(3 classes)" in err
    rc = cli.main(["pack", str(flat_src), str(tmp_path / "u"), "--unlabeled", "--labels", str(labels)])
    assert rc == 2 and "cannot go with" in capsys.readouterr().err   # the flag: cli.py maps param
    rc = cli.main(["pack", str(flat_src), str(tmp_path / "u"), "--classes", "a", "--classes-from", "x"])
    assert rc == 2 and "not allowed with argument" in capsys.readouterr().err


def test_pack_help_documents_every_new_flag_once(capsys):
    assert cli.main(["pack", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--labels FILE", "--unlabeled", "--classes NAME,NAME,...", "--classes-from OTHER_DST"):
        assert out.count(f"  {flag}") == 1, flag


# ------------------------------------------------------------------ hostile version 4 indexes


@pytest.fixture
def multi(flat_src, tmp_path):
    """A multi-label pack of MULTI_ROWS: 6 records, 3 classes, offsets [0, 2, 3, 3, 4, 7, 8]."""
    labels = write_labels(tmp_path / "l.jsonl", MULTI_ROWS, "jsonl")
    quiet_pack(flat_src, tmp_path / "multi", labels=labels)
    m = read_manifest(tmp_path / "multi")
    assert m.label_offsets.tolist() == [0, 2, 3, 3, 4, 7, 8]
    assert m.label_values.tolist() == [0, 1, 2, 2, 0, 1, 2, 1]
    return tmp_path / "multi"


def edit_csr(dst, name, fn):
    path = dst / LABEL_COLUMNS[name][0]
    np.save(path, fn(np.load(path)))


@pytest.mark.parametrize("name, fn, message", [       # the message names the file edited
    ("label_offsets", lambda a: a.astype(np.int32), "column 'label_offsets' has dtype int32, expected int64"),
    ("label_offsets", lambda a: a[:-1], "has shape (6,) but the manifest promises 6 records (n + 1 offsets)"),
    ("label_offsets", lambda a: a + 1, "label_offsets must start at 0"),
    ("label_offsets", lambda a: np.array([0, 2, 1, 3, 4, 7, 8]), "label_offsets decrease at record 1"),
    ("label_values", lambda a: a[:-1], "has shape (7,) but label_offsets end at 8"),
    ("label_values", lambda a: np.concatenate([a, [2]]).astype(np.int32), "has shape (9,) but label_offsets end at 8"),
    ("label_values", lambda a: a.astype(np.int64), "column 'label_values' has dtype int64, expected int32"),
    ("label_values", lambda a: np.where(np.arange(8) == 4, 3, a).astype(np.int32),
     "record 4 has class 3 (label_values[4]), outside [0, 2]"),
    ("label_values", lambda a: np.where(np.arange(8) == 0, -1, a).astype(np.int32), "record 0 has class -1"),
    ("label_values", lambda a: np.array([1, 0, 2, 2, 0, 1, 2, 1], np.int32),
     "record 0's classes are not sorted and unique (label_values[0:2])"),
    ("label_values", lambda a: np.array([0, 1, 2, 2, 0, 2, 2, 1], np.int32),
     "record 4's classes are not sorted and unique (label_values[5:7])"),
])
def test_hostile_label_columns_fail_at_open(multi, name, fn, message):
    edit_csr(multi, name, fn)
    with pytest.raises(DatasetError) as e:
        open_dataset(multi)
    msg = str(e.value)
    assert message in msg and LABEL_COLUMNS[name][0] in msg and "\n" not in msg, msg


def test_offsets_past_the_values_name_the_values_file(multi):
    edit_csr(multi, "label_offsets", lambda a: np.array([0, 2, 3, 3, 4, 7, 9]))
    with pytest.raises(DatasetError, match=r"label_values\.npy: column 'label_values' has shape \(8,\) "
                                           r"but label_offsets end at 9"):
        open_dataset(multi)


def test_missing_label_column_and_labels_not_minus_one(multi):
    labels = multi / "labels.npy"
    np.save(labels, np.where(np.arange(6) == 2, 0, np.load(labels)).astype(np.int32))
    with pytest.raises(DatasetError, match=r"labels\.npy: record 2 has labels 0, but a multi-label "
                                           r"dataset stores -1 for every record"):
        open_dataset(multi)
    np.save(labels, np.full(6, -1, np.int32))
    (multi / "label_values.npy").unlink()
    with pytest.raises(DatasetError, match=r"label_values\.npy is missing"):
        open_dataset(multi)


def test_unlabeled_labels_must_be_minus_one(flat_src, tmp_path):
    quiet_pack(flat_src, tmp_path / "un", unlabeled=True)
    np.save(tmp_path / "un" / "labels.npy", np.zeros(7, np.int32))
    with pytest.raises(DatasetError, match="record 0 has labels 0, but an unlabeled dataset stores -1"):
        open_dataset(tmp_path / "un")


def edit_header(dst, **changes):
    path = dst / "manifest.json"
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("change, message", [
    ({"label_source": "csv"}, "'label_source' must be one of folders, file, none"),
    ({"label_source": None}, "'label_source' must be one of"),
    ({"multi_label": 1}, "'multi_label' must be true or false"),
    ({"multi_label": True}, "true only with label_source 'file'"),
    ({"unlisted": -1}, "bad 'unlisted' -1"),
    ({"unlisted": True}, "bad 'unlisted' True"),
    ({"label_source": "none"}, "an unlabeled dataset (label_source 'none') has no classes"),
    ({"unlisted": None, "version": 4}, "bad 'unlisted' None"),
])
def test_hostile_label_header_values(image_tree, tmp_path, change, message):
    quiet_pack(image_tree, tmp_path / "out")
    edit_header(tmp_path / "out", **change)
    with pytest.raises(DatasetError) as e:
        open_dataset(tmp_path / "out")
    msg = str(e.value)
    assert message in msg and str(tmp_path / "out" / "manifest.json") in msg and "\n" not in msg, msg


def test_version_4_header_needs_its_label_keys_but_version_3_does_not(image_tree, tmp_path):
    quiet_pack(image_tree, tmp_path / "out")
    path = tmp_path / "out" / "manifest.json"
    obj = json.loads(path.read_text())
    for key in ("label_source", "multi_label", "unlisted"):
        obj.pop(key)
    path.write_text(json.dumps(obj))
    with pytest.raises(DatasetError, match="missing keys label_source, multi_label, unlisted"):
        open_dataset(tmp_path / "out")
    edit_header(tmp_path / "out", version=3)      # what loader 0.2 wrote: folders, single-label
    ds = open_dataset(tmp_path / "out")
    assert (ds.manifest.version, ds.label_source, ds.multi_label, ds.manifest.unlisted) == (3, "folders", False, 0)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
