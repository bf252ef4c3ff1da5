"""Measure training-input throughput: ImageLoader against the standard DataLoader.

    loader bench photos/ [--packed photos.packed] [--batch-sizes 32,64,128] [--image-sizes 224]

Every contender runs the same training pipeline (decode, random-resized-crop to
``--image-size``, horizontal flip, normalize to float32 CHW, batches of
``--batch-size`` with int64 labels):

* ``loader``          -- :class:`loader.ImageLoader` on the packed shards (DALI, ``--threads``);
* ``dataloader``      -- ``torch.utils.data.DataLoader`` over the original image files with
                         torchvision-style PIL transforms (``--workers`` processes);
* ``dataloader-lmdb`` -- the same DataLoader reading the packed shards instead of files
                         (separates the storage format from the decoder);
* ``decode-limit``    -- DALI region-of-interest decode with the crop fused and nothing else:
                         the ceiling; ``loader`` is also reported as a percentage of it.

All contenders live in one process and are measured round-robin, one measurement
each per repeat, so drift of the machine hits all alike; the median over
``--repeats`` is reported. Each contender is created once per (batch size, image
size) and kept alive across repeats; its creation time and first-batch latency
are reported apart from the steady state. Before each measurement a few batches
are run untimed (``--warmup``, at least what the contender keeps queued ahead),
and after it the process tree is left to go idle, so a contender's background
prefetching never runs inside another's measurement. Images are counted from the
labels of every batch consumed.

An image folder SRC is packed once into ``SRC.loader-cache`` (or ``--packed DST``)
and the pack time reported separately; an existing packed dataset there is
reused. SRC may also be a packed dataset (then there are no original files and
``dataloader`` is skipped).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loader.errors import LoaderError

__all__ = [
    "CONTENDERS",
    "BenchInterrupted",
    "Recommendation",
    "add_arguments",
    "bench",
    "format_table",
    "main",
    "parse_sizes",
    "recommend_batch_size",
    "resolve_source",
    "run",
    "write_plot",
]

CONTENDERS = ("loader", "dataloader", "dataloader-lmdb", "decode-limit")
MB = 1 << 20   # memory figures (RSS, batch memory, --memory-budget) are in MiB, printed "MB"
CACHE_SUFFIX = ".loader-cache"
MANIFEST = "manifest.json"


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`bench`: ``rows`` holds what was measured so far."""

    def __init__(self, rows: list[dict]):
        super().__init__("interrupted")
        self.rows = rows


# ------------------------------------------------------------------ inputs


