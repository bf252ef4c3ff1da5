"""One result row of ``loader bench``: a frozen :class:`BenchRow`, written to JSON as a flat object.

The JSON schema is the field list below, in this order (``--json FILE`` writes
a list of them); ``None`` stands for "not measured" or "not applicable".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["BenchRow", "with_ratios"]


@dataclass(frozen=True)
class BenchRow:
    """One contender at one (batch size, image size): the median rate and what it cost.

    Memory figures are in MB (10^6 bytes, :data:`loader.units.MB`): the main
    process's peak RSS plus the contender's worker processes (``peak_rss_mb``),
    the workers alone, and the GPU's used memory: ``gpu_mem_mb`` is the whole device's
    peak (every contender alive in the process, DALI's pools included),
    ``gpu_peak_memory_mb`` this contender's own share (see
    :mod:`loader.bench.harness`); both None on the CPU. ``ratio_vs_*`` divide this
    row's rate by the named baseline's at the same configuration;
    ``pct_of_decode_limit`` is set on ``loader`` rows.

    The cache rows of a dataset at a URL (``loader (cold cache)``, ``loader (warm cache)``; see
    :mod:`loader.bench.contenders`) also fill: ``url``; ``ratio_vs_loader`` (this rate / the local
    ``loader`` row's); ``time_to_first_batch_ms`` (ImageLoader created, index fetched, first batch
    out: the median over the cold row's measurements, each from an empty cache);
    ``cache_peak_bytes`` (the most bytes of files under its ``cache_dir``, sampled every 20 ms in a
    thread while it ran); ``cache_limit`` (bytes, None: none); ``cache_start_bytes`` /
    ``cache_start_files`` (what its ``cache_dir`` held when each measurement started, the largest:
    0 for the cold row).

    The decode service's rows (``service (N actors)``, :mod:`loader.bench.service`) fill
    ``service_workers`` (N), ``bytes_per_image`` (received over Ray's object store),
    ``wait_share`` (of the time in ``next()``, blocked on the actors) and ``trainer_ms_per_batch``
    (the rest of ``next()``: the trainer's own cost of a batch).
    """

    pipeline: str
    batch_size: int
    image_size: int
    images_per_sec: float                       # median over the repeats
    workers: int = 0
    threads: int = 0
    images_per_sec_runs: tuple[float, ...] = ()  # one per repeat, in order
    images: int = 0                              # counted from the labels of every timed batch
    seconds: float = 0.0
    repeats: int = 0
    first_batch_ms: float | None = None
    create_s: float | None = None
    peak_rss_mb: float = 0.0
    workers_rss_mb: float = 0.0
    gpu_mem_mb: float | None = None
    ratio_vs_dataloader: float | None = None
    ratio_vs_dataloader_lmdb: float | None = None
    pct_of_decode_limit: float | None = None
    device: str = "cpu"
    train: bool = True
    warmup: int = 0
    pack_s: float | None = None                  # the one-off pack of SRC, when this run did it
    gpu_peak_memory_mb: float | None = None      # this contender's own GPU memory (None on the CPU)
    url: str | None = None                       # the cache rows' dataset URL
    ratio_vs_loader: float | None = None         # cache rows: this rate / the local loader row's
    time_to_first_batch_ms: float | None = None  # cache rows: creation (index download) + first batch
    cache_peak_bytes: int | None = None          # cache rows: peak bytes under cache_dir
    cache_limit: int | None = None               # cache rows: the cache_limit in bytes (None: none)
    cache_start_bytes: int | None = None         # cache rows: bytes under cache_dir as a measurement began
    cache_start_files: int | None = None         # cache rows: files under cache_dir as a measurement began
    service_workers: int | None = None           # service rows: Ray actors
    bytes_per_image: float | None = None         # service rows: bytes received per image
    wait_share: float | None = None              # service rows: share of next() blocked on the actors
    trainer_ms_per_batch: float | None = None    # service rows: the trainer's own ms per batch
    # The cold row: the median images/s of a new local loader timed as the cold row is (from its creation,
    # no warm-up), measured beside each cold measurement, and the cold row's rate over it.
    local_started_images_per_sec: float | None = None
    ratio_vs_loader_started: float | None = None

    def to_dict(self) -> dict:
        """The JSON object (lists for tuples)."""
        d = dataclasses.asdict(self)
        d["images_per_sec_runs"] = list(self.images_per_sec_runs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> BenchRow:
        """A row from its JSON object (unknown keys are an error: the schema is closed)."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - names
        if extra:
            raise ValueError(f"not a loader bench row: unknown keys {sorted(extra)}")
        kw = dict(d)
        if "images_per_sec_runs" in kw:
            kw["images_per_sec_runs"] = tuple(kw["images_per_sec_runs"])
        return cls(**kw)


def with_ratios(rows: Sequence[BenchRow]) -> list[BenchRow]:
    """``rows`` with ``ratio_vs_dataloader``, ``ratio_vs_dataloader_lmdb``, ``pct_of_decode_limit`` and
    (cache rows) ``ratio_vs_loader`` filled in."""
    by_cfg: dict[tuple[int, int], dict[str, BenchRow]] = {}
    for r in rows:
        by_cfg.setdefault((r.batch_size, r.image_size), {})[r.pipeline] = r
    out = []
    for r in rows:
        cfg = by_cfg[(r.batch_size, r.image_size)]
        extra = {}
        if r.images_per_sec > 0:
            for ref, key in (("dataloader", "ratio_vs_dataloader"), ("dataloader-lmdb", "ratio_vs_dataloader_lmdb")):
                base = cfg.get(ref)
                if base is not None and base.images_per_sec > 0:
                    extra[key] = r.images_per_sec / base.images_per_sec
            local = cfg.get("loader")
            if r.url is not None and local is not None and local.images_per_sec > 0:
                extra["ratio_vs_loader"] = r.images_per_sec / local.images_per_sec
            if r.local_started_images_per_sec:
                extra["ratio_vs_loader_started"] = r.images_per_sec / r.local_started_images_per_sec
            lim = cfg.get("decode-limit")
            if r.pipeline == "loader" and lim is not None and lim.images_per_sec > 0:
                extra["pct_of_decode_limit"] = 100.0 * r.images_per_sec / lim.images_per_sec
        out.append(dataclasses.replace(r, **extra))
    return out
