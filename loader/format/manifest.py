"""The index of a packed dataset: ``DST/manifest.json`` plus per-record columns beside it.

Version 4 (written since loader 0.3; version 3, loader 0.2, is the same without the label
keys and columns): ``manifest.json`` is a small JSON header (format, version, classes, where
the labels came from, shards, counts, pack parameters); per-record data are ``.npy`` columns
in global record order, memory-mapped and validated with numpy (:mod:`loader.format.columns`), so a
dataset of any size opens in about the same time and every process on a machine shares one
copy:

====================== ======= ================================================
file                   dtype   per record
====================== ======= ================================================
``labels.npy``         int32   class index; -1 for every record when unlabeled or multi-label
``heights.npy``        int32   height of the stored, upright image
``widths.npy``         int32   width
``checksums.npy``      uint32  CRC-32 of the record's bytes
``keys.npy``           int32   LMDB key number (in its shard) of its value
``offsets.npy``        uint32  where the record starts in that value
``lengths.npy``        uint32  its length in bytes
``converted.npy``      uint8   0: stored byte-for-byte; k: ``conversions[k-1]``
``source_offsets.npy`` int64   ``n + 1`` offsets into ``sources.bin``
``label_offsets.npy``  int64   multi-label only: ``n + 1`` offsets into ``label_values``
``label_values.npy``   int32   multi-label only: record i's classes are
                               ``label_values[label_offsets[i]:label_offsets[i + 1]]``,
                               sorted, unique (a CSR matrix)
====================== ======= ================================================

Version 5 is version 4 plus ``index_generation`` (an int from 1) naming the columns and sources
``labels.<g>.npy`` ... ``sources.<g>.bin``: only an ``overwrite`` of a live dataset in an object
store writes it (its index must not touch the live one's names: :mod:`loader.storage.remotepack`);
every other pack writes version 4. A new version, not an optional key: a reader ignoring the key
would read the plain-named files, which may still be the previous dataset's.

Header keys new in version 4: ``label_source`` (``"folders"``: one sub-folder per class;
``"file"``: a labels file, ``pack --labels``; ``"none"``: ``pack --unlabeled``, no classes),
``multi_label`` (bool; only with ``"file"``) and ``unlisted`` (files under SRC that the labels
file did not list, so were not packed; 0 otherwise). A version 3 index reads as ``"folders"``,
single-label, 0 unlisted (its ``version`` stays 3).

``sources.bin`` holds the source paths (relative to SRC, ``/`` separators,
UTF-8 with surrogate escapes) end to end; it is read only when a path is
asked for (:meth:`Manifest.source`: ``verify``, error messages).

Several small records share one LMDB value (:mod:`loader.format.shards`), so a
record is ``value[offset:offset + length]`` of the value stored under key
``keys[i]`` in the shard with the largest ``first <= i``.

Nothing is pickled: ``np.load(..., allow_pickle=False)``. Versions 1 and 2
(one JSON file holding every list, one record per LMDB value) are still read,
as before (:mod:`loader.format.manifest_legacy`); re-pack to get version 4.

>>> m = read_manifest("photos.packed")                  # doctest: +SKIP
>>> m.num_records, m.classes, m.shards[0].name, m.source(0)  # doctest: +SKIP
(3000, ('cat', 'dog'), 'shard-00000.lmdb', 'cat/001.jpg')
"""

from __future__ import annotations

import glob
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loader.errors import DatasetError
from loader.format.columns import (
    COLUMNS,
    LABEL_COLUMNS,
    MAX_GENERATION,
    SOURCES_NAME,
    index_file_generation,
    index_files,
    monotone_from_zero,
    read_column,
    scan_column,
)
from loader.format.files import DIGEST_RE, REPACK_HINT, check_inside, read_json
from loader.format.labelcsr import read_label_csr
from loader.format.shards import ShardInfo, check_shard_name, parse_shards

__all__ = [
    "COLUMNS",
    "FORMAT",
    "LABEL_COLUMNS",
    "LABEL_SOURCES",
    "MANIFEST_NAME",
    "SKIPPED_NAME",
    "SOURCES_NAME",
    "VERSION",
    "Manifest",
    "is_dataset_file_name",
    "ShardInfo",
    "check_shard_name",
    "index_file_generation",
    "index_files",
    "index_generation",
    "read_manifest",
    "record_checksum",
]