def parse_sizes(text: str, option: str) -> tuple[int, ...]:
    """``"16,32,64"`` -> ``(16, 32, 64)``; anything else raises LoaderError.

    >>> parse_sizes("64, 128", "--batch-sizes")
    (64, 128)
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise LoaderError(f"{option} must be comma-separated positive integers, got {text!r}")
    return tuple(dict.fromkeys(sizes))   # de-duplicated, order kept


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def is_packed(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def resolve_source(src: str | os.PathLike, packed: str | os.PathLike | None = None, *,
                   progress: bool = True, log: Callable[[str], None] | None = None
                   ) -> tuple[Path | None, Path, dict | None]:
    """``(image folder or None, packed dataset, pack info or None)`` for ``loader bench SRC``.

    Packs SRC into ``packed`` (default ``SRC.loader-cache``) unless a packed
    dataset is already there; ``pack info`` describes a pack done now.
    """
    log = log or (lambda msg: None)
    src_p = Path(src)
    if not src_p.exists():
        raise LoaderError(f"{src} does not exist; pass an image folder or a packed dataset as SRC")
    if not src_p.is_dir():
        raise LoaderError(f"{src} is not a folder; pass an image folder or a packed dataset as SRC")
    if is_packed(src_p):
        if packed is not None and Path(packed).resolve() != src_p.resolve():
            raise LoaderError(f"{src} is already a packed dataset; drop --packed {packed}")
        return None, src_p, None
    dst = Path(packed) if packed is not None else Path(str(src_p).rstrip("/\\") + CACHE_SUFFIX)
    if is_packed(dst):
        log(f"reusing the packed dataset {dst} (delete it to re-pack {src} and time the pack)")
        return src_p, dst, None
    from loader.packing import pack

    log(f"packing {src} into {dst} (once; reused by later runs) ...")
    report = pack(src_p, dst, progress=progress)
    info = {"seconds": report.seconds, "images_per_sec": report.images_per_sec,
            "mb_per_sec": report.mb_per_sec, "num_records": report.num_records}
    return src_p, dst, info


# ------------------------------------------------------------------ /proc


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _rss_bytes(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        if pid == "self":
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def _descendants(pid: int | None = None) -> list[int]:
    out, todo = [], _children(pid or os.getpid())
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _cpu_seconds(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])   # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total / _TICK


def _settle(max_wait: float = 5.0, window: float = 0.1, busy: float = 0.25) -> float:
    """Wait until this process and its children are idle (prefetch queues full).

    Idle: under ``busy`` of one core over a ``window``. Returns the seconds waited.
    """
    if not os.path.exists("/proc/self/stat"):
        time.sleep(window)
        return window
    t0 = time.perf_counter()
    pids = [os.getpid(), *_descendants()]
    prev = _cpu_seconds(pids)
    while time.perf_counter() - t0 < max_wait:
        time.sleep(window)
        cur = _cpu_seconds(pids)
        if cur - prev < busy * window:
            break
        prev = cur
    return time.perf_counter() - t0


# ------------------------------------------------------------------ contenders


class _Contender:
    """One pipeline under test: created once per config, stepped batch by batch."""

    name = ""
    queue_depth = 1     # batches it may prepare ahead while another contender runs

    def __init__(self, device):
        self.device = device
        self.worker_pids: list[int] = []
        self.obj: Any = None
        self._it = None

    def create(self) -> None:
        raise NotImplementedError

    def step(self) -> int:
        """Consume one batch; return how many images it held."""
        raise NotImplementedError

    def first(self) -> int:
        before = set(_descendants())
        n = self.step()
        self.worker_pids = sorted(set(_descendants()) - before)
        return n

    def close(self) -> None:
        self._it = None
        obj, self.obj = self.obj, None
        if obj is not None and hasattr(obj, "close"):
            obj.close()


class _LoaderContender(_Contender):
    name = "loader"

    def __init__(self, device, packed, batch_size, image_size, threads, train, prefetch, seed):
        super().__init__(device)
        self.args = (packed, batch_size, image_size, threads, train, prefetch, seed)
        self.queue_depth = prefetch + 1

    def create(self) -> None:
        from loader.imageloader import ImageLoader

        packed, batch_size, image_size, threads, train, prefetch, seed = self.args
        self.obj = ImageLoader(packed, batch_size, image_size=image_size, train=train,
                               num_threads=threads, prefetch=prefetch, seed=seed,
                               device=self.device)

    def close(self) -> None:
        ds = getattr(self.obj, "dataset", None)
        super().close()
        if ds is not None:
            ds.close()   # release the shards now (other contenders may fork workers next)

    def step(self) -> int:
        if self._it is None:
            self._it = iter(self.obj)
        try:
            _, labels = next(self._it)
        except StopIteration:   # next epoch
            self._it = iter(self.obj)
            _, labels = next(self._it)
        return int(labels.shape[0])


class _DataLoaderContender(_Contender):
    def __init__(self, device, name, make_dataset, batch_size, workers, train, seed):
        super().__init__(device)
        self.name = name
        self.make_dataset = make_dataset
        self.args = (batch_size, workers, train, seed)
        self.queue_depth = 2 * workers + 1 if workers else 1   # prefetch_factor=2 per worker

    def create(self) -> None:
        from loader.bench.baseline import baseline_loader

        batch_size, workers, train, seed = self.args
        self.obj = baseline_loader(self.make_dataset(), batch_size, workers=workers, train=train,
                                   seed=seed)

    def step(self) -> int:
        if self._it is None:
            self._it = iter(self.obj)
        try:
            images, labels = next(self._it)
        except StopIteration:   # next epoch (persistent workers stay)
            self._it = iter(self.obj)
            images, labels = next(self._it)
        if self.device.type == "cuda":   # deliver where the model is, as loader does
            images = images.to(self.device)
            labels = labels.to(self.device)
        return int(labels.shape[0])

    def first(self) -> int:
        n = super().first()
        workers = getattr(self._it, "_workers", None)
        if workers:
            self.worker_pids = [w.pid for w in workers if w.pid]
        return n

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()   # the workers exit now, not at garbage collection
        del it
        self.obj = None


class _DecodeLimitContender(_Contender):
    name = "decode-limit"

    def __init__(self, device, packed, batch_size, threads, prefetch, seed, train):
        super().__init__(device)
        self.args = (packed, batch_size, threads, prefetch, seed, train)
        self.queue_depth = prefetch + 1

    def create(self) -> None:
        from loader.bench.decode_limit import DecodeLimit
        from loader.dataset import open_dataset

        packed, batch_size, threads, prefetch, seed, train = self.args
        self.dataset = open_dataset(packed)
        self.obj = DecodeLimit(self.dataset, batch_size, num_threads=threads, seed=seed, prefetch=prefetch,
                               device_id=self.device.index if self.device.type == "cuda" else None,
                               train=train)

    def step(self) -> int:
        return int(next(self.obj))

    def close(self) -> None:
        super().close()
        ds, self.dataset = getattr(self, "dataset", None), None
        if ds is not None:
            ds.close()


# ------------------------------------------------------------------ measuring


class _Stats:
    """What one contender accumulated in one config."""

    def __init__(self):
        self.runs: list[float] = []
        self.images = 0
        self.seconds = 0.0
        self.create_s: float | None = None
        self.first_batch_ms: float | None = None
        self.peak_rss = 0
        self.peak_workers_rss = 0
        self.peak_gpu: int | None = None


class _Sampler:
    """Samples memory (main RSS + the contender's worker processes; GPU) every ``period`` s."""

    def __init__(self, stats: _Stats, pids: list[int], device, period: float = 0.1):
        self.stats, self.pids, self.device, self.period = stats, pids, device, period
        self.last = 0.0

    def sample(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.period:
            return
        self.last = now
        workers = sum(_rss_bytes(p) for p in self.pids)
        self.stats.peak_workers_rss = max(self.stats.peak_workers_rss, workers)
        self.stats.peak_rss = max(self.stats.peak_rss, _rss_bytes() + workers)
        if self.device.type == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info(self.device)
            self.stats.peak_gpu = max(self.stats.peak_gpu or 0, total - free)


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _measure(c: _Contender, stats: _Stats, *, warmup: int, batches: int | None,
             seconds: float | None) -> tuple[int, float]:
    sampler = _Sampler(stats, c.worker_pids, c.device)
    for _ in range(max(warmup, c.queue_depth)):
        c.step()
    _sync(c.device)
    images = n = 0
    t0 = time.perf_counter()
    while True:
        images += c.step()
        n += 1
        if batches is not None and n >= batches:
            break
        if seconds is not None and time.perf_counter() - t0 >= seconds:
            break
        sampler.sample()
    _sync(c.device)
    elapsed = time.perf_counter() - t0
    sampler.sample(force=True)
    return images, elapsed


def _resolve_device(device: str):
    from loader.imageloader import resolve_device

    try:
        return resolve_device(device)
    except ValueError as e:
        raise LoaderError(f"--device: {e}") from None


def _row(name: str, st: _Stats, *, batch_size: int, image_size: int, workers: int, threads: int,
         device, train: bool, pack: dict | None, warmup: int) -> dict:
    ips = statistics.median(st.runs) if st.runs else 0.0
    return {
        "pipeline": name, "batch_size": batch_size, "image_size": image_size,
        "workers": workers, "threads": threads,
        "images_per_sec": ips, "images_per_sec_runs": list(st.runs),
        "images": st.images, "seconds": st.seconds, "repeats": len(st.runs),
        "first_batch_ms": st.first_batch_ms, "create_s": st.create_s,
        "peak_rss_mb": st.peak_rss / MB, "workers_rss_mb": st.peak_workers_rss / MB,
        "gpu_mem_mb": None if st.peak_gpu is None else st.peak_gpu / MB,
        "ratio_vs_dataloader": None, "ratio_vs_dataloader_lmdb": None, "pct_of_decode_limit": None,
        "device": str(device), "train": bool(train), "warmup": warmup,
        "pack_s": None if pack is None else pack["seconds"],
    }


def _add_ratios(rows: list[dict]) -> None:
    by_cfg: dict[tuple[int, int], dict[str, dict]] = {}
    for r in rows:
        by_cfg.setdefault((r["batch_size"], r["image_size"]), {})[r["pipeline"]] = r
    for cfg in by_cfg.values():
        for ref, key in (("dataloader", "ratio_vs_dataloader"),
                         ("dataloader-lmdb", "ratio_vs_dataloader_lmdb")):
            base = cfg.get(ref)
            if base and base["images_per_sec"] > 0:
                for r in cfg.values():
                    if r["images_per_sec"] > 0:
                        r[key] = r["images_per_sec"] / base["images_per_sec"]
        lim, ld = cfg.get("decode-limit"), cfg.get("loader")
        if lim and ld and lim["images_per_sec"] > 0:
            ld["pct_of_decode_limit"] = 100.0 * ld["images_per_sec"] / lim["images_per_sec"]


def bench(src: str | os.PathLike, *, packed: str | os.PathLike | None = None,
          batch_sizes: Sequence[int] = (64,), image_sizes: Sequence[int] = (224,),
          workers: int | None = None, threads: int | None = None, repeats: int = 3,
          warmup: int = 5, batches: int | None = None, seconds: float | None = None,
          train: bool = True, device: str = "auto", prefetch: int = 2, seed: int = 0,
          pipelines: Sequence[str] | None = None, progress: bool | Callable[[str], None] = True,
          settle: bool = True, notes: list[str] | None = None) -> list[dict]:
    """Measure the contenders; return one row (dict) per contender x batch size x image size.

    ``workers`` (DataLoader processes) and ``threads`` (DALI threads) default to
    the number of CPU cores. Each measurement is ``batches`` steady-state batches,
    or lasts ``seconds`` (default: 4 s if neither is given), after ``warmup``
    untimed batches. ``pipelines`` selects contenders (default: all of
    :data:`CONTENDERS` that apply). ``progress``: True prints one line per
    measurement to stderr; a callable receives the lines instead. ``notes``, if
    given, receives human-readable remarks (skipped contenders, pack time).

    Ctrl-C raises :class:`BenchInterrupted` carrying the rows measured so far.

    >>> rows = bench("photos/", batch_sizes=(64, 128), repeats=3)     # doctest: +SKIP
    >>> [(r["pipeline"], round(r["images_per_sec"])) for r in rows]   # doctest: +SKIP
    [('loader', 1350), ('dataloader', 410), ...]
    """
    log = progress if callable(progress) else (
        (lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None))
    notes = notes if notes is not None else []

    def note(msg: str) -> None:
        notes.append(msg)
        log(msg)

    batch_sizes = tuple(batch_sizes)
    image_sizes = tuple(image_sizes)
    for opt, vals in (("batch_sizes", batch_sizes), ("image_sizes", image_sizes)):
        if not vals or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in vals):
            raise LoaderError(f"{opt} must be positive integers, got {vals!r}")
    if any(s < 8 for s in image_sizes):
        raise LoaderError(f"image sizes must be at least 8 pixels, got {image_sizes!r}")
    workers = _cores() if workers is None else workers
    threads = _cores() if threads is None else threads
    if not isinstance(workers, int) or workers < 0:
        raise LoaderError(f"--workers must be an integer >= 0, got {workers!r}")
    if not isinstance(threads, int) or threads < 1:
        raise LoaderError(f"--threads must be a positive integer, got {threads!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise LoaderError(f"--repeats must be a positive integer, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise LoaderError(f"--warmup must be an integer >= 0, got {warmup!r}")
    if not isinstance(prefetch, int) or prefetch < 1:
        raise LoaderError(f"--prefetch must be a positive integer, got {prefetch!r}")
    if batches is not None and seconds is not None:
        raise LoaderError("give --batches or --seconds, not both")
    if batches is not None and (not isinstance(batches, int) or batches < 1):
        raise LoaderError(f"--batches must be a positive integer, got {batches!r}")
    if seconds is not None and not seconds > 0:
        raise LoaderError(f"--seconds must be positive, got {seconds!r}")
    if batches is None and seconds is None:
        seconds = 4.0
    wanted = tuple(CONTENDERS if pipelines is None else pipelines)
    unknown = [p for p in wanted if p not in CONTENDERS]
    if unknown or not wanted:
        raise LoaderError(f"--pipelines must name some of {', '.join(CONTENDERS)}, got {','.join(wanted)!r}")

    folder, packed_path, pack_info = resolve_source(src, packed, progress=bool(progress) and not callable(progress),
                                                    log=lambda m: note(m) if m.startswith("reusing") else log(m))
    if pack_info:
        note(f"packed {pack_info['num_records']} images into {packed_path} in {pack_info['seconds']:.1f} s "
             f"({pack_info['images_per_sec']:.0f} images/s, {pack_info['mb_per_sec']:.1f} MB/s of input), "
             f"once; not part of the throughput figures")
    from loader.dataset import open_dataset

    ds = open_dataset(packed_path)
    num_records = len(ds)
    ds.close()
    del ds
    if folder is None and "dataloader" in wanted:
        note(f"{src} is a packed dataset (no original files): skipping `dataloader`; "
             f"`dataloader-lmdb` runs the same DataLoader on the shards")
        wanted = tuple(p for p in wanted if p != "dataloader")
    if not wanted:
        raise LoaderError("no pipeline left to measure")
    if train and max(batch_sizes) > num_records:
        raise LoaderError(f"batch size {max(batch_sizes)} is larger than the dataset "
                          f"({num_records} images in {packed_path}); lower --batch-sizes")

    dev = _resolve_device(device)
    if dev.type == "cuda":
        import torch

        torch.cuda.init()
    order = [p for p in ("dataloader", "dataloader-lmdb", "loader", "decode-limit") if p in wanted]
    rows: list[dict] = []
    common = {"workers": workers, "threads": threads, "device": dev, "train": train, "pack": pack_info,
              "warmup": warmup}
    mode = "train" if train else "eval"
    how = f"{batches} batches" if batches is not None else f"{seconds:g} s"

    def make(name: str, b: int, s: int) -> _Contender:
        if name == "loader":
            return _LoaderContender(dev, packed_path, b, s, threads, train, prefetch, seed)
        if name == "decode-limit":
            return _DecodeLimitContender(dev, packed_path, b, threads, prefetch, seed, train)
        if name == "dataloader":
            from loader.bench.baseline import ImageFolderDataset

            return _DataLoaderContender(dev, name, lambda: ImageFolderDataset(folder, s, train, seed),
                                        b, workers, train, seed)
        from loader.bench.baseline import PackedFileDataset

        return _DataLoaderContender(dev, name, lambda: PackedFileDataset(packed_path, s, train, seed),
                                    b, workers, train, seed)

    for s in image_sizes:
        for b in batch_sizes:
            contenders: dict[str, _Contender] = {}
            stats = {name: _Stats() for name in order}
            try:
                for name in order:
                    c = make(name, b, s)
                    st = stats[name]
                    t0 = time.perf_counter()
                    c.create()
                    st.create_s = time.perf_counter() - t0
                    contenders[name] = c
                    t0 = time.perf_counter()
                    c.first()
                    _sync(dev)
                    st.first_batch_ms = 1e3 * (time.perf_counter() - t0)
                    log(f"{name} batch={b} size={s} {mode}: created in {st.create_s:.2f} s, "
                        f"first batch in {st.first_batch_ms:.0f} ms")
                    if settle:
                        _settle()
                for r in range(repeats):
                    k = r % len(order)
                    for name in order[k:] + order[:k]:   # rotate who goes first
                        c, st = contenders[name], stats[name]
                        n, dt = _measure(c, st, warmup=warmup, batches=batches, seconds=seconds)
                        st.runs.append(n / dt)
                        st.images += n
                        st.seconds += dt
                        log(f"{name} batch={b} size={s} {mode} repeat {r + 1}/{repeats}: "
                            f"{n / dt:.1f} images/s ({n} images in {dt:.2f} s, {how})")
                        if settle:
                            _settle()
            except KeyboardInterrupt:
                for name in order:
                    if stats[name].runs:
                        rows.append(_row(name, stats[name], batch_size=b, image_size=s, **common))
                _add_ratios(rows)
                _close_all(contenders)
                raise BenchInterrupted(rows) from None
            except BaseException:
                _close_all(contenders)
                raise
            for name in order:
                rows.append(_row(name, stats[name], batch_size=b, image_size=s, **common))
            _close_all(contenders)
    _add_ratios(rows)
    return rows


def _close_all(contenders: dict[str, _Contender]) -> None:
    for c in contenders.values():
        try:
            c.close()
        except Exception as e:  # noqa: BLE001 - closing must not hide the real error
            print(f"[bench] closing {c.name} failed: {e}", file=sys.stderr)
    contenders.clear()
    gc.collect()


# ------------------------------------------------------------------ recommendation


@dataclass(frozen=True)
class Recommendation:
    """A batch size for ``loader``, and what it costs in memory."""

    pipeline: str
    image_size: int
    batch_size: int               # smallest within tolerance of the best measured
    images_per_sec: float
    best_batch_size: int
    best_images_per_sec: float
    tolerance: float
    prefetch: int
    device: str                   # where the batches live: "host" or "GPU"
    batch_bytes: int              # one float32 batch + its int64 labels
    queue_bytes: int              # prefetch x batch_bytes
    memory_budget_mb: float | None
    max_batch_in_budget: int | None   # largest B with (prefetch + 1) batches within the budget
    text: str


def batch_bytes(batch_size: int, image_size: int, bytes_per_value: int = 4) -> int:
    """Memory of one batch: ``B*3*H*W`` values (float32: 4 bytes) + ``B`` int64 labels.

    >>> batch_bytes(64, 224)
    38535680
    """
    return batch_size * (3 * image_size * image_size * bytes_per_value + 8)


def recommend_batch_size(rows: Sequence[dict], *, tolerance: float = 0.05,
                         memory_budget_mb: float | None = None, prefetch: int = 2,
                         pipeline: str = "loader", image_size: int | None = None) -> Recommendation:
    """The smallest measured batch size within ``tolerance`` of the best throughput.

    Smaller batches mean more optimizer steps per epoch; past that point a larger
    batch buys no input speed. Memory: one batch is ``B*3*H*W*4`` bytes (float32)
    plus ``8*B`` (labels); the prefetch queue holds ``prefetch`` more. With
    ``memory_budget_mb`` (MiB), also the largest batch whose ``prefetch + 1``
    batches (the one in use and the queue) fit. ``rows`` as returned by
    :func:`bench`; only ``pipeline`` rows count, at ``image_size`` (needed when
    the rows hold several).

    >>> rows = [{"pipeline": "loader", "batch_size": b, "image_size": 224, "images_per_sec": v,
    ...          "device": "cpu"} for b, v in ((32, 800.0), (64, 980.0), (128, 1000.0))]
    >>> recommend_batch_size(rows).batch_size
    64
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}")
    if memory_budget_mb is not None and not memory_budget_mb > 0:
        raise ValueError(f"memory budget must be positive (MB), got {memory_budget_mb!r}")
    mine = [r for r in rows if r["pipeline"] == pipeline and r["images_per_sec"] > 0]
    sizes = sorted({r["image_size"] for r in mine})
    if image_size is None:
        if len(sizes) > 1:
            raise ValueError(f"rows hold image sizes {sizes}: pass image_size")
        image_size = sizes[0] if sizes else None
    mine = [r for r in mine if r["image_size"] == image_size]
    if not mine:
        raise ValueError(f"no measured {pipeline!r} rows" +
                         (f" at image size {image_size}" if image_size is not None else ""))
    best = max(mine, key=lambda r: r["images_per_sec"])
    within = [r for r in mine if r["images_per_sec"] >= (1 - tolerance) * best["images_per_sec"]]
    pick = min(within, key=lambda r: r["batch_size"])
    b, s = int(pick["batch_size"]), int(image_size)
    one = batch_bytes(b, s)
    queue = prefetch * one
    where = "GPU" if str(pick.get("device", "cpu")).startswith("cuda") else "host"
    max_b = None
    if memory_budget_mb is not None:
        max_b = int(memory_budget_mb * MB) // ((prefetch + 1) * batch_bytes(1, s))

    if len({r["batch_size"] for r in mine}) == 1:
        why = "; the only batch size measured: sweep --batch-sizes to compare)"
    elif b != best["batch_size"]:
        why = (f", within {tolerance:.0%} of the best measured, {best['images_per_sec']:.0f} images/s at "
               f"batch {best['batch_size']}: larger batches buy no input speed, smaller ones update the "
               f"model more often)")
    elif b == min(r["batch_size"] for r in mine):
        why = ", the best measured, at the smallest batch size measured)"
    else:
        why = f", the best measured; smaller batches were more than {tolerance:.0%} slower)"
    text = (f"{pipeline} at {s} px: use batch size {b} ({pick['images_per_sec']:.0f} images/s{why}"
            + f". One batch takes {one / MB:.1f} MB of {where} memory ({b} x 3 x {s} x {s} float32 "
              f"+ labels) and the prefetch queue ({prefetch} batches in flight) {queue / MB:.1f} MB more, "
              f"{(one + queue) / MB:.1f} MB in all.")
    if max_b is not None:
        text += (f" Within a {memory_budget_mb:g} MB budget the largest batch that fits "
                 f"(in use + {prefetch} prefetched) is {max_b}" +
                 (f"; {b} does not fit: use at most {max_b}." if max_b < b else "."))
    return Recommendation(pipeline=pipeline, image_size=s, batch_size=b,
                          images_per_sec=float(pick["images_per_sec"]), best_batch_size=int(best["batch_size"]),
                          best_images_per_sec=float(best["images_per_sec"]), tolerance=tolerance,
                          prefetch=prefetch, device=where, batch_bytes=one, queue_bytes=queue,
                          memory_budget_mb=memory_budget_mb, max_batch_in_budget=max_b, text=text)


# ------------------------------------------------------------------ output


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(rows: Sequence[dict]) -> str:
    """The stdout table: one line per row."""
    gpu = any(r.get("gpu_mem_mb") is not None for r in rows)
    head = ["pipeline", "batch", "size", "images/s", "vs dataloader", "first batch ms", "create s",
            "peak RSS MB"] + (["GPU MB"] if gpu else [])
    lines = []
    for r in rows:
        ratio = r.get("ratio_vs_dataloader")
        ratio_s = _fmt(ratio, ".2f") + "x" if ratio is not None else "-"
        if ratio is None and r.get("ratio_vs_dataloader_lmdb") is not None:
            ratio_s = f"{r['ratio_vs_dataloader_lmdb']:.2f}x lmdb"
        cells = [r["pipeline"], str(r["batch_size"]), str(r["image_size"]), _fmt(r["images_per_sec"], ".1f"),
                 ratio_s, _fmt(r.get("first_batch_ms"), ".0f"), _fmt(r.get("create_s"), ".2f"),
                 _fmt(r.get("peak_rss_mb"), ".0f")] + ([_fmt(r.get("gpu_mem_mb"), ".0f")] if gpu else [])
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(c) for c in lines]
    return "\n".join(out)


def write_plot(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """images/s against batch size (log2), one line per contender and image size."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    series: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault((r["pipeline"], r["image_size"]), []).append((r["batch_size"], r["images_per_sec"]))
    # colour = contender, line style and marker = image size
    colours = {"loader": "tab:green", "dataloader": "tab:blue", "dataloader-lmdb": "tab:orange",
               "decode-limit": "tab:gray"}
    sizes = sorted({size for _, size in series})
    styles = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D")]
    for (name, size), pts in series.items():
        pts.sort()
        ls, marker = styles[sizes.index(size) % len(styles)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=ls, marker=marker,
                color=colours.get(name), label=f"{name} {size}px")
    xs = sorted({r["batch_size"] for r in rows})
    ax.set_xscale("log", base=2)
    if xs:
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        if len(xs) == 1:
            ax.set_xlim(xs[0] / 1.5, xs[0] * 1.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s (median)")
    if rows:
        r0 = rows[0]
        ax.set_title(f"loader bench: {'train' if r0['train'] else 'eval'} pipeline on {r0['device']}, "
                     f"{r0['workers']} workers / {r0['threads']} threads")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _report(rows: list[dict], args: argparse.Namespace, notes: list[str]) -> None:
    print(format_table(rows))
    for r in rows:
        if r.get("pct_of_decode_limit") is not None:
            print(f"loader at batch {r['batch_size']}, {r['image_size']} px: "
                  f"{r['pct_of_decode_limit']:.0f}% of the decode limit")
    for n in notes:
        print(f"note: {n}")
    loader_rows = [r for r in rows if r["pipeline"] == "loader" and r["images_per_sec"] > 0]
    for s in sorted({r["image_size"] for r in loader_rows}):
        rec = recommend_batch_size(loader_rows, memory_budget_mb=args.memory_budget,
                                   prefetch=args.prefetch, image_size=s)
        print(f"recommendation: {rec.text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    if args.plot and rows:
        write_plot(rows, args.plot)
        print(f"wrote {args.plot}")


# ------------------------------------------------------------------ CLI


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = minimum - 1
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return v
    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``loader bench``'s arguments to ``parser``."""
    cores = _cores()
    parser.add_argument("src", metavar="SRC", help="image folder (one sub-folder per class) or a "
                        "packed dataset (made by `loader pack`)")
    parser.add_argument("--packed", metavar="DST", help=f"where to pack an image folder SRC, or "
                        f"an existing packed copy of it to reuse (default: SRC{CACHE_SUFFIX})")
    parser.add_argument("--batch-sizes", default="64", metavar="LIST",
                        help="comma-separated batch sizes to sweep (default: 64)")
    parser.add_argument("--image-sizes", default="224", metavar="LIST",
                        help="comma-separated output sizes in pixels to sweep (default: 224)")
    parser.add_argument("--workers", type=_nonneg_int, default=cores, metavar="N",
                        help=f"DataLoader worker processes (default: CPU cores, {cores})")
    parser.add_argument("--threads", type=_positive_int, default=cores, metavar="N",
                        help=f"DALI threads for loader and decode-limit (default: CPU cores, {cores})")
    parser.add_argument("--repeats", type=_positive_int, default=3, metavar="N",
                        help="measurements per contender, round-robin; the median is reported (default: 3)")
    parser.add_argument("--warmup", type=_nonneg_int, default=5, metavar="N",
                        help="untimed batches before each measurement, raised to what the contender "
                        "has queued ahead (default: 5)")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--batches", type=_positive_int, metavar="N", help="steady-state batches per measurement")
    g.add_argument("--seconds", type=_positive_float, metavar="S",
                   help="seconds per measurement (default: 4 unless --batches)")
    parser.add_argument("--eval", action="store_true", help="measure the eval pipelines (resize + "
                        "centre crop, in order) instead of train")
    parser.add_argument("--pipelines", default=",".join(CONTENDERS), metavar="LIST",
                        help=f"contenders to run (default: {','.join(CONTENDERS)})")
    parser.add_argument("--device", default="auto", help="loader's device: auto, cpu, cuda, cuda:N "
                        "(default: auto = CUDA if available)")
    parser.add_argument("--prefetch", type=_positive_int, default=2, metavar="N",
                        help="loader's prefetch depth in batches (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle/augmentation seed (default: 0)")
    parser.add_argument("--memory-budget", type=_positive_float, metavar="MB",
                        help="also report the largest batch whose batches in flight fit in MB")
    parser.add_argument("--json", metavar="FILE", help="write the rows as a JSON list")
    parser.add_argument("--plot", metavar="FILE.png", help="plot images/s against batch size (PNG)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    """Run ``loader bench`` with parsed ``args``; return the exit status."""
    batch_sizes = parse_sizes(args.batch_sizes, "--batch-sizes")
    image_sizes = parse_sizes(args.image_sizes, "--image-sizes")
    pipelines = tuple(p.strip() for p in args.pipelines.split(",") if p.strip())
    for path in (args.json, args.plot):
        if path and not Path(path).resolve().parent.is_dir():
            raise LoaderError(f"cannot write {path}: folder {Path(path).parent} does not exist")
    notes: list[str] = []
    try:
        rows = bench(args.src, packed=args.packed, batch_sizes=batch_sizes, image_sizes=image_sizes,
                     workers=args.workers, threads=args.threads, repeats=args.repeats,
                     warmup=args.warmup, batches=args.batches, seconds=args.seconds,
                     train=not args.eval, device=args.device, prefetch=args.prefetch, seed=args.seed,
                     pipelines=pipelines, progress=not args.quiet, notes=notes)
    except BenchInterrupted as e:
        print("interrupted: results so far", file=sys.stderr)
        _report(e.rows, args, notes)
        return 130
    _report(rows, args, notes)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m loader.bench SRC ...``: the same as ``loader bench SRC ...``."""
    from loader.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
