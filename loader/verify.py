"""``verify``: re-read every record, check its checksum, decode it with DALI.

Decoding uses the same decoder family the loader uses (DALI's CPU decoder),
so a record that passes here decodes in training, with the height and width
the manifest promises (the loader computes crop windows from them).

DALI is imported only when decoding is asked for: ``verify(decode=False)``
and the rest of ``loader`` run without it.

>>> bad = verify("photos.packed")                       # doctest: +SKIP
>>> bad  # doctest: +SKIP
[(17, 'shard-00000.lmdb', 17, 'cat/017.jpg', 'checksum mismatch (...)')]
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
from tqdm import tqdm

from loader.dataset import PackedDataset, open_dataset
from loader.errors import DatasetError
from loader.manifest import record_checksum
from loader.units import available_cores

__all__ = ["BadRecord", "verify"]

BadRecord = tuple  # (index, shard name, local key, source, reason)
_BATCH = 64


def _dali_reason(e: Exception) -> str:
    """The informative part of a DALI pipeline error (it wraps it in boilerplate)."""
    text = str(e)
    m = re.search(r"encountered:\s*(.+?)\s*(?:Current pipeline object|$)", text, re.DOTALL)
    line = (m.group(1) if m else text).strip().splitlines()[0] if text.strip() else type(e).__name__
    return line[:160]


class _DaliDecoder:
    """A small CPU-only DALI pipeline: encoded bytes in, HWC RGB arrays out."""

    def __init__(self, batch_size: int = _BATCH):
        self.batch_size = batch_size
        self._pipe = self._build()

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=self.batch_size, num_threads=min(4, available_cores()),
                      device_id=None, prefetch_queue_depth=1)
        def decode_pipe():
            data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(data, device="cpu", output_type=types.RGB)

        pipe = decode_pipe()
        pipe.build()
        return pipe

    def _run(self, arrays: list[np.ndarray]) -> list[tuple[int, ...]]:
        self._pipe.feed_input("data", arrays)
        (out,) = self._pipe.run()
        return [tuple(out.at(k).shape) for k in range(len(arrays))]

    def shapes(self, arrays: list[np.ndarray]) -> list[tuple[int, ...] | str]:
        """Decoded shape of each array, or the reason it failed to decode."""
        try:
            return self._run(arrays)
        except Exception:
            self._pipe = self._build()  # a failed DALI pipeline cannot be reused
        # Find the culprit(s): one record at a time.
        result: list[tuple[int, ...] | str] = []
        for a in arrays:
            try:
                result.extend(self._run([a]))
            except Exception as e:
                result.append(f"DALI cannot decode it: {_dali_reason(e)}")
                self._pipe = self._build()
        return result


def _read_checked(ds: PackedDataset, i: int) -> bytes | str:
    """Record ``i``'s bytes, or why they are bad (missing, checksum)."""
    try:
        data = ds.read(i)
    except DatasetError:
        return "record missing from its shard"
    digest = record_checksum(data, ds.manifest.version)
    if digest != ds.checksum(i):
        return f"checksum mismatch (stored bytes hash to {digest}, manifest says {ds.checksum(i)})"
    return data


def verify(dst: str | os.PathLike, *, decode: bool = True, progress: bool = True) -> list[BadRecord]:
    """Check every record of the packed dataset ``dst``; return the bad ones.

    Each bad record is ``(index, shard, key, source, reason)``. Raises
    :class:`DatasetError` when the dataset cannot be opened at all.

    >>> verify("photos.packed")                             # doctest: +SKIP
    []
    """
    ds = open_dataset(dst)
    decoder = _DaliDecoder() if decode else None
    bad: list[BadRecord] = []

    def report(i: int, reason: str) -> None:
        shard, key = ds.locate(i)
        bad.append((i, shard, key, ds.source(i), reason))

    with tqdm(total=len(ds), unit="img", desc="verify", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for lo in range(0, len(ds), _BATCH):
            good_idx, arrays = [], []
            for i in range(lo, min(lo + _BATCH, len(ds))):
                data = _read_checked(ds, i)
                if isinstance(data, str):
                    report(i, data)
                else:
                    good_idx.append(i)
                    arrays.append(np.frombuffer(data, dtype=np.uint8))
            if decoder is not None and arrays:
                for i, shape in zip(good_idx, decoder.shapes(arrays)):
                    if isinstance(shape, str):
                        report(i, shape)
                    elif shape[:2] != (int(ds.heights[i]), int(ds.widths[i])):
                        report(i, f"decodes to {shape[0]}x{shape[1]} but the manifest says "
                                  f"{int(ds.heights[i])}x{int(ds.widths[i])} (height x width)")
            bar.update(min(lo + _BATCH, len(ds)) - lo)
    ds.close()
    return bad