FORMAT = "loader.lmdb-shards"
VERSION = 4                       # what pack writes; 5 only for a remote overwrite (module docstring)
GENERATION_VERSION = 5
GENERATION_KEY = "index_generation"
READABLE_VERSIONS = (1, 2, 3, 4, 5)
MANIFEST_NAME = "manifest.json"
SKIPPED_NAME = "skipped.tsv"
SUSPECT_NAME = "suspect.tsv"      # pack keep_suspect=True: the suspect files it stored (as skipped.tsv)
LABEL_SOURCES = ("folders", "file", "none")
_HEADER_KEYS_V3 = ("format", "version", "classes", "shards", "num_records", "conversions",
                   "pack_params", "skipped")
_HEADER_KEYS = ("format", "version", "classes", "label_source", "multi_label", "shards", "num_records",
                "conversions", "pack_params", "skipped", "unlisted")
_HEADER_KEYS_V5 = (*_HEADER_KEYS, GENERATION_KEY)
_INT32_MAX = 2**31 - 1
# Shard files pack writes: shard_name(i), and the -lock file an early release could leave.
_SHARD_FILE = re.compile(r"shard-\d{5,}\.lmdb(-lock)?")


def index_generation(obj: object, where: str) -> int:
    """The generation of the index files a manifest header ``obj`` names: its ``index_generation`` if it
    is version 5, else 0 (the plain names; a header that is no loader manifest is left to
    :func:`read_manifest` to refuse). A version 5 header with a missing or bad one is a
    :class:`DatasetError` naming ``where``."""
    if not isinstance(obj, dict) or type(obj.get("version")) is not int or obj["version"] != GENERATION_VERSION:
        return 0
    if GENERATION_KEY not in obj:      # as read_manifest says of any missing key
        raise DatasetError(f"{where}: missing keys {GENERATION_KEY}")
    g = obj[GENERATION_KEY]
    if type(g) is not int or not 1 <= g <= MAX_GENERATION:
        raise DatasetError(f"{where}: bad {GENERATION_KEY!r} {g!r}: it names the index files (labels.<g>.npy, "
                           f"...) and must be a whole number from 1 to {MAX_GENERATION}; {REPACK_HINT}")
    return g


def is_dataset_file_name(name: str) -> bool:
    """Whether pack writes files called ``name`` into a packed dataset's folder (any version).

    >>> is_dataset_file_name("labels.npy"), is_dataset_file_name("labels.3.npy"), is_dataset_file_name("notes.txt")
    (True, True, False)
    >>> is_dataset_file_name("shard-00012.lmdb")
    True
    """
    return (name in (MANIFEST_NAME, SKIPPED_NAME, SUSPECT_NAME)
            or index_file_generation(name) is not None
            or _SHARD_FILE.fullmatch(name) is not None)


def record_checksum(data: bytes, version: int = VERSION) -> str:
    """Checksum a manifest of ``version`` keeps for a record's bytes, as hex.

    CRC-32 since version 2: it guards against corruption (bit rot, torn or
    truncated writes), not tampering, and costs ~15 us for a 65 KB JPEG where
    blake2b took ~80 us, ~5% of a pack worker's time per image.

    >>> record_checksum(b"abc")
    '352441c2'
    >>> record_checksum(b"abc", version=1)
    'd8bb14d833d59559'
    """
    if version == 1:
        import hashlib

        return hashlib.blake2b(data, digest_size=8).hexdigest()
    return f"{zlib.crc32(data):08x}"


class _LegacyRecords:
    """Checksums, sources and conversions of a version 1/2 manifest (parsed JSON lists)."""

    def __init__(self, version: int, checksums: tuple, sources: tuple, converted: tuple):
        self.checksums, self.sources, self.converted_list = checksums, sources, converted
        self._version = version
        self._crc: np.ndarray | None = None

    @property
    def crc32(self) -> np.ndarray | None:
        if self._version == 1:
            return None
        if self._crc is None:
            self._crc = np.array([int(c, 16) for c in self.checksums], dtype=np.uint32)
        return self._crc

    def checksum(self, i: int) -> str:
        return self.checksums[i]

    def source(self, i: int) -> str:
        return self.sources[i]

    def converted(self, i: int) -> str | None:
        return self.converted_list[i]

    def num_converted(self) -> int:
        return sum(c is not None for c in self.converted_list)


