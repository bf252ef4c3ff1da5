"""``pack --labels FILE``: read a labels file into compact arrays, and check it against SRC.

Formats, chosen by the file's extension:

* ``.csv``: a header row ``path,label``, then one row per image. A label of ASCII digits
  only (``3``) is a class index, anything else a class name; ``cat|dog`` is a list
  (multi-label). Whitespace around a label and around each ``|``-separated name is dropped.
* ``.jsonl`` / ``.json-lines``: one JSON object per line, ``{"path": ..., "label": ...}``
  (other keys are ignored); a label is a string (class name), a non-negative integer (class
  index) or a list of them (multi-label; ``[]``: no class).

Blank lines are skipped. ``path`` is relative to SRC with ``/`` separators (``.`` and empty
components are dropped, so ``./cat/1.jpg`` is ``cat/1.jpg``). Records are in the file's row
order. If any row is a list the dataset is multi-label (a single label is a list of one);
repeated classes in one row count once.

Classes: given (``--classes`` / ``--classes-from``), a name must be one of them and an index
points into them. Otherwise class names give the sorted unique names (as class folders do),
and indices give the classes ``"0"`` to ``"max"``; names and indices cannot be mixed then.

Every problem is a :class:`PackError` of one line, ``FILE:LINE: what; what to do``, raised
before anything is written.

Memory: per row only compact arrays (paths as one UTF-8 blob with end offsets, a 64-bit hash
of each path, its line number, the label CSR), never a Python object per row: measured at the
parse's peak, about 70 bytes plus the path per row (116 for multi-label JSON Lines), so
70-120 MB at 1M rows (``tests/test_labels.py`` bounds it).

>>> lf = read_label_file("labels.csv")                  # doctest: +SKIP
>>> lf.classes, lf.multi_label, len(lf.items)           # doctest: +SKIP
(['cat', 'dog'], False, 3000)
>>> check_paths(lf, "photos/")                          # doctest: +SKIP
12
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loader.convert.scan import Items, iter_files
from loader.errors import PackError

__all__ = ["LABEL_EXTENSIONS", "LabelFile", "check_listed", "check_paths", "check_unique", "read_label_file"]

LABEL_EXTENSIONS = (".csv", ".jsonl", ".json-lines")
# The longest line a labels file may have (a row is one path and its labels): read no further
# (a labels file that is /dev/zero, or a 50 MB line, once took all the memory it could get).
MAX_LINE_BYTES = 2**20
# How much of the user's text (a path, a label, a row) a message quotes at most.
_QUOTE_CHARS = 200
# A class index longer than this many digits is out of range whatever the classes (Python refuses
# to parse ints over 4300 digits at all).
_MAX_INDEX_DIGITS = 18
# Class indices without a class list give classes "0".."max": keep that list (and the header) sane.
MAX_IMPLICIT_CLASSES = 100_000
_DIGITS = re.compile(r"[0-9]+")
_NEGATIVE = re.compile(r"-[0-9]+")


def _q(value: object) -> str:
    """``repr(value)``, cut to :data:`_QUOTE_CHARS` characters: a message stays one readable line."""
    text = repr(value)
    if len(text) <= _QUOTE_CHARS:
        return text
    return f"{text[:_QUOTE_CHARS]}... ({len(text):,} characters)"


@dataclass(frozen=True, eq=False)
class LabelFile:
    """A parsed labels file: one row per listed image, in the file's order.

    ``items``: ``(relpath, label)`` (label -1 when multi-label); ``lines``: each row's line
    number (int32); ``hashes``: ``hash(relpath)`` (int64, for duplicate and membership checks);
    ``label_offsets`` / ``label_values``: each row's sorted unique class indices (CSR, int64 /
    int32), kept for multi-label files only (else None).
    """

    path: str
    items: Items
    lines: np.ndarray
    hashes: np.ndarray
    classes: list[str]
    multi_label: bool
    label_offsets: np.ndarray | None
    label_values: np.ndarray | None


class _Rows:
    """Rows as they are read: compact arrays, not Python objects per row."""

    def __init__(self, where: str, classes: Sequence[str] | None, origin: str):
        self.where, self.origin = where, origin
        self.pinned = None if classes is None else {c: i for i, c in enumerate(classes)}
        self.num_pinned = 0 if classes is None else len(classes)
        self.names: dict[str, int] = {}      # unpinned names -> provisional id (first seen)
        self.kind: str | None = None         # unpinned: "name" or "int", and where it was set
        self.kind_line = 0
        self.blob, self.path_ends = bytearray(), array("q")
        self.hashes, self.lines = array("q"), array("i")
        self.values, self.value_ends = array("i"), array("q", [0])   # CSR: ends after a leading 0
        self.multi = False

    def error(self, line: int, msg: str) -> PackError:
        return PackError(f"{self.where}:{line}: {msg}")

    def atom(self, value: str | int, line: int) -> int:
        """The class index (or, unpinned, provisional id / raw index) of one label value."""
        if isinstance(value, str):
            if self.pinned is not None:
                if value not in self.pinned:
                    raise self.error(line, f"class {_q(value)} is not in {self.origin} "
                                           f"({self.num_pinned} classes); fix the label or add the class")
                return self.pinned[value]
            self._kind("name", value, line)
            return self.names.setdefault(value, len(self.names))
        if self.pinned is not None:
            if value >= self.num_pinned:
                raise self.error(line, f"class index {value} is outside {self.origin} "
                                       f"({self.num_pinned} classes: 0 to {self.num_pinned - 1}); "
                                       f"fix the label")
            return value
        self._kind("int", value, line)
        if value >= MAX_IMPLICIT_CLASSES:
            raise self.error(line, f"class index {value} is too large without a class list (classes "
                                   f"0 to {value} would be made; at most {MAX_IMPLICIT_CLASSES}); "
                                   f"pin the classes (classes / classes_from) or use class names")
        return value

    def _kind(self, kind: str, value: str | int, line: int) -> None:
        if self.kind is None:
            self.kind, self.kind_line = kind, line
        elif self.kind != kind:
            was = "class names" if self.kind == "name" else "class indices"
            now = f"class name {_q(value)}" if kind == "name" else f"class index {value}"
            raise self.error(line, f"{now} mixes with the {was} used since line {self.kind_line}; "
                                   f"use one kind throughout, or pin the classes (classes / "
                                   f"classes_from) so that names and indices both resolve")

    def add(self, rel: str, labels: list[str | int] | str | int, is_list: bool, line: int) -> None:
        rel = _clean_path(rel, line, self)
        if is_list:
            self.multi = True
            ids = sorted({self.atom(v, line) for v in labels})
        else:
            ids = [self.atom(labels, line)]
        raw = rel.encode("utf-8", "surrogateescape")
        self.blob += raw
        self.path_ends.append(len(self.blob))
        self.hashes.append(hash(rel))
        self.lines.append(line)
        self.values.extend(ids)
        self.value_ends.append(len(self.values))


def _clean_path(rel: object, line: int, rows: _Rows) -> str:
    if (isinstance(rel, str) and rel and rel[0] != "/" and rel[-1] != "/" and "//" not in rel
            and "/." not in "/" + rel and rel[1:2] != ":"):
        return rel          # the common case, already canonical: no split
    if not isinstance(rel, str) or not rel.strip():
        raise rows.error(line, "empty path; give the image's path relative to SRC, e.g. cat/001.jpg")
    if rel.startswith("/") or re.match(r"[A-Za-z]:[/\\]", rel):
        raise rows.error(line, f"path {_q(rel)} is absolute, outside SRC; give it relative to SRC "
                               f"('/' separators)")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise rows.error(line, f"path {_q(rel)} goes up with '..', outside SRC; give it relative to "
                               f"SRC, inside it")
    if not parts:
        raise rows.error(line, f"path {_q(rel)} names SRC itself, not an image; give the image's path "
                               f"relative to SRC")
    return "/".join(parts)


# ---------------------------------------------------------------- reading


def _open_regular(path: Path, where: str):
    """``path`` opened for reading in binary, or :class:`PackError` if it is not a regular file.

    Opened without blocking, then checked on the open file: a FIFO would block ``open`` until a
    writer came (forever), and a device such as ``/dev/zero`` never ends.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise PackError(f"cannot read labels file {where}: {e.strerror or e}; pass an existing "
                        f"{'/'.join(LABEL_EXTENSIONS)} file", param="labels") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
                    if stat.S_ISSOCK(mode) else "not a regular file")
            raise PackError(f"labels file {where} is {what}, not a regular file; pass a "
                            f"{'/'.join(LABEL_EXTENSIONS)} file", param="labels")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _lines(path: Path, where: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line, strictly UTF-8 (a BOM at the start is dropped); no line
    longer than :data:`MAX_LINE_BYTES`."""
    f = _open_regular(path, where)
    with f:
        k = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            k += 1
            if len(raw) > MAX_LINE_BYTES:
                raise PackError(f"{where}:{k}: line is longer than {MAX_LINE_BYTES:,} bytes "
                                f"(MAX_LINE_BYTES); a row holds one path and its labels: is this the "
                                f"labels file?")
            try:
                text = raw.decode("utf-8-sig" if k == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise PackError(f"{where}:{k}: not UTF-8 text ({e.reason} at byte {e.start}); "
                                f"save the labels file as UTF-8") from None
            yield k, text


def _csv_atom(text: str, rows: _Rows, line: int) -> str | int:
    text = text.strip()
    if not text:
        raise rows.error(line, "empty label; give a class name or index (lists: cat|dog)")
    if _DIGITS.fullmatch(text):
        if len(text) > _MAX_INDEX_DIGITS:
            raise rows.error(line, f"class index {text[:20]}... ({len(text):,} digits) is too large; "
                                   f"fix the label")
        return int(text)
    if _NEGATIVE.fullmatch(text):
        raise rows.error(line, f"negative class index {text}; class indices start at 0")
    return text


def _read_csv(path: Path, rows: _Rows) -> None:
    import csv

    numbered = _lines(path, rows.where)
    current = [0]

    def texts():
        for k, text in numbered:
            current[0] = k
            yield text

    reader = csv.reader(texts(), strict=True)
    header_seen = False
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise rows.error(current[0], f"malformed CSV ({e}); fix the quoting of this row") from None
        line = current[0]
        if not row or (len(row) == 1 and not row[0].strip()):
            continue   # blank line
        if not header_seen:
            names = [c.strip() for c in row]
            if names != ["path", "label"]:
                raise rows.error(line, f"expected the header row 'path,label', found {_q(','.join(row))}; "
                                       f"add (or fix) the header row")
            header_seen = True
            continue
        if len(row) != 2:
            raise rows.error(line, f"{len(row)} columns, expected 2 (path,label); quote a path or "
                                   f"label holding a comma")
        rel, label = row
        if "|" in label:
            rows.add(rel, [_csv_atom(t, rows, line) for t in label.split("|")], True, line)
        else:
            rows.add(rel, _csv_atom(label, rows, line), False, line)
    if not header_seen:
        raise rows.error(1, "no header row 'path,label' (the file is empty); add the header row and "
                            "one row per image")


def _json_atom(value: object, rows: _Rows, line: int, in_list: bool) -> str | int:
    if isinstance(value, bool):
        raise rows.error(line, f"label {json.dumps(value)} is a boolean, not a class; give a class "
                               f"name (string) or index (integer)")
    if isinstance(value, int):
        if value < 0:
            raise rows.error(line, f"negative class index {value}; class indices start at 0")
        return value
    if isinstance(value, str):
        if not value.strip():
            raise rows.error(line, "empty label; give a class name or index")
        return value
    what = "a list inside a list" if in_list and isinstance(value, list) else json.dumps(value)[:40]
    raise rows.error(line, f"label {what} has the wrong type; give a class name (string), index "
                           f"(integer) or a list of them")


def _read_jsonl(path: Path, rows: _Rows) -> None:
    for line, text in _lines(path, rows.where):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise rows.error(line, f"bad JSON ({e.msg} at column {e.colno}); write one JSON object "
                                   f'per line, e.g. {{"path": "cat/1.jpg", "label": "cat"}}') from None
        except RecursionError:
            raise rows.error(line, "JSON nested too deeply to read; write one flat object per line, "
                                   'e.g. {"path": "cat/1.jpg", "label": "cat"}') from None
        except ValueError as e:   # e.g. an integer of over 4300 digits (Python's int limit)
            raise rows.error(line, f"bad JSON ({str(e).split(';')[0][:_QUOTE_CHARS]}); write one JSON "
                                   f'object per line, e.g. {{"path": "cat/1.jpg", "label": "cat"}}') from None
        if not isinstance(obj, dict):
            raise rows.error(line, f"expected a JSON object, found a {type(obj).__name__}; write "
                                   f'{{"path": "cat/1.jpg", "label": "cat"}} on each line')
        missing = [k for k in ("path", "label") if k not in obj]
        if missing:
            raise rows.error(line, f"missing key {missing[0]!r}; write "
                                   f'{{"path": "cat/1.jpg", "label": "cat"}}')
        rel, label = obj["path"], obj["label"]
        if not isinstance(rel, str):
            raise rows.error(line, f"path {json.dumps(rel)[:40]} is not a string; give the path "
                                   f"relative to SRC as a string")
        if isinstance(label, list):
            rows.add(rel, [_json_atom(v, rows, line, True) for v in label], True, line)
        else:
            rows.add(rel, _json_atom(label, rows, line, False), False, line)


def read_label_file(path: str | os.PathLike, *, classes: Sequence[str] | None = None,
                    origin: str = "the given classes") -> LabelFile:
    """Parse the labels file ``path`` (see the module docstring); paths are not checked yet
    (:func:`check_paths`).

    ``classes``: the pinned class list (``origin`` names it in messages, e.g.
    ``"the classes of train.packed"``). Raises :class:`PackError` (one line, naming the file
    and line) for a bad extension, an unreadable or malformed file, or a bad label.
    """
    p = Path(path)
    where = str(path)
    ext = next((e for e in LABEL_EXTENSIONS if p.name.lower().endswith(e)), None)
    if ext is None:
        raise PackError(f"labels file {where}: unknown extension; use .csv (header path,label) or "
                        f".jsonl / .json-lines (one JSON object per line)")
    rows = _Rows(where, classes, origin)
    (_read_csv if ext == ".csv" else _read_jsonl)(p, rows)
    n = len(rows.lines)
    if not n:
        raise rows.error(1, "lists no images; add one row per image")

    # Views of the arrays read (no copies: ~1M rows stay ~60 MB at the peak).
    offsets = np.frombuffer(rows.value_ends, dtype=np.int64)
    values = np.frombuffer(rows.values, dtype=np.int32)
    if classes is not None:
        names = list(classes)
    elif rows.kind == "name":
        names = sorted(rows.names)
        rank = {c: i for i, c in enumerate(names)}
        perm = np.array([rank[c] for c in rows.names], dtype=np.int32)   # provisional id -> index
        values = perm[values]
        if rows.multi:   # rows were sorted by provisional id: sort them by class index
            counts = np.diff(offsets)
            values = values[np.lexsort((values, np.repeat(np.arange(n), counts)))]
    elif rows.kind == "int":
        names = [str(i) for i in range(int(values.max()) + 1)]
    else:   # only empty lists
        names = []
    if rows.multi:
        labels = np.full(n, -1, dtype=np.int32)
        label_offsets, label_values = offsets, values
    else:
        labels, label_offsets, label_values = values, None, None
    items = Items(rows.blob, np.frombuffer(rows.path_ends, dtype=np.int64), labels)
    return LabelFile(path=where, items=items, lines=np.frombuffer(rows.lines, dtype=np.int32),
                     hashes=np.frombuffer(rows.hashes, dtype=np.int64), classes=names,
                     multi_label=rows.multi, label_offsets=label_offsets, label_values=label_values)


# ---------------------------------------------------------------- checking against SRC


def _duplicate(lf: LabelFile) -> tuple[int, int] | None:
    """``(row, earlier row)`` for the first row (in file order) that repeats an earlier path."""
    h = lf.hashes
    order = np.argsort(h, kind="stable")      # rows with equal hashes stay in file order
    sh = h[order]
    repeat = np.concatenate([[False], sh[1:] == sh[:-1]])
    # Each run of equal hashes: compare the paths themselves (equal hashes may be a collision).
    run_starts = np.flatnonzero(np.diff(np.concatenate([[0], repeat.astype(np.int8)])) == 1) - 1
    best = None
    for a in run_starts.tolist():
        b = a + 1
        while b < len(sh) and sh[b] == sh[a]:
            b += 1
        seen: dict[str, int] = {}
        for row in order[a:b].tolist():
            rel = lf.items.relpath(row)
            if rel in seen:
                if best is None or row < best[0]:
                    best = (row, seen[rel])
                break
            seen[rel] = row
    return best


def _why_not_usable(src: Path, rel: str, root: str) -> str | None:
    """Why ``src/rel`` cannot be packed (missing, a folder, outside SRC), or None if it can."""
    p = os.path.join(src, rel)
    try:
        st = os.stat(p)
    except (OSError, ValueError):      # ValueError: a NUL in the path
        if "\0" not in p and os.path.lexists(p):
            return f"{_q(rel)} is a dangling symlink in SRC; fix the link or drop the row"
        return (f"{_q(rel)} does not exist in SRC {src}; fix the path (relative to SRC, '/' "
                f"separators) or drop the row")
    import stat

    if stat.S_ISDIR(st.st_mode):
        return f"{_q(rel)} is a folder, not an image file; list the images in it one per row"
    if not stat.S_ISREG(st.st_mode):
        return f"{_q(rel)} is not a regular file; list image files only"
    real = os.path.realpath(p)
    if not real.startswith(root.rstrip(os.sep) + os.sep):
        return (f"{_q(rel)} is a symlink to {real}, outside SRC {src}; copy the file into SRC or drop "
                f"the row")
    return None


def check_paths(lf: LabelFile, src: str | os.PathLike) -> int:
    """Check every listed path against SRC: inside it (no absolute path, no ``..``, no symlink
    out of it), an existing regular file, listed once. Return how many files under SRC (as
    :func:`loader.convert.scan.iter_files` finds them) the labels file does not list (the labels file
    itself, if it lies in SRC, is not counted).

    Raises :class:`PackError` naming the labels file and line of the first bad row.
    """
    src = Path(src)
    check_unique(lf)
    hashes = array("q")
    inside = array("b")
    for rel, ok in iter_files(src):
        hashes.append(hash(rel))
        inside.append(ok)
    all_hashes = np.frombuffer(hashes, dtype=np.int64)
    root = os.path.realpath(src)
    own = os.path.relpath(os.path.abspath(lf.path), os.path.abspath(src)).replace(os.sep, "/")
    return check_listed(lf, all_hashes, np.frombuffer(inside, dtype=np.int8).astype(bool),
                        lambda rel: _why_not_usable(src, rel, root), None if own.startswith("../") else own)


def check_unique(lf: LabelFile) -> None:
    """:class:`PackError` naming the first row (in file order) that repeats an earlier row's path."""
    dup = _duplicate(lf)
    if dup is not None:
        row, first = dup
        raise PackError(f"{lf.path}:{int(lf.lines[row])}: {_q(lf.items.relpath(row))} is listed twice "
                        f"(first at line {int(lf.lines[first])}); keep one row per image")


def check_listed(lf: LabelFile, all_hashes: np.ndarray, usable: np.ndarray, why_not: Callable[[str], str | None],
                 own: str | None = None) -> int:
    """:func:`check_paths` against a listing of SRC (a folder's, or a bucket prefix's:
    :mod:`loader.convert.remotesrc`): ``all_hashes``, ``hash(relpath)`` of every file under SRC (hidden
    ones left out); ``usable``, which of them a row may name as they are; ``why_not(relpath)``, for a
    row not among those, why it cannot be packed (None: it can). Returns how many files the labels
    file does not list, ``own`` (the labels file's relpath in SRC) not counted."""
    found = np.isin(lf.hashes, all_hashes[usable])
    for row in np.flatnonzero(~found).tolist():     # in file order: the first bad row is named
        why = why_not(lf.items.relpath(row))
        if why is not None:
            raise PackError(f"{lf.path}:{int(lf.lines[row])}: {why}")
    unlisted = ~np.isin(all_hashes, lf.hashes)
    if own is not None:
        unlisted &= all_hashes != hash(own)
    return int(np.count_nonzero(unlisted))
