"""What ``loader advise`` prints and writes: the table (:func:`loader.measure.text_table`), JSON, the plot.

The table gives each end-to-end figure with its range (min-max over the
row's rounds), the figure the advice is chosen from.

The plot has one panel per unit: images/s (model alone, loader alone, end to
end), peak memory in MB, and validation top-1 when a trial ran; each against
batch size, one line style per image size.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from loader.advisor.results import AdviseResult, AdviseRow
from loader.measure import text_table

__all__ = ["format_table", "print_result", "write_json", "write_plot"]


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[AdviseRow]) -> str:
    """One line per row; memory in MB (10^6 bytes); trial columns when any row has a trial.

    Rates are medians; ``e2e range`` is the min-max of the end-to-end measurements.
    """
    trial = any(r.trial is not None for r in rows)
    head = ["batch", "size", "status", "step ms", "model img/s", "loader img/s", "end-to-end img/s",
            "e2e range", "data wait", "peak MB", "bound"] + (["train loss", "val loss", "val top-1"] if trial else [])
    lines = []
    for r in rows:
        lo, hi = r.end_to_end_images_per_sec_min, r.end_to_end_images_per_sec_max
        line = [str(r.batch_size), str(r.image_size), r.status, _f(r.step_ms, ".1f"),
                _f(r.model_images_per_sec, ".0f"), _f(r.loader_images_per_sec, ".0f"),
                _f(r.end_to_end_images_per_sec, ".0f"), "-" if lo is None or hi is None else f"{lo:.0f}-{hi:.0f}",
                "-" if r.data_wait_fraction is None else f"{r.data_wait_fraction:.0%}",
                _f(r.peak_memory_mb, ".0f"), r.bound or "-"]
        if trial:
            t = r.trial
            line += ["-", "-", "-"] if t is None else [f"{t.train_loss:.3f}", f"{t.val_loss:.3f}",
                                                       f"{t.val_accuracy:.1%}"]
        lines.append(line)
    return text_table(head, lines)


def write_json(result: AdviseResult, path: str | os.PathLike) -> None:
    """``result.to_dict()`` as indented JSON (the schema: :mod:`loader.advisor.results`)."""
    with open(path, "w") as f:
        json.dump(result.to_dict(), f, indent=2)
        f.write("\n")


def write_plot(result: AdviseResult, path: str | os.PathLike) -> None:
    """images/s, memory and (with a trial) validation top-1 against batch size (log2), as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ok = [r for r in result.rows if r.ok or r.peak_memory_mb is not None]
    trial = any(r.trial is not None for r in ok)
    panels = [("images/s", [("model", "model_images_per_sec", "tab:purple"),
                            ("loader", "loader_images_per_sec", "tab:green"),
                            ("end to end", "end_to_end_images_per_sec", "tab:red")]),
              ("peak memory MB", [("train step + loader", "peak_memory_mb", "tab:blue")])]
    if trial:
        panels.append(("validation top-1 %", [("trial", None, "tab:orange")]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), dpi=110)
    styles = ["-", "--", "-.", ":"]
    sizes = sorted({r.image_size for r in ok})
    xs = sorted({r.batch_size for r in ok})
    for ax, (ylabel, lines) in zip(axes, panels):
        for k, size in enumerate(sizes):
            at = sorted((r for r in ok if r.image_size == size), key=lambda r: r.batch_size)
            for label, attr, colour in lines:
                if attr is None:
                    pts = [(r.batch_size, 100 * r.trial.val_accuracy) for r in at if r.trial is not None]
                else:
                    pts = [(r.batch_size, getattr(r, attr)) for r in at if getattr(r, attr) is not None]
                if pts:
                    ax.plot(*zip(*pts), linestyle=styles[k % len(styles)], marker="o", color=colour,
                            label=f"{label} {size}px" if len(sizes) > 1 else label)
        ax.set_xscale("log", base=2)
        if xs:
            ax.set_xticks(xs)
            ax.set_xticklabels([str(x) for x in xs])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"loader advise: {result.model} on {result.device}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def print_result(result: AdviseResult, *, json_path: str | None = None, plot_path: str | None = None,
                 out: TextIO | None = None) -> None:
    """The table, the notes and the recommendation on ``out`` (stdout); then the JSON and the plot files."""
    out = out or sys.stdout
    print(format_table(result.rows), file=out)
    for n in result.notes:
        print(f"note: {n}", file=out)
    if result.interrupted:
        print("note: interrupted; the advice covers the rows measured so far", file=out)
    print(f"recommendation: {result.recommendation.text}", file=out)
    if json_path:
        write_json(result, json_path)
        print(f"wrote {json_path}", file=out)
    if plot_path and result.rows:
        write_plot(result, plot_path)
        print(f"wrote {plot_path}", file=out)