class _ColumnRecords:
    """The same since version 3: columns mapped on first use; ``sources.bin`` only when asked."""

    def __init__(self, path: Path, n: int, conversions: tuple[str, ...], converted: np.ndarray,
                 files: dict[str, str]):
        self._path, self._n, self._conversions, self._converted = path, n, conversions, converted
        self._files = files
        self._crc: np.ndarray | None = None
        self._offsets: np.ndarray | None = None
        self._blob: np.ndarray | None = None

    @property
    def crc32(self) -> np.ndarray:
        if self._crc is None:
            self._crc = np.asarray(read_column(self._path / self._files["checksums"], "checksums",
                                               COLUMNS["checksums"][1], self._n))
        return self._crc

    def checksum(self, i: int) -> str:
        return f"{int(self.crc32[i]):08x}"

    def source(self, i: int) -> str:
        if self._blob is None:
            self._offsets = np.asarray(read_column(self._path / self._files["source_offsets"],
                                                   "source_offsets", COLUMNS["source_offsets"][1],
                                                   self._n + 1))
            size = int(self._offsets[-1])
            self._blob = (np.memmap(self._path / self._files["sources"], dtype=np.uint8, mode="r", shape=(size,))
                          if size else np.zeros(0, dtype=np.uint8))
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return bytes(self._blob[a:b]).decode("utf-8", "surrogateescape")

    def converted(self, i: int) -> str | None:
        code = int(self._converted[i])
        return None if code == 0 else self._conversions[code - 1]

    def num_converted(self) -> int:
        return int(np.count_nonzero(self._converted))


@dataclass(frozen=True, eq=False)
class Manifest:
    """Everything about a packed dataset except the image bytes (see the module docstring).

    ``labels``, ``heights``, ``widths`` (and, since version 3, ``keys``,
    ``offsets``, ``lengths``) are read-only arrays, memory-mapped since version 3.
    Checksums, sources and conversions are read per record with
    :meth:`checksum`, :meth:`source` and :meth:`converted`.

    Labels: ``label_source`` says where they came from: ``"folders"`` (one sub-folder per
    class; every index before version 4), ``"file"`` (``pack --labels``) or ``"none"``
    (``pack --unlabeled``: ``classes`` is empty). ``multi_label``: each record has a set of
    classes, the rows of the CSR ``label_offsets`` (int64, ``n + 1``) / ``label_values``
    (int32, sorted unique class indices per record); both are None unless ``multi_label``.
    ``labels`` holds -1 for every record when unlabeled or multi-label. ``unlisted``: files
    under SRC the labels file did not list (not packed); 0 otherwise.
    """

    format: str
    version: int
    classes: tuple[str, ...]
    shards: tuple[ShardInfo, ...]
    num_records: int
    labels: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    keys: np.ndarray | None          # None before version 3: record k of a shard is value k, whole
    offsets: np.ndarray | None
    lengths: np.ndarray | None
    pack_params: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0
    label_source: str = "folders"    # "folders" | "file" | "none"
    multi_label: bool = False
    unlisted: int = 0
    label_offsets: np.ndarray | None = None   # multi-label only: int64 [n + 1]
    label_values: np.ndarray | None = None    # multi-label only: int32, sorted unique per record
    shard_digests: tuple[str | None, ...] = ()  # per shard: files.file_digest of the file, None if unrecorded
    _records: Any = field(default=None, repr=False)

    def checksum(self, i: int) -> str:
        """Checksum of record ``i``'s bytes, as :func:`record_checksum` writes it."""
        return self._records.checksum(i)

    @property
    def crc32(self) -> np.ndarray | None:
        """CRC-32 of every record (uint32 array), or None for version 1 (blake2b) manifests."""
        return self._records.crc32

    def source(self, i: int) -> str:
        """Path of record ``i``'s source file, relative to the SRC it was packed from."""
        return self._records.source(i)

    def converted(self, i: int) -> str | None:
        """What pack did to record ``i`` (e.g. ``"exif-rotate"``), or None if stored as-is."""
        return self._records.converted(i)

    def num_converted(self) -> int:
        """Records pack converted rather than stored byte-for-byte."""
        return self._records.num_converted()


