"""The label columns of a multi-label index (versions 4-5): ``label_offsets`` / ``label_values``, a CSR
of each record's classes, read and validated in chunks (:mod:`loader.format.manifest` reads the rest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loader.format.columns import LABEL_COLUMNS, monotone_from_zero, read_column, scan_column

__all__ = ["read_label_csr"]


def _sorted_rows(offsets: np.ndarray, num_classes: int):
    """Check ``label_values`` chunks: within ``[0, num_classes - 1]`` and strictly increasing inside
    each record's row (``offsets``: the validated, mapped ``label_offsets``)."""
    prev = [None]

    def check(chunk: np.ndarray, first: int) -> str | None:
        out = (chunk < 0) | (chunk >= num_classes)
        if out.any():
            k = int(np.flatnonzero(out)[0])
            rec = int(np.searchsorted(offsets, first + k, side="right")) - 1
            return (f"record {rec} has class {chunk[k].item()} (label_values[{first + k}]), outside "
                    f"[0, {num_classes - 1}]")
        # Positions p where values[p] <= values[p - 1]: bad unless p starts a record's row.
        cand = np.flatnonzero(chunk[1:] <= chunk[:-1]) + (first + 1)
        if prev[0] is not None and chunk[0] <= prev[0]:
            cand = np.concatenate([[first], cand])
        prev[0] = chunk[-1].item()
        if cand.size:
            at = np.searchsorted(offsets, cand, side="left")
            starts = offsets[np.minimum(at, len(offsets) - 1)] == cand
            if not starts.all():
                p = int(cand[~starts][0])
                rec = int(np.searchsorted(offsets, p, side="right")) - 1
                return f"record {rec}'s classes are not sorted and unique (label_values[{p - 1}:{p + 1}])"
        return None
    return check


def read_label_csr(path: Path, n: int, num_classes: int, files: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The validated ``label_offsets`` / ``label_values`` columns of a multi-label index."""
    off_name, val_name = files["label_offsets"], files["label_values"]
    off_dt, val_dt = LABEL_COLUMNS["label_offsets"][1], LABEL_COLUMNS["label_values"][1]
    check, last = monotone_from_zero("label_offsets")
    scan_column(path / off_name, "label_offsets", off_dt, n + 1, check,
                promise=f"the manifest promises {n} records (n + 1 offsets)")
    offsets = np.asarray(np.load(path / off_name, mmap_mode="r", allow_pickle=False))
    m = last[0]
    values = np.asarray(read_column(path / val_name, "label_values", val_dt, m,
                                    check=_sorted_rows(offsets, num_classes),
                                    promise=f"label_offsets end at {m}"))
    return offsets, values
