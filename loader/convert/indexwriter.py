"""Writing the version 4 index of :mod:`loader.format.manifest`: per-record numpy columns, then the header.

:class:`IndexWriter` collects every record's fields in numpy arrays as pack writes the
shards (no per-record Python objects), writes the columns (:mod:`loader.format.columns`) and,
last, ``manifest.json``: an index without its header is not a dataset, so a killed pack
leaves nothing that opens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loader.format.columns import write_column
from loader.format.manifest import (
    _HEADER_KEYS,
    COLUMNS,
    FORMAT,
    LABEL_COLUMNS,
    LABEL_SOURCES,
    MANIFEST_NAME,
    SOURCES_NAME,
    VERSION,
)
from loader.format.shards import ShardInfo

__all__ = ["IndexWriter"]


def _shard_plain(s: ShardInfo) -> dict[str, Any]:
    d = {"name": s.name, "first": s.first, "records": s.records, "bytes": s.bytes}
    if s.values is not None:
        d["values"] = s.values
    return d


class IndexWriter:
    """Builds a version 4 index record by record in numpy arrays (no per-record Python objects),
    then writes the columns and, last, ``manifest.json``.

    >>> w = IndexWriter("DST", capacity=2)                      # doctest: +SKIP
    >>> w.add(label=0, height=48, width=64, crc=0x352441c2, key=0, offset=0, length=3,
    ...       converted=None, source="cat/1.jpg")                # doctest: +SKIP
    """

    def __init__(self, dst: str | os.PathLike, capacity: int):
        self.dst = Path(dst)
        self.count = 0
        self._cols = {name: np.zeros(capacity if name != "source_offsets" else capacity + 1, dtype=dt)
                      for name, (_, dt) in COLUMNS.items()}
        self._codes: dict[str, int] = {}
        self._sources = open(self.dst / SOURCES_NAME, "wb")
        self._source_bytes = 0

    def add(self, *, label: int, height: int, width: int, crc: int, key: int, offset: int,
            length: int, converted: str | None, source: str) -> int:
        """Append one record; return its global index."""
        k = self.count
        c = self._cols
        c["labels"][k], c["heights"][k], c["widths"][k], c["checksums"][k] = label, height, width, crc
        c["keys"][k], c["offsets"][k], c["lengths"][k] = key, offset, length
        if converted is not None:
            code = self._codes.setdefault(converted, len(self._codes) + 1)
            if code > 255:
                raise ValueError("more than 255 distinct conversions")
            c["converted"][k] = code
        raw = source.encode("utf-8", "surrogateescape")
        self._sources.write(raw)
        self._source_bytes += len(raw)
        c["source_offsets"][k + 1] = self._source_bytes
        self.count = k + 1
        return k

    def extend(self, *, labels, heights, widths, crcs, keys, offsets, lengths, sources: bytes,
               source_ends, converted=None, conversions: Sequence[str] = ()) -> None:
        """Append many records at once from arrays (``source_ends``: each path's end offset in
        ``sources``, relative to it). For synthetic indexes and bulk writers (pack's shards).
        ``converted``: per record 0 (stored as-is) or ``k + 1`` for ``conversions[k]`` (default:
        all as-is); codes are numbered in order of first use, as :meth:`add` numbers them."""
        k, m = self.count, len(labels)
        c = self._cols
        if converted is not None and len(conversions):
            lut = np.zeros(len(conversions) + 1, dtype=np.uint8)
            for i, name in enumerate(conversions):
                code = self._codes.setdefault(name, len(self._codes) + 1)
                if code > 255:
                    raise ValueError("more than 255 distinct conversions")
                lut[i + 1] = code
            c["converted"][k:k + m] = lut[np.asarray(converted)]
        for name, values in (("labels", labels), ("heights", heights), ("widths", widths),
                             ("checksums", crcs), ("keys", keys), ("offsets", offsets),
                             ("lengths", lengths)):
            c[name][k:k + m] = values
        c["source_offsets"][k + 1:k + m + 1] = self._source_bytes + np.asarray(source_ends, dtype=np.int64)
        self._sources.write(sources)
        self._source_bytes += len(sources)
        self.count = k + m

    def close(self) -> None:
        """Close the sources file without writing the index (an aborted pack)."""
        if not self._sources.closed:
            self._sources.close()

    def finish(self, *, classes: Sequence[str], shards: Sequence[ShardInfo], pack_params: dict,
               skipped: int, label_source: str = "folders", unlisted: int = 0,
               label_offsets: np.ndarray | None = None, label_values: np.ndarray | None = None) -> Path:
        """Write every column and ``manifest.json`` (all flushed); return the manifest's path.

        Multi-label: pass ``label_offsets`` (``count + 1`` int64 from 0) and ``label_values``
        (the sorted unique class indices of each record, end to end); the ``labels`` given to
        :meth:`add` must then be -1, as for ``label_source="none"``.
        """
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {label_source!r}")
        multi = label_offsets is not None
        if multi != (label_values is not None) or (multi and label_source != "file"):
            raise ValueError("label_offsets and label_values go together, with label_source='file'")
        self._sources.flush()
        os.fsync(self._sources.fileno())
        self.close()
        n = self.count
        if multi and (len(label_offsets) != n + 1 or label_offsets[0] != 0
                      or label_offsets[-1] != len(label_values)):
            raise ValueError(f"label_offsets must be {n + 1} offsets from 0 to len(label_values)")
        for name, (fname, _) in COLUMNS.items():
            write_column(self.dst / fname, self._cols[name][: n + (name == "source_offsets")])
        if multi:
            for (fname, dt), values in zip(LABEL_COLUMNS.values(), (label_offsets, label_values)):
                write_column(self.dst / fname, np.asarray(values, dtype=dt))
        conversions = sorted(self._codes, key=self._codes.get)
        header = {"format": FORMAT, "version": VERSION, "classes": list(classes),
                  "label_source": label_source, "multi_label": multi,
                  "shards": [_shard_plain(s) for s in shards], "num_records": n,
                  "conversions": conversions, "pack_params": pack_params, "skipped": skipped,
                  "unlisted": unlisted}
        # allow_nan=False: NaN / Infinity are not JSON (strict readers refuse the manifest); pack's
        # options are checked before this, so this only stops a bug from writing one.
        text = "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(header[k], separators=(',', ':'), allow_nan=False)}"
                                  for k in _HEADER_KEYS) + "\n}\n"
        path = self.dst / MANIFEST_NAME
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return path
