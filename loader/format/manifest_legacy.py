"""Reading version 1 and 2 manifests: one JSON file holding every per-record list.

Read as before version 3, element by element (0.7-1.8 s and +412 MB at 1.281M
records; version 3 exists for that reason). Layout: ``labels``, ``heights``,
``widths``, ``checksums`` (CRC-32 as 8 hex digits; version 1: blake2b-64, 16
hex digits), ``sources``, ``converted`` (None: stored byte-for-byte), in
global record order; record ``k`` of a shard is its whole value under key
``b"%010d" % k``. :func:`loader.format.manifest.read_manifest` dispatches here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loader.errors import DatasetError
from loader.format.files import REPACK_HINT
from loader.format.shards import parse_shards

__all__ = ["parse_legacy"]

_RECORD_FIELDS = ("labels", "heights", "widths", "checksums", "sources", "converted")
_FIELDS = ("format", "version", "classes", "shards", "num_records") + _RECORD_FIELDS + (
    "pack_params", "skipped")


def _int_array(values: object, key: str, dtype: type, where: str) -> np.ndarray:
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        raise DatasetError(f"{where}: {key!r} must be a list of integers")
    try:
        return np.asarray(values, dtype=dtype).reshape(-1)
    except OverflowError:
        raise DatasetError(f"{where}: {key!r} has out-of-range values") from None


def _str_tuple(values: object, key: str, where: str, allow_none: bool = False) -> tuple:
    ok = (str, type(None)) if allow_none else str
    if not isinstance(values, list) or not all(isinstance(v, ok) for v in values):
        raise DatasetError(f"{where}: {key!r} must be a list of strings")
    return tuple(values)


def parse_legacy(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """The validated fields of a version 1/2 manifest (``obj``: its parsed JSON, header checked)."""
    missing = [k for k in _FIELDS if k not in obj]
    if missing:
        raise DatasetError(f"{where}: missing keys {', '.join(missing)}")
    n = obj["num_records"]
    if type(n) is not int or n < 0:
        raise DatasetError(f"{where}: bad num_records {n!r}")
    f = {
        "classes": _str_tuple(obj["classes"], "classes", where),
        "shards": parse_shards(obj["shards"], where, with_values=False),
        "num_records": n,
        "labels": _int_array(obj["labels"], "labels", np.int32, where),
        "heights": _int_array(obj["heights"], "heights", np.int32, where),
        "widths": _int_array(obj["widths"], "widths", np.int32, where),
        "checksums": _str_tuple(obj["checksums"], "checksums", where),
        "sources": _str_tuple(obj["sources"], "sources", where),
        "converted": _str_tuple(obj["converted"], "converted", where, allow_none=True),
        "pack_params": obj["pack_params"], "skipped": obj["skipped"],
    }
    for key in _RECORD_FIELDS:
        if len(f[key]) != n:
            raise DatasetError(f"{where}: {key!r} has {len(f[key])} entries but "
                               f"num_records is {n}; the manifest is corrupt, {REPACK_HINT}")
    classes, labels = f["classes"], f["labels"]
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{where}: duplicate class names")
    if n and (labels.min() < 0 or labels.max() >= len(classes)):
        bad = int(np.flatnonzero((labels < 0) | (labels >= len(classes)))[0])
        raise DatasetError(f"{where}: record {bad} has label {int(labels[bad])}, outside the "
                           f"{len(classes)} classes")
    if n and (f["heights"].min() < 1 or f["widths"].min() < 1):
        raise DatasetError(f"{where}: heights and widths must be >= 1")
    held = sum(s.records for s in f["shards"])
    if held != n:
        raise DatasetError(f"{where}: shards hold {held} records in all but num_records is {n}")
    if not isinstance(f["pack_params"], dict) or type(f["skipped"]) is not int or f["skipped"] < 0:
        raise DatasetError(f"{where}: bad 'pack_params' or 'skipped'")
    return f
