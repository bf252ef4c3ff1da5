"""Per-record columns of a version 3-5 index: ``.npy`` files beside the manifest, memory-mapped; their
names (:func:`index_files`: plain, or with the generation of a version 5 index).

Why files and not JSON lists: at 1.281M records, parsing the version 2
manifest's lists and checking them element by element took 0.7-1.8 s and
+412 MB per process, so 8 DDP ranks held 8 copies. A column here is opened
with ``np.load(mmap_mode="r", allow_pickle=False)``: nothing is parsed per
record, nothing can be unpickled, and every process on the machine shares one
copy of the pages through the page cache.

Validation is strict and vectorised, and it reads the file in chunks through
a small buffer rather than through the map: checking a column touches each
page once without making it part of this process's resident set, so a rank
opening a 10M-record dataset stays small until it reads its own records.

>>> write_column("/tmp/labels.npy", np.array([0, 2, 1], dtype=np.int32))   # doctest: +SKIP
>>> read_column("/tmp/labels.npy", "labels", np.int32, 3, lo=0, hi=2)    # doctest: +SKIP
memmap([0, 2, 1], dtype=int32)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from loader.errors import DatasetError
from loader.format.files import REPACK_HINT, check_inside

__all__ = ["COLUMNS", "LABEL_COLUMNS", "SOURCES_NAME", "index_file_generation", "index_files", "monotone_from_zero",
           "read_column", "scan_column", "write_column"]

SOURCES_NAME = "sources.bin"
# Column name -> (file, dtype). One home for the layout of versions 3-5 (loader.format.manifest): every index
# has these ...
COLUMNS: dict[str, tuple[str, np.dtype]] = {
    name: (f"{name}.npy", np.dtype(dt)) for name, dt in (
        ("labels", "<i4"), ("heights", "<i4"), ("widths", "<i4"), ("checksums", "<u4"),
        ("keys", "<i4"), ("offsets", "<u4"), ("lengths", "<u4"), ("converted", "u1"),
        ("source_offsets", "<i8"))
}
# ... and a multi-label one (version 4) these too: the CSR of each record's classes.
LABEL_COLUMNS: dict[str, tuple[str, np.dtype]] = {
    "label_offsets": ("label_offsets.npy", np.dtype("<i8")),
    "label_values": ("label_values.npy", np.dtype("<i4")),
}
MAX_GENERATION = 999_999_999       # 9 digits: names stay short, and no overwrite count comes near it
# The plain names of the index files (generation 0), and a generation's: labels.npy -> labels.7.npy.
_INDEX_NAMES = {**{c: f for c, (f, _) in (*COLUMNS.items(), *LABEL_COLUMNS.items())}, "sources": SOURCES_NAME}
_INDEX_BASES = frozenset(_INDEX_NAMES.values())
_GENERATION_FILE = re.compile(r"([a-z_]+)\.([1-9][0-9]{0,8})\.(npy|bin)")


def index_files(generation: int = 0) -> dict[str, str]:
    """The file of each index column (and ``"sources"``: ``sources.bin``) in an index of ``generation``
    (0: the plain names of versions 3 and 4; the label columns are used only by a multi-label index).

    >>> index_files()["labels"], index_files(7)["labels"], index_files(7)["sources"]
    ('labels.npy', 'labels.7.npy', 'sources.7.bin')
    """
    if generation == 0:
        return dict(_INDEX_NAMES)
    return {c: f"{f.rsplit('.', 1)[0]}.{generation}.{f.rsplit('.', 1)[1]}" for c, f in _INDEX_NAMES.items()}


def index_file_generation(name: str) -> int | None:
    """The generation of an index file called ``name`` (0 for a plain name), or None if ``name`` is no
    index file's.

    >>> index_file_generation("labels.npy"), index_file_generation("sources.12.bin"), index_file_generation("x.1.npy")
    (0, 12, None)
    """
    if name in _INDEX_BASES:
        return 0
    m = _GENERATION_FILE.fullmatch(name)
    return int(m[2]) if m and f"{m[1]}.{m[3]}" in _INDEX_BASES else None


# 1 MB validation buffer (256k int32 values): its temporaries stay a few MB, which the
# allocator may keep; 4 MB chunks left +13.7 MB resident after opening 2M records.
_CHUNK_BYTES = 1 << 20


def write_column(path: str | os.PathLike, values: np.ndarray) -> Path:
    """Write ``values`` (1-D, plain numeric dtype) as a ``.npy`` file, flushed to disk."""
    values = np.ascontiguousarray(values)
    if values.ndim != 1 or values.dtype.hasobject:
        raise ValueError(f"a column is a 1-D numeric array, got {values.dtype} {values.shape}")
    path = Path(path)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, values, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return path


def _header(f, where: str) -> tuple[tuple, bool, np.dtype]:
    try:
        major, _minor = np.lib.format.read_magic(f)
        if major == 1:
            return np.lib.format.read_array_header_1_0(f)
        if major in (2, 3):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"npy format version {major}")
    except (ValueError, SyntaxError, TypeError, OSError, EOFError) as e:
        raise DatasetError(f"{where} is not a valid .npy column ({e}); {REPACK_HINT}") from None


def _open_checked(path: Path, name: str, dtype: np.dtype, n: int, promise: str | None = None):
    """Open ``path`` and check its header: ``dtype`` exactly, shape ``(n,)``, exact file size.
    ``promise``: where ``n`` comes from, for the message (default: the manifest's record count)."""
    where = str(path)
    check_inside(path, f"column {name!r}")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DatasetError(f"{where} is missing (column {name!r} of the index); {REPACK_HINT}") from None
    except OSError as e:
        raise DatasetError(f"cannot read {where}: {e.strerror or e}") from None
    try:
        shape, fortran, found = _header(f, where)
        if found.hasobject or found != dtype:
            raise DatasetError(f"{where}: column {name!r} has dtype {found}, expected {dtype}; "
                               f"the index is corrupt or was tampered with, {REPACK_HINT}")
        if shape != (n,):
            raise DatasetError(f"{where}: column {name!r} has shape {shape} but "
                               f"{promise or f'the manifest promises {n} records'}; the index is corrupt, "
                               f"{REPACK_HINT}")
        size = os.fstat(f.fileno()).st_size
        if size != f.tell() + n * dtype.itemsize:
            raise DatasetError(f"{where}: column {name!r} is {size} bytes, expected "
                               f"{f.tell() + n * dtype.itemsize} (truncated or padded); {REPACK_HINT}")
    except BaseException:
        f.close()
        raise
    return f


def scan_column(path: str | os.PathLike, name: str, dtype, n: int,
                check: Callable[[np.ndarray, int], str | None], promise: str | None = None) -> None:
    """Check every value of a column in chunks: ``check(chunk, first_index)`` returns why a
    chunk is bad (or None); raises :class:`DatasetError` naming the file and the reason.
    ``promise``: where the length ``n`` comes from, for the message (default: the record count)."""
    path, dtype = Path(path), np.dtype(dtype)
    with _open_checked(path, name, dtype, n, promise) as f:
        per_chunk = max(1, _CHUNK_BYTES // dtype.itemsize)
        buf = np.empty(per_chunk, dtype=dtype)
        for first in range(0, n, per_chunk):
            part = buf[:min(per_chunk, n - first)]
            if f.readinto(memoryview(part).cast("B")) != part.nbytes:
                raise DatasetError(f"{path}: column {name!r} ended early; {REPACK_HINT}")
            reason = check(part, first)
            if reason is not None:
                raise DatasetError(f"{path}: {reason}; the index is corrupt or was tampered with, {REPACK_HINT}")


def read_column(path: str | os.PathLike, name: str, dtype, n: int, *, lo: int | None = None,
                hi: int | None = None, check: Callable[[np.ndarray, int], str | None] | None = None,
                promise: str | None = None) -> np.ndarray:
    """Column ``name`` of ``n`` values of ``dtype`` from ``path``, memory-mapped read-only.

    The header (dtype, shape, file size) is always checked. Values are checked
    by ``check`` (see :func:`scan_column`) or, given ``lo``/``hi``, must lie in
    ``[lo, hi]`` (either bound may be None); the first bad one is named in the
    :class:`DatasetError`. With neither, values are not read. ``promise``: where ``n``
    comes from, for the message (default: the manifest's record count).
    """
    path, dtype = Path(path), np.dtype(dtype)

    def in_range(chunk: np.ndarray, first: int) -> str | None:
        bad = np.zeros(chunk.shape, dtype=bool)
        if lo is not None:
            bad |= chunk < lo
        if hi is not None:
            bad |= chunk > hi
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            return (f"record {first + k} has {name} {chunk[k].item()}, outside "
                    f"[{'' if lo is None else lo}, {'' if hi is None else hi}]")
        return None

    if check is None and (lo is not None or hi is not None):
        check = in_range
    if check is not None:
        scan_column(path, name, dtype, n, check, promise)
    else:
        _open_checked(path, name, dtype, n, promise).close()
    if n == 0:
        return np.zeros(0, dtype=dtype)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DatasetError(f"{path}: cannot map column {name!r} ({e}); {REPACK_HINT}") from None


def monotone_from_zero(name: str = "source_offsets"):
    """A :func:`scan_column` check that ``name`` starts at 0 and never decreases; and a one-item list
    holding the last value checked (the end of the offsets)."""
    prev = [0]

    def check(chunk: np.ndarray, first: int) -> str | None:
        if first == 0 and chunk[0] != 0:
            return f"{name} must start at 0"
        steps = np.diff(chunk, prepend=prev[0])
        if (steps < 0).any():
            return f"{name} decrease at record {first + int(np.flatnonzero(steps < 0)[0]) - 1}"
        prev[0] = int(chunk[-1])
        return None
    return check, prev
