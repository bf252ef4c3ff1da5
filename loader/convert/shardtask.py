"""One shard of ``pack``: check each of its files, write its LMDB file, return its index columns.

Both engines write a shard with :func:`write_shard`: the local engine in the parent process, fed by
a process pool that checks the files (:func:`_process`), one shard after another; the Ray engine
(:mod:`loader.convert.rayengine`) in one Ray task per shard (:func:`run_shard`: it checks the files
itself). So a shard's bytes do not depend on the engine: the same files in the same order through
the same code. A shard's result (:class:`ShardResult`) is numpy columns plus the skipped and
suspect rows; the caller appends it to the index (:func:`add_result`) in shard order.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from loader.convert.imagecheck import BadImage, CheckedImage, check_bytes, read_capped
from loader.convert.indexwriter import IndexWriter
from loader.convert.remotesrc import RemoteFile, is_remote_src, read_file
from loader.errors import PackError
from loader.format.manifest import COLUMNS, SKIPPED_NAME
from loader.format.shards import BLOCK_BYTES, ShardInfo, ShardWriter

__all__ = ["ShardResult", "add_result", "items_slice", "run_shard", "shard_map_size", "source_paths", "write_shard"]

_KEEP, _DATA, _BAD = 0, 1, 2  # kinds of per-file results
# The per-record columns a shard returns (the index's, but the source offsets: the driver has the paths).
_FIELDS = ("labels", "heights", "widths", "checksums", "keys", "offsets", "lengths", "converted")


@dataclass
class ShardResult:
    """What writing one shard gave: its counts, a per-record column each (records kept, in order),
    which of its items were kept, the skipped and suspect ``(relpath, reason)`` rows, and the
    digest of its file (``run_shard`` only; None from the local engine, which digests at the end)."""

    records: int
    payload_bytes: int
    values: int
    columns: dict[str, np.ndarray]
    conversions: tuple[str, ...]       # local code k + 1 in columns["converted"] -> the conversion's name
    kept: np.ndarray                   # bool per item of the shard
    skipped: list[tuple[str, str]] = field(default_factory=list)
    suspect: list[tuple[str, str]] = field(default_factory=list)
    digest: str | None = None


def _file_sig(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _result(c: CheckedImage, sig: tuple | None) -> tuple:
    if c.converted is None and sig is not None:
        # Stored as-is: the parent reads the file itself (from the page cache)
        # instead of receiving it through a pipe -- that transfer would cost
        # the parent more CPU than all its other work together.
        return _KEEP, c.height, c.width, zlib.crc32(c.data), sig, c.suspect
    return _DATA, c.data, c.height, c.width, c.converted, zlib.crc32(c.data), c.suspect


def _read(path: str | RemoteFile) -> tuple[bytes, tuple | None]:
    """The bytes of the file at ``path`` (at most MAX_FILE_BYTES: BadImage beyond) and its signature
    (None for an object in a bucket: its bytes always come back, never read twice).

    Opened without blocking: the scan lists regular files only, but one replaced by a FIFO since
    would block ``open`` forever (and a device never ends); such a file is a BadImage.
    """
    if isinstance(path, RemoteFile):
        return read_file(path), None
    with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BadImage("not a regular file (a FIFO, device or socket); leave it out of SRC")
        return read_capped(f, st.st_size), _file_sig(st)


def _process(path: str, max_side: int | None, quality: int, keep_suspect: bool, inline: bool = False) -> tuple:
    """Check one file. Returns one of ``(_KEEP, height, width, checksum, file_sig, suspect)``,
    ``(_DATA, data, height, width, converted, checksum, suspect)``, ``(_BAD, reason)``.
    ``inline``: the caller writes the shard itself, so the bytes come back (never ``_KEEP``)."""
    try:
        data, sig = _read(path)
        c = check_bytes(data, max_side=max_side, quality=quality, keep_suspect=keep_suspect)
    except OSError as e:
        return _BAD, f"cannot read file: {e.strerror or e}"
    except BadImage as e:
        return _BAD, e.reason
    return _result(c, None if inline else sig)


def _load_kept(path: str, r: tuple, max_side: int | None, quality: int, keep_suspect: bool) -> tuple:
    """Parent: turn a ``_KEEP`` result into a ``_DATA`` one by reading the file.

    If the file changed since the worker checked it (other inode, size or
    mtime), what was read now is checked again here: only checked bytes are
    stored. (``loader verify`` compares checksums, as a last line of defence.)
    """
    _, height, width, checksum, sig, suspect = r
    try:
        data, now = _read(path)
    except OSError as e:
        return _BAD, f"cannot read file: {e.strerror or e}"
    except BadImage as e:
        return _BAD, e.reason
    if now == sig and len(data) == now[2]:
        return _DATA, data, height, width, None, checksum, suspect
    try:
        return _result(check_bytes(data, max_side=max_side, quality=quality, keep_suspect=keep_suspect), None)
    except BadImage as e:
        return _BAD, e.reason


def shard_map_size(sizes: np.ndarray) -> int:
    """The first LMDB map size of a shard whose files have ``sizes`` bytes. LMDB records it in the
    file's header, so it must be the same whoever writes the shard: a function of the plan only."""
    return int(sizes.sum() * 1.2) + 64 * 2**20


