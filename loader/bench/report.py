"""What ``loader bench`` prints and writes: the table, the JSON rows, the plot, the recommendation.

:func:`plot_series` knows nothing of bench rows, so other measuring commands
plot their own figures with it; tables are :func:`loader.measure.text_table`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from loader.bench.recommend import recommend_batch_size
from loader.bench.results import BenchRow
from loader.measure import text_table  # its home; re-exported here for older imports

__all__ = ["format_table", "plot_series", "print_report", "text_table", "write_json", "write_plot"]

# colour per contender in plots
_COLOURS = {"loader": "tab:green", "dataloader": "tab:blue", "dataloader-lmdb": "tab:orange",
            "decode-limit": "tab:gray", "loader (cold cache)": "tab:red", "loader (warm cache)": "tab:olive",
            "service (1 actor)": "tab:purple", "service (2 actors)": "tab:brown"}


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(rows: Sequence[BenchRow]) -> str:
    """The stdout table of ``loader bench``: one line per row (memory in MB = 10^6 bytes)."""
    gpu = any(r.gpu_mem_mb is not None for r in rows)
    head = ["pipeline", "batch", "size", "images/s", "vs dataloader", "first batch ms", "create s",
            "peak RSS MB"] + (["GPU MB"] if gpu else [])
    lines = []
    for r in rows:
        ratio_s = _fmt(r.ratio_vs_dataloader, ".2f") + "x" if r.ratio_vs_dataloader is not None else "-"
        if r.ratio_vs_dataloader is None and r.ratio_vs_dataloader_lmdb is not None:
            ratio_s = f"{r.ratio_vs_dataloader_lmdb:.2f}x lmdb"
        lines.append([r.pipeline, str(r.batch_size), str(r.image_size), _fmt(r.images_per_sec, ".1f"), ratio_s,
                      _fmt(r.first_batch_ms, ".0f"), _fmt(r.create_s, ".2f"), _fmt(r.peak_rss_mb, ".0f")]
                     + ([_fmt(r.gpu_mem_mb, ".0f")] if gpu else []))
    return text_table(head, lines)


def write_json(rows: Sequence[BenchRow], path: str | os.PathLike) -> None:
    """The rows as a JSON list of objects (the schema: :class:`loader.bench.results.BenchRow`)."""
    with open(path, "w") as f:
        json.dump([r.to_dict() for r in rows], f, indent=2)
        f.write("\n")


def plot_series(series: dict[tuple[str, str], list[tuple[float, float]]], path: str | os.PathLike, *,
                xlabel: str, ylabel: str, title: str = "", log2_x: bool = True) -> None:
    """A PNG line plot: ``series[(group, variant)] = [(x, y), ...]``.

    Colour follows ``group`` (a contender name gets its usual colour), line
    style and marker follow ``variant``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    variants = sorted({v for _, v in series})
    styles = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D")]
    for (group, variant), pts in series.items():
        pts = sorted(pts)
        ls, marker = styles[variants.index(variant) % len(styles)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=ls, marker=marker,
                color=_COLOURS.get(group), label=f"{group} {variant}".strip())
    xs = sorted({p[0] for pts in series.values() for p in pts})
    if log2_x:
        ax.set_xscale("log", base=2)
    if xs:
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        if len(xs) == 1:
            ax.set_xlim(xs[0] / 1.5, xs[0] * 1.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write_plot(rows: Sequence[BenchRow], path: str | os.PathLike) -> None:
    """images/s against batch size (log2), one line per contender and image size."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        series.setdefault((r.pipeline, f"{r.image_size}px"), []).append((r.batch_size, r.images_per_sec))
    title = ""
    if rows:
        r0 = rows[0]
        title = (f"loader bench: {'train' if r0.train else 'eval'} pipeline on {r0.device}, "
                 f"{r0.workers} workers / {r0.threads} threads")
    plot_series(series, path, xlabel="batch size", ylabel="images/s (median)", title=title)


def print_report(rows: Sequence[BenchRow], notes: Sequence[str] = (), *, prefetch: int = 2,
                 memory_budget_mb: float | None = None, json_path: str | None = None,
                 plot_path: str | None = None, out: TextIO | None = None) -> None:
    """The table, the share of the decode limit, notes, one recommendation per image size; then JSON and plot."""
    out = out or sys.stdout

    def say(line: str) -> None:
        print(line, file=out)

    say(format_table(rows))
    for r in rows:
        if r.pct_of_decode_limit is not None:
            say(f"loader at batch {r.batch_size}, {r.image_size} px: {r.pct_of_decode_limit:.0f}% of the decode limit")
    for r in rows:
        if r.url is not None:
            ratio = "" if r.ratio_vs_loader is None else f"{r.ratio_vs_loader:.2f}x the local loader row, "
            if r.ratio_vs_loader_started is not None:
                ratio += (f"{r.ratio_vs_loader_started:.2f}x a local loader started as this row is "
                          f"({r.local_started_images_per_sec:.0f} images/s), ")
            limit = "no cache_limit" if r.cache_limit is None else f"cache_limit {r.cache_limit / 1e6:.1f} MB"
            peak = None if r.cache_peak_bytes is None else r.cache_peak_bytes / 1e6
            say(f"{r.pipeline} at batch {r.batch_size}, {r.image_size} px: {ratio}time to first batch "
                f"{_fmt(r.time_to_first_batch_ms, '.0f')} ms, cache peak {_fmt(peak, '.1f')} MB on disk ({limit})")
    local = {(r.batch_size, r.image_size): r.images_per_sec for r in rows if r.pipeline == "loader"}
    for r in rows:
        if r.service_workers is not None:
            base = local.get((r.batch_size, r.image_size))
            ratio = f"{r.images_per_sec / base:.2f}x the loader row, " if base else ""
            share = "-" if r.wait_share is None else f"{100 * r.wait_share:.0f}%"
            say(f"{r.pipeline} at batch {r.batch_size}, {r.image_size} px: {ratio}"
                f"{_fmt(None if r.bytes_per_image is None else r.bytes_per_image / 1e3, '.1f')} kB per image over "
                f"Ray, waiting for the actors {share} of the time, {_fmt(r.trainer_ms_per_batch, '.2f')} ms of "
                f"trainer work per batch")
    for n in notes:
        say(f"note: {n}")
    loader_rows = [r for r in rows if r.pipeline == "loader" and r.images_per_sec > 0]
    for s in sorted({r.image_size for r in loader_rows}):
        rec = recommend_batch_size(loader_rows, memory_budget_mb=memory_budget_mb, prefetch=prefetch, image_size=s)
        say(f"recommendation: {rec.text}")
    if json_path:
        write_json(rows, json_path)
        say(f"wrote {json_path}")
    if plot_path and rows:
        write_plot(rows, plot_path)
        say(f"wrote {plot_path}")