# ---------------------------------------------------------------- reading


def _check_header(obj: object, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise DatasetError(f"{where}: not a loader manifest (format {found!r}, expected {FORMAT!r})")
    version = obj.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise DatasetError(f"{where}: unsupported manifest version {version!r} (this loader reads "
                           f"versions {', '.join(map(str, READABLE_VERSIONS))}); "
                           f"{REPACK_HINT} or use a matching loader release")
    return obj


def _keys_in_shards(shards: tuple[ShardInfo, ...]):
    def check(chunk: np.ndarray, first: int) -> str | None:
        end = first + len(chunk)
        for s in shards:     # the shards this chunk of records overlaps
            a, b = max(s.first, first), min(s.first + s.records, end)
            if a >= b:
                continue
            part = chunk[a - first:b - first]
            if part.min() < 0 or part.max() >= s.entries:
                k = int(np.flatnonzero((part < 0) | (part >= s.entries))[0])
                return (f"record {a + k} has key {int(part[k])}, outside shard {s.name}'s "
                        f"{s.entries} values")
        return None
    return check


def _all_minus_one(why: str):
    def check(chunk: np.ndarray, first: int) -> str | None:
        bad = chunk != -1
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            return f"record {first + k} has labels {chunk[k].item()}, but {why} stores -1 for every record"
        return None
    return check


def _label_keys(obj: dict[str, Any], where: str, version: int, num_classes: int) -> tuple[str, bool, int]:
    """``(label_source, multi_label, unlisted)`` of a header, validated (version 3: the defaults)."""
    if version == 3:
        return "folders", False, 0
    source, multi, unlisted = obj["label_source"], obj["multi_label"], obj["unlisted"]
    if not isinstance(source, str) or source not in LABEL_SOURCES:
        raise DatasetError(f"{where}: 'label_source' must be one of {', '.join(LABEL_SOURCES)} "
                           f"(got {source!r}); {REPACK_HINT}")
    if type(multi) is not bool or (multi and source != "file"):
        raise DatasetError(f"{where}: 'multi_label' must be true or false, and true only with "
                           f"label_source 'file' (got {multi!r} with {source!r}); {REPACK_HINT}")
    if type(unlisted) is not int or unlisted < 0:
        raise DatasetError(f"{where}: bad 'unlisted' {unlisted!r} (a count of files); {REPACK_HINT}")
    if source == "none" and num_classes:
        raise DatasetError(f"{where}: an unlabeled dataset (label_source 'none') has no classes, "
                           f"but 'classes' lists {num_classes}; {REPACK_HINT}")
    return source, multi, unlisted


def _shard_digests(raw: list, where: str) -> tuple[str | None, ...]:
    """Each shard entry's optional ``digest`` (since loader 0.4; absent in older indexes), checked."""
    digests = tuple(s.get("digest") for s in raw)
    for s, d in zip(raw, digests):
        if d is not None and not (isinstance(d, str) and DIGEST_RE.fullmatch(d)):
            raise DatasetError(f"{where}: shard {s.get('name')!r} has a bad digest {d!r} (expected "
                               f"sha256:<64 hex digits>); {REPACK_HINT}")
    return digests


def _read_v3(path: Path, obj: dict[str, Any], where: str) -> Manifest:
    """A version 3, 4 or 5 index (version 3: no label keys, read as folders, single-label; version 5:
    the files named with its ``index_generation``)."""
    version = obj["version"]
    required = {3: _HEADER_KEYS_V3, 4: _HEADER_KEYS, GENERATION_VERSION: _HEADER_KEYS_V5}[version]
    missing = [k for k in required if k not in obj]
    if missing:
        raise DatasetError(f"{where}: missing keys {', '.join(missing)}")
    files = index_files(index_generation(obj, where))
    n = obj["num_records"]
    if type(n) is not int or not 0 <= n <= _INT32_MAX:
        raise DatasetError(f"{where}: bad num_records {n!r}")
    classes = obj["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{where}: 'classes' must be a list of strings")
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{where}: duplicate class names")
    conversions = obj["conversions"]
    if (not isinstance(conversions, list) or not all(isinstance(c, str) for c in conversions)
            or len(conversions) > 255):
        raise DatasetError(f"{where}: 'conversions' must be a list of at most 255 strings")
    if not isinstance(obj["pack_params"], dict) or type(obj["skipped"]) is not int or obj["skipped"] < 0:
        raise DatasetError(f"{where}: bad 'pack_params' or 'skipped'")
    shards = parse_shards(obj["shards"], where, with_values=True)
    digests = _shard_digests(obj["shards"], where)
    held = sum(s.records for s in shards)
    if held != n:
        raise DatasetError(f"{where}: shards hold {held} records in all but num_records is {n}")

    def col(name: str, **kw) -> np.ndarray:
        return np.asarray(read_column(path / files[name], name, COLUMNS[name][1], n, **kw))

    label_source, multi, unlisted = _label_keys(obj, where, version, len(classes))
    if multi or label_source == "none":
        labels = col("labels", check=_all_minus_one("a multi-label dataset" if multi else
                                                    "an unlabeled dataset"))
    else:
        labels = col("labels", lo=0, hi=len(classes) - 1)
    heights = col("heights", lo=1)
    widths = col("widths", lo=1)
    keys = col("keys", check=_keys_in_shards(shards))
    offsets = col("offsets")                 # checked against the values when read
    lengths = col("lengths", lo=1)
    converted = col("converted", hi=len(conversions))
    col("checksums")                         # present, right dtype and length; mapped when used
    check, last = monotone_from_zero()
    scan_column(path / files["source_offsets"], "source_offsets", COLUMNS["source_offsets"][1], n + 1, check)
    blob = path / files["sources"]
    check_inside(blob, "the file of source paths")
    try:
        blob_size = blob.stat().st_size
    except OSError:
        raise DatasetError(f"{blob} is missing (the source paths of the index); {REPACK_HINT}") from None
    if last[0] != blob_size:
        raise DatasetError(f"{blob} is {blob_size} bytes but source_offsets end at {last[0]}; {REPACK_HINT}")
    label_offsets, label_values = read_label_csr(path, n, len(classes), files) if multi else (None, None)
    return Manifest(format=FORMAT, version=version, classes=tuple(classes), shards=shards, num_records=n,
                    labels=labels, heights=heights, widths=widths, keys=keys, offsets=offsets,
                    lengths=lengths, pack_params=obj["pack_params"], skipped=obj["skipped"],
                    label_source=label_source, multi_label=multi, unlisted=unlisted,
                    label_offsets=label_offsets, label_values=label_values, shard_digests=digests,
                    _records=_ColumnRecords(path, n, tuple(conversions), converted, files))


def _interrupted_hint(dst: str | os.PathLike) -> str:
    """Where an interrupted ``pack --overwrite`` left the previous dataset, if it did (see
    :mod:`loader.convert.destination`), for the message of a DST that has no manifest."""
    left = sorted(glob.glob(glob.escape(os.fspath(dst).rstrip("/\\")) + ".old-*-*"))
    if not left:
        return ""
    return (f"; {left[-1]} may hold the previous dataset, left by a pack that was interrupted while "
            f"replacing it: the next `loader pack` to {dst} moves it back")


def read_manifest(dst: str | os.PathLike) -> Manifest:
    """Read and validate the index of the packed dataset at ``dst`` (any readable version).

    >>> read_manifest("photos.packed").num_records       # doctest: +SKIP
    3000
    """
    path = Path(dst) / MANIFEST_NAME
    try:
        obj = read_json(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"not a packed dataset: {dst} has no {MANIFEST_NAME}; create one with "
                           f"`loader pack SRC DST`{_interrupted_hint(dst)}") from None
    obj = _check_header(obj, str(path))
    if obj["version"] >= 3:
        return _read_v3(Path(dst), obj, str(path))
    from loader.format.manifest_legacy import parse_legacy

    f = parse_legacy(obj, str(path))
    return Manifest(format=FORMAT, version=obj["version"], classes=f["classes"], shards=f["shards"],
                    num_records=f["num_records"], labels=f["labels"], heights=f["heights"],
                    widths=f["widths"], keys=None, offsets=None, lengths=None,
                    pack_params=f["pack_params"], skipped=f["skipped"],
                    _records=_LegacyRecords(obj["version"], f["checksums"], f["sources"], f["converted"]))