def items_slice(items, lo: int, hi: int):
    """Items ``[lo, hi)`` of a :class:`~loader.convert.scan.Items`, compact (its paths blob sliced)."""
    ends = items._ends
    a = int(ends[lo - 1]) if lo else 0
    b = int(ends[hi - 1]) if hi > lo else a
    return type(items)(items._blob[a:b], ends[lo:hi] - a, items.labels[lo:hi])


def write_shard(path: str | os.PathLike, items, results: Iterator[tuple], *, src, map_size: int,
                max_side: int | None, quality: int, keep_suspect: bool, strict: bool,
                tick: Callable[[int], object] | None = None) -> ShardResult:
    """Write the shard file ``path`` from ``items`` (:class:`~loader.convert.scan.Items`, relative to
    ``src``) and their check ``results`` (one :func:`_process` tuple per item, in order; the
    iterator may go on past them). ``strict``: the first bad file raises :class:`PackError`
    naming it. ``tick(1)`` after each file (a progress bar)."""
    n = len(items)
    cols = {name: np.zeros(n, dtype=COLUMNS[name][1]) for name in _FIELDS}
    kept = np.zeros(n, dtype=bool)
    codes: dict[str, int] = {}
    skipped: list[tuple[str, str]] = []
    suspect: list[tuple[str, str]] = []
    prefix = os.path.join(src, "")
    m = 0
    with ShardWriter(path, map_size=map_size, block_bytes=BLOCK_BYTES) as w:
        for j, (rel, label) in enumerate(items):
            r = next(results)
            if tick is not None:
                tick(1)
            if r[0] == _KEEP:
                r = _load_kept(prefix + rel, r, max_side, quality, keep_suspect)
            if r[0] == _BAD:
                if strict:
                    raise PackError(f"bad image {os.path.join(src, rel)}: {r[1]} (strict=True stops at the first "
                                    f"bad file; without it bad files are skipped and listed in "
                                    f"DST/{SKIPPED_NAME})", param="strict")
                skipped.append((rel, r[1]))
                continue
            _, data, height, width, converted, crc, why = r
            if why is not None:
                suspect.append((rel, why))
            key, offset = w.append(data)
            row = (label, height, width, crc, key, offset, len(data),
                   0 if converted is None else codes.setdefault(converted, len(codes) + 1))
            for name, value in zip(_FIELDS, row):
                cols[name][m] = value
            kept[j] = True
            m += 1
    return ShardResult(records=w.count, payload_bytes=w.payload_bytes, values=w.values,
                       columns={k: v[:m] for k, v in cols.items()}, conversions=tuple(codes), kept=kept,
                       skipped=skipped, suspect=suspect)


def run_shard(path: str | os.PathLike, items, *, src, map_size: int, max_side: int | None, quality: int,
              keep_suspect: bool, strict: bool) -> ShardResult:
    """:func:`write_shard` checking the files in this process (a Ray task), then the file's digest."""
    from loader.format.files import file_digest

    results = (_process(p, max_side, quality, keep_suspect, inline=True) for p in source_paths(src, items))
    res = write_shard(path, items, results, src=src, map_size=map_size, max_side=max_side, quality=quality,
                      keep_suspect=keep_suspect, strict=strict)
    res.digest = file_digest(path)
    return res


def source_paths(src, items) -> Iterator[str | RemoteFile]:
    """What the per-file check reads for each item of ``items`` (relative to ``src``): its path, or, for
    a bucket SRC (an ``s3://``, ``gs://``, ``az://`` URL), a :class:`~loader.convert.remotesrc.RemoteFile`."""
    if is_remote_src(src):
        return (RemoteFile(src, rel) for rel, _ in items)
    prefix = os.path.join(src, "")   # paths are built when used: no list of 1.281M strings
    return (prefix + rel for rel, _ in items)


def add_result(index: IndexWriter, res: ShardResult, items, lo: int, name: str) -> ShardInfo:
    """Append shard ``name``'s records (``res``; its items start at ``lo`` of ``items``) to ``index``;
    return its :class:`ShardInfo`. Vectorised: the kept paths are gathered from the paths blob."""
    first = index.count
    rows = lo + np.flatnonzero(res.kept)
    ends = items._ends
    starts = np.where(rows > 0, ends[rows - 1], 0) if len(rows) else np.zeros(0, np.int64)
    lengths = ends[rows] - starts
    blob = np.frombuffer(items._blob, dtype=np.uint8)
    source_ends = np.cumsum(lengths, dtype=np.int64)
    ranks = np.arange(int(source_ends[-1]) if len(rows) else 0) - np.repeat(source_ends - lengths, lengths)
    sources = blob[np.repeat(starts, lengths) + ranks].tobytes()
    c = res.columns
    index.extend(labels=c["labels"], heights=c["heights"], widths=c["widths"], crcs=c["checksums"],
                 keys=c["keys"], offsets=c["offsets"], lengths=c["lengths"], sources=sources,
                 source_ends=source_ends, converted=c["converted"], conversions=res.conversions)
    return ShardInfo(name, first, res.records, res.payload_bytes, res.values)
