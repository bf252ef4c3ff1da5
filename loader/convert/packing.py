"""``pack``: convert an image folder into LMDB shards plus a manifest.

Stages: :mod:`loader.convert.scan` lists the files, :mod:`loader.convert.imagecheck` decodes
each one (in a process pool) and decides what bytes to store, :mod:`loader.convert.shardtask`
writes them into shards (:mod:`loader.format.shards`; with ``engine="ray"``, one Ray task per
shard: :mod:`loader.convert.rayengine`), then this module writes the index
(:mod:`loader.convert.indexwriter`) and ``skipped.tsv``, in a folder that
:mod:`loader.convert.destination` installs at DST.

Guarantees:

* Deterministic: the output depends only on the input and the options, never
  on ``workers`` nor on the engine. Items are split into contiguous ranges, one per shard
  (shard ``s`` gets items ``[s*n//S, (s+1)*n//S)``); bad files are skipped
  inside their shard; records are numbered in shard order.
* Atomic: everything is written to ``DST.partial-<pid>`` next to DST and
  renamed to DST only when complete. ``overwrite=True`` moves the old DST
  aside, moves the new one in, then deletes the old one. Killed at any point,
  DST holds the previous complete dataset or nothing.
* Bad files are skipped and listed in ``DST/skipped.tsv`` (or, with
  ``strict=True``, the first one stops the pack with :class:`PackError`).
  So are files over :data:`~loader.convert.imagecheck.MAX_FILE_BYTES` (never read whole) and
  suspect JPEGs (:func:`~loader.convert.imagecheck.suspect_reason`: data missing, filled in
  as grey), unless ``keep_suspect=True`` stores those and lists them in ``DST/suspect.tsv``.
* Out of disk space (or an I/O error) while writing: :class:`PackError` naming the file
  system and its free space; nothing is left at DST.

Label sources: the class folders (default; ``classes=`` / ``classes_from=`` pin the class
list and order), a labels file (``labels=``: CSV or JSON Lines, records in its row order,
:mod:`loader.convert.labelfile`) or none (``unlabeled=True``: every file under SRC).

>>> report = pack("photos/", "photos.packed")           # doctest: +SKIP
>>> print(report.summary())  # doctest: +SKIP
packed 2998 images (2 skipped) into photos.packed: 2 classes, 1 shard, ...
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lmdb
import numpy as np
from tqdm import tqdm

from loader.convert.destination import check_dst, install, make_partial, remove_stale, write_error
from loader.convert.imagecheck import MAX_FILE_BYTES
from loader.convert.indexwriter import IndexWriter
from loader.convert.options import MAX_SHARDS, check_engine, check_label_options, check_options, check_shuffle_seed
from loader.convert.remotesrc import check_dst_outside, is_remote_src, list_src, store_env, use_store_env
from loader.convert.scan import Items, check_src, class_folders, scan, scan_unlabeled

# The per-file check, re-exported: tests (and pack's earlier releases) import them from here.
from loader.convert.shardtask import _BAD as _BAD
from loader.convert.shardtask import _DATA as _DATA
from loader.convert.shardtask import _KEEP as _KEEP
from loader.convert.shardtask import ShardResult, add_result, items_slice, shard_map_size, source_paths, write_shard
from loader.convert.shardtask import _load_kept as _load_kept
from loader.convert.shardtask import _process as _process
from loader.errors import PackError
from loader.format.files import add_shard_digests
from loader.format.manifest import SKIPPED_NAME
from loader.format.shards import BLOCK_BYTES, ShardInfo, shard_name
from loader.rng import PACK_ORDER
from loader.storage.store import is_url, split_url
from loader.units import MB

#: Default ``shard_size_mb`` when DST is an object-store URL (docs/remote.md says why).
REMOTE_SHARD_SIZE_MB = 64

__all__ = ["REMOTE_SHARD_SIZE_MB", "SUSPECT_NAME", "PackReport", "pack", "plan_shards", "shard_ranges"]

# With keep_suspect=True: the suspect files that were stored, and why (source, reason; as skipped.tsv).
SUSPECT_NAME = "suspect.tsv"

# Items per pool task: 32 amortises the pool's per-task IPC (+5% pack rate over
# 16, measured here), but at least ~8 tasks per worker keep the ends even.
_CHUNKSIZE = 32
_TASKS_PER_WORKER = 8


@dataclass(frozen=True)
class PackReport:
    """What :func:`pack` did. ``seconds`` covers the whole pack."""

    dst: str
    num_records: int
    num_skipped: int
    skipped: tuple[tuple[str, str], ...]   # (relpath, reason)
    classes: tuple[str, ...]
    shards: int
    seconds: float
    images_per_sec: float
    mb_per_sec: float
    input_bytes: int
    output_bytes: int
    num_unlisted: int = 0        # files under SRC the labels file does not list (not packed)
    label_source: str = "folders"   # "folders" | "file" | "none"
    multi_label: bool = False
    suspect: tuple[tuple[str, str], ...] = ()   # stored with keep_suspect=True: (relpath, reason)

    def summary(self) -> str:
        """One line for humans.

        >>> r = PackReport("out", 98, 2, (), ("a", "b"), 1, 2.0, 50.0, 5.0, 10**7, 10**7)
        >>> r.summary()
        'packed 98 images (2 skipped) into out: 2 classes, 1 shard, 10.0 MB -> 10.0 MB in 2.0 s (50 images/s, 5.0 MB/s)'
        >>> PackReport("out", 98, 0, (), ("a", "b"), 1, 2.0, 50.0, 5.0, 10**7, 10**7, num_unlisted=3,
        ...            label_source="file", multi_label=True).summary()[:76]
        'packed 98 images (0 skipped, 3 unlisted) into out: 2 classes (multi-label), '
        """
        unlisted = f", {self.num_unlisted} unlisted" if self.label_source == "file" else ""
        if self.label_source == "none":
            classes = "unlabeled"
        else:
            classes = f"{len(self.classes)} classes{' (multi-label)' * self.multi_label}"
        suspect = f", {len(self.suspect)} suspect kept" if self.suspect else ""
        return (f"packed {self.num_records} images ({self.num_skipped} skipped{unlisted}{suspect}) into {self.dst}: "
                f"{classes}, {self.shards} shard{'s' * (self.shards != 1)}, "
                f"{self.input_bytes / MB:.1f} MB -> {self.output_bytes / MB:.1f} MB in "
                f"{self.seconds:.1f} s ({self.images_per_sec:.0f} images/s, {self.mb_per_sec:.1f} MB/s)")


# ---------------------------------------------------------------- planning


def plan_shards(total_bytes: int, num_items: int, shards: int | None, shard_size_mb: float) -> int:
    """Number of shards: ``shards`` if given, else ``ceil(total / shard size)``;
    at least 1, at most one per image and at most ``MAX_SHARDS``. Never depends on ``workers``.

    >>> plan_shards(1_300 * MB, 5000, None, 512)
    3
    >>> plan_shards(10, 2, 8, 512)
    2
    """
    if shards is None:
        shards = math.ceil(total_bytes / (shard_size_mb * MB))
    return max(1, min(shards, num_items, MAX_SHARDS))


def shard_ranges(n: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous item ranges ``[lo, hi)``, one per shard.

    >>> shard_ranges(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    """
    return [(s * n // num_shards, (s + 1) * n // num_shards) for s in range(num_shards)]


# ---------------------------------------------------------------- workers


def _init_worker(env: dict | None = None) -> None:
    # Ctrl-C is handled by the parent (it terminates the pool); workers just stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    use_store_env(env)      # a bucket SRC: the parent's store settings, not those the forkserver started with
    if sys.platform.startswith("linux"):
        try:  # die with the parent even if it is SIGKILLed (PR_SET_PDEATHSIG)
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)
        except Exception:
            pass


def _pool_context(clean: bool = False) -> mp.context.BaseContext:
    # fork starts workers instantly, but forking a process that has loaded
    # torch or DALI (threads, CUDA) is unsafe: then start clean ones instead.
    heavy = clean or any(m in sys.modules for m in ("torch", "nvidia.dali"))
    if sys.platform.startswith("linux") and not heavy:
        return mp.get_context("fork")
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def _results(paths: Iterator, n: int, workers: int, max_side: int | None, quality: int,
             keep_suspect: bool, stack: list, clean: bool = False) -> Iterator[tuple]:
    # clean: a bucket SRC, read in the workers: obstore, which listed it here, does not survive fork().
    fn = partial(_process, max_side=max_side, quality=quality, keep_suspect=keep_suspect)
    if workers == 1 or n == 1:
        return map(fn, paths)
    pool = _pool_context(clean).Pool(min(workers, n), initializer=_init_worker,
                                     initargs=(store_env() if clean else None,))
    stack.append(pool)
    chunksize = max(1, min(_CHUNKSIZE, n // (workers * _TASKS_PER_WORKER)))
    return pool.imap(fn, paths, chunksize=chunksize)


# ---------------------------------------------------------------- writing


def _local_shards(src: Path, partial: Path, items: Items, sizes: np.ndarray, ranges: list[tuple[int, int]],
                  workers: int, options: dict, progress: bool) -> Iterator[tuple[str, int, ShardResult]]:
    """The local engine: a process pool checks the files, this process writes the shards in order;
    yields ``(name, lo, result)`` per shard."""
    max_side, quality, keep_suspect = options["max_side"], options["quality"], options["keep_suspect"]
    pools: list = []
    bar = None
    try:
        results = _results(source_paths(src, items), len(items), workers, max_side, quality, keep_suspect, pools,
                           clean=is_remote_src(src))
        bar = tqdm(total=len(items), unit="img", desc="pack", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True, smoothing=0.05)
        for s, (lo, hi) in enumerate(ranges):
            res = write_shard(partial / shard_name(s), items_slice(items, lo, hi), results, src=src,
                              map_size=shard_map_size(sizes[lo:hi]), tick=bar.update, **options)
            yield shard_name(s), lo, res
    finally:
        if bar is not None:
            bar.close()
        for pool in pools:
            pool.terminate()
            pool.join()


def _build_index(partial: Path, items: Items, done: Iterable[tuple[str, int, ShardResult]]
                 ) -> tuple[IndexWriter, list[ShardInfo], list, list, np.ndarray, list]:
    """Append the shards' results, in shard order, to a new index; return it, the shards, the skipped
    and the kept suspect ``(relpath, reason)``, which items were packed (bool per item) and the digests."""
    index = IndexWriter(partial, capacity=len(items))
    shards: list[ShardInfo] = []
    skipped: list[tuple[str, str]] = []
    suspect: list[tuple[str, str]] = []
    digests: list[str | None] = []
    kept = np.zeros(len(items), dtype=bool)
    try:
        for name, lo, res in done:
            shards.append(add_result(index, res, items, lo, name))
            skipped += res.skipped
            suspect += res.suspect
            kept[lo:lo + len(res.kept)] = res.kept
            digests.append(res.digest)
    except BaseException:
        index.close()
        raise
    finally:
        close = getattr(done, "close", None)
        if close is not None:    # the local engine's generator: its pool stops now, not when collected
            close()
    return index, shards, skipped, suspect, kept, digests


def _csr_rows(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR ``(offsets, values)`` of the given ``rows`` of another CSR, vectorised."""
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    new_offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts, dtype=np.int64)])
    ranks = np.arange(int(new_offsets[-1])) - np.repeat(new_offsets[:-1], counts)
    return new_offsets, values[np.repeat(starts, counts) + ranks]


def _shuffled(items: Items, label_csr, seed: int) -> tuple[Items, tuple | None]:
    """``items`` (and the multi-label rows ``label_csr``) in the seeded order of ``shuffle_seed``,
    vectorised: the paths blob is gathered as a CSR of bytes (1.28M paths: no per-item Python)."""
    perm = np.random.default_rng([seed, PACK_ORDER]).permutation(len(items))
    ends = items._ends
    offsets, blob = _csr_rows(np.concatenate([np.zeros(1, np.int64), ends]),
                              np.frombuffer(items._blob, dtype=np.uint8), perm)
    shuffled = Items(blob.tobytes(), offsets[1:], items.labels[perm])
    return shuffled, (None if label_csr is None else _csr_rows(*label_csr, perm))


def _tsv_field(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _write_skipped(partial: Path, skipped: list[tuple[str, str]], name: str = SKIPPED_NAME) -> None:
    with open(partial / name, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        f.write("source\treason\n")
        f.writelines(f"{_tsv_field(rel)}\t{_tsv_field(reason)}\n" for rel, reason in skipped)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _file_size(path: str) -> int:
    try:
        size = os.path.getsize(path)
    except OSError:  # vanished or unreadable: the checker will report it
        return 0
    return size if size <= MAX_FILE_BYTES else 0     # skipped unread: plans no shard space


# ---------------------------------------------------------------- pack


def pack(src: str | os.PathLike, dst: str | os.PathLike, *, shards: int | None = None,
         shard_size_mb: float | None = None, workers: int | None = None, max_side: int | None = None,
         quality: int = 95, overwrite: bool = False, strict: bool = False,
         progress: bool = True, labels: str | os.PathLike | None = None, unlabeled: bool = False,
         classes: Sequence[str] | None = None, classes_from: str | os.PathLike | None = None,
         keep_suspect: bool = False, shuffle_seed: int | None = None, engine: str = "local",
         ray_address: str | None = None) -> PackReport:
    """Pack the image folder ``src`` (one sub-folder per class) into ``dst``. ``src`` may be an
    object-store prefix (``s3://``, ``gs://``, ``az://``) in the same layout: listed once, each object
    read through the store, the same bytes as the folder it holds (:mod:`loader.convert.remotesrc`).

    ``dst``: a folder, or an object-store URL (``s3://``, ``gs://``, ``az://``; needs the ``remote``
    extra): packed in a local temporary folder, then uploaded shards first, ``manifest.json`` last
    (:mod:`loader.storage.remotepack`). ``shards``: number of shard files (default: one per
    ``shard_size_mb`` MB of input, at least 1, at most one per image; ``shard_size_mb`` defaults to
    512 for a folder, :data:`REMOTE_SHARD_SIZE_MB` for a URL). ``workers``: processes that
    decode and check images (default: all cores; the output does not depend
    on it). ``max_side`` / ``quality``: see :mod:`loader.convert.imagecheck`.
    ``overwrite``: replace an existing packed dataset at ``dst``. ``strict``:
    fail on the first bad file instead of skipping it. ``progress``: show a
    progress bar on stderr.

    Labels (default: the class folders of ``src``, sorted):

    * ``labels``: a labels file (``.csv`` with header ``path,label``, or ``.jsonl`` /
      ``.json-lines``; :mod:`loader.convert.labelfile`); records follow its rows, files of ``src`` it
      does not list are left out and counted (``PackReport.num_unlisted``). Lists of classes
      make a multi-label dataset.
    * ``unlabeled``: every file under ``src`` (recursively, files directly in it included),
      sorted by path; no classes. Not with the other three.
    * ``classes`` (class names) or ``classes_from`` (a packed dataset whose classes to take):
      pin the class list and its order, for the folders or a labels file; a folder or label
      not in it is an error, a class without images is kept (count 0).

    ``keep_suspect``: store the JPEGs that decode only because the decoder filled in missing
    data (:func:`loader.convert.imagecheck.suspect_reason`) and list them, with the reason, in
    ``dst/suspect.tsv`` (and ``PackReport.suspect``) instead of skipping them. Files over
    :data:`loader.convert.imagecheck.MAX_FILE_BYTES` are skipped unread.

    ``shuffle_seed`` (``--shuffle-seed``): store the records in a seeded random order
    (``[shuffle_seed, rng.PACK_ORDER]``) instead of the scan's (class by class, or the labels file's
    rows), so that every shard is a sample of the classes: what ``ImageLoader(shuffle="block")``
    needs to cost no accuracy (docs/remote.md#shuffle).
    The same seed gives the same dataset byte for byte; ``manifest.json`` records it (``pack_params``).

    ``engine``: ``"local"`` (a process pool on this machine) or ``"ray"``: one Ray task per shard
    across a cluster (``workers``: tasks at once, default the cluster's CPUs; needs the ``ray`` extra),
    the same bytes (docs/ray.md). ``ray_address``: the cluster's address (default: as ``ray.init()``:
    ``RAY_ADDRESS``, a cluster started on this machine, or a new local one); SRC and a folder DST must
    be on paths every node sees.

    Raises :class:`~loader.errors.ArgumentError` (naming the parameter) for a bad option,
    :class:`PackError` for bad input, a failed write or a full disk; nothing is left at ``dst``
    then.

    >>> pack("photos/", "photos.packed", max_side=512).num_records   # doctest: +SKIP
    3000
    >>> pack("val/", "val.packed", classes_from="train.packed").classes[:2]   # doctest: +SKIP
    ('cat', 'dog')
    """
    check_engine(engine, ray_address)
    check_dst_outside(src, dst)
    options = dict(shards=shards, workers=workers, max_side=max_side, quality=quality, strict=strict,
                   progress=progress, labels=labels, unlabeled=unlabeled, classes=classes,
                   classes_from=classes_from, keep_suspect=keep_suspect, shuffle_seed=shuffle_seed,
                   engine=engine, ray_address=ray_address)
    if is_url(dst) and not str(dst).startswith("file://"):
        from loader.storage.remotepack import pack_remote

        return pack_remote(_pack, src, str(dst), overwrite=overwrite, **options,
                           shard_size_mb=REMOTE_SHARD_SIZE_MB if shard_size_mb is None else shard_size_mb)
    if is_url(dst):
        dst = split_url(str(dst))[2]
    return _pack(src, dst, overwrite=overwrite, shard_size_mb=512 if shard_size_mb is None else shard_size_mb,
                 **options)


def _pack(src, dst, *, shards, shard_size_mb, workers, max_side, quality, overwrite, strict, progress, labels,
          unlabeled, classes, classes_from, keep_suspect, shuffle_seed, engine, ray_address,
          remote: tuple[str, list[str]] | None = None) -> PackReport:
    """:func:`pack` to the folder ``dst``. ``remote``: ``(url, keys there now)``: ``dst`` is the local
    staging folder of a URL DST whose shards the Ray tasks upload themselves (``pack_remote``)."""
    t0 = time.perf_counter()
    ray_workers = workers
    workers = check_options(shards, shard_size_mb, workers, max_side, quality,
                             dict(overwrite=overwrite, strict=strict, progress=progress, unlabeled=unlabeled,
                                  keep_suspect=keep_suspect))
    if engine == "ray":
        from loader.convert.rayengine import import_ray

        import_ray()     # a missing extra is reported before SRC is listed
    pinned, origin = check_label_options(labels, unlabeled, classes, classes_from)
    check_shuffle_seed(shuffle_seed)
    listing = list_src(src) if is_remote_src(src) else None     # a bucket: listed once, here
    src = listing.url if listing else Path(split_url(src)[2] if is_url(src) else src)
    dst = Path(os.path.abspath(dst))
    unlisted, label_csr = 0, None
    if unlabeled:
        label_source, class_list, items = "none", [], listing.scan_unlabeled() if listing else scan_unlabeled(src)
    elif labels is not None:
        from loader.convert.labelfile import check_paths, read_label_file

        if not listing:
            check_src(src, "the folder the labels file's paths are relative to")
        lf = read_label_file(labels, classes=pinned, origin=origin or "the given classes")
        unlisted = listing.check_paths(lf) if listing else check_paths(lf, src)
        label_source, class_list, items = "file", lf.classes, lf.items
        if lf.multi_label:
            label_csr = (lf.label_offsets, lf.label_values)
        del lf
    else:
        label_source = "folders"
        if pinned is not None and not listing:
            check_src(src)
            try:
                folders = class_folders(src)
            except OSError as e:
                raise PackError(f"cannot list {src}: {e.strerror or e}") from None
            known = set(pinned)
            for name in folders:
                if name not in known:
                    raise PackError(f"class folder {name!r} of {src} is not in {origin} "
                                    f"({len(pinned)} classes); add the class there, or move the "
                                    f"folder out of SRC")
        class_list, items = listing.scan(pinned, origin or "") if listing else scan(src, classes=pinned)
    if shuffle_seed is not None:
        items, label_csr = _shuffled(items, label_csr, shuffle_seed)
    check_dst(None if listing else src, dst, overwrite)
    remove_stale(dst)
    prefix = os.path.join(src, "")
    sizes = listing.sizes(items) if listing else np.fromiter((_file_size(prefix + rel) for rel, _ in items),
                                                             dtype=np.int64, count=len(items))
    num_shards = plan_shards(int(sizes.sum()), len(items), shards, shard_size_mb)
    ranges = shard_ranges(len(items), num_shards)
    shard_options = dict(max_side=max_side, quality=quality, keep_suspect=keep_suspect, strict=strict)

    partial_dir = make_partial(dst)
    try:
        try:
            if engine == "ray":
                from loader.convert.rayengine import ray_shards

                if remote is not None:
                    from loader.storage.remotepack import shard_names

                    names = shard_names(num_shards, remote[1])
                else:
                    names = [shard_name(s) for s in range(num_shards)]
                done = ray_shards(src, partial_dir, items, sizes, ranges, names, dst=dst,
                                  url=None if remote is None else remote[0], address=ray_address,
                                  workers=ray_workers, options=shard_options, progress=progress)
            else:
                done = _local_shards(src, partial_dir, items, sizes, ranges, workers, shard_options, progress)
            index, shard_infos, skipped, suspect, kept, digests = _build_index(partial_dir, items, done)
            if not index.count:
                index.close()
                rel, reason = skipped[0]
                raise PackError(f"no usable images in {src}: all {len(items)} files are bad "
                                f"(first: {rel}: {reason}); check the input folder")
            label_offsets = label_values = None
            if label_csr is not None:     # the rows of the records that were packed
                label_offsets, label_values = _csr_rows(*label_csr, np.flatnonzero(kept))
            index.finish(classes=class_list, shards=shard_infos, skipped=len(skipped),
                         pack_params=_pack_params(shards, shard_size_mb, max_side, quality, strict, shuffle_seed),
                         label_source=label_source, unlisted=unlisted, label_offsets=label_offsets,
                         label_values=label_values)
            if engine == "ray":     # the tasks digested their shards (a URL DST's are not here)
                from loader.convert.rayengine import set_shard_digests

                set_shard_digests(partial_dir, digests)
            else:
                add_shard_digests(partial_dir)
            _write_skipped(partial_dir, skipped)
            if suspect:
                _write_skipped(partial_dir, suspect, SUSPECT_NAME)
            output_bytes = _folder_bytes(partial_dir)
            install(partial_dir, dst, overwrite)
        except (OSError, lmdb.Error) as e:  # disk full, quota, ...: the user's to fix, not a bug
            raise write_error(dst, e) from None
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise

    seconds = max(time.perf_counter() - t0, 1e-9)
    input_bytes = int(sizes.sum())
    return PackReport(
        dst=str(dst), num_records=index.count, num_skipped=len(skipped),
        skipped=tuple(skipped), classes=tuple(class_list), shards=num_shards, seconds=seconds,
        images_per_sec=len(items) / seconds, mb_per_sec=input_bytes / MB / seconds,
        input_bytes=input_bytes, output_bytes=output_bytes, num_unlisted=unlisted,
        label_source=label_source, multi_label=label_csr is not None, suspect=tuple(suspect))


def _pack_params(shards: int | None, shard_size_mb: float, max_side: int | None, quality: int,
                 strict: bool, shuffle_seed: int | None = None) -> dict:
    from loader.version import __version__

    # No `workers` (nor timings): the index must not depend on them.
    params = {"shards": shards, "shard_size_mb": shard_size_mb if shards is None else None,
              "max_side": max_side, "quality": quality, "strict": strict,
              "block_bytes": BLOCK_BYTES, "loader_version": __version__}
    if shuffle_seed is not None:     # absent otherwise: a default pack's manifest is loader 0.3's
        params["shuffle_seed"] = shuffle_seed
    return params
