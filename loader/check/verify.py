"""``verify``: re-read every record, check its checksum, decode it with DALI.

Decoding is :class:`loader.check.decodecheck.DecodeCheck`, the check the loader
itself runs to name a record that failed in training: DALI's CPU decoder (the
decoder family the loader uses), and the decoded height and width against the
manifest's (the loader computes crop windows from them). So a record that
passes here decodes in training.

DALI is imported only when decoding is asked for: ``verify(decode=False)``
and the rest of ``loader`` run without it.

>>> bad = verify("photos.packed")                       # doctest: +SKIP
>>> bad  # doctest: +SKIP
[(17, 'shard-00000.lmdb', 17, 'cat/017.jpg', 'checksum mismatch (...)')]
"""

from __future__ import annotations

import os
import sys

import numpy as np
from tqdm import tqdm

from loader.check.decodecheck import DecodeCheck
from loader.convert.imagecheck import suspect_reason
from loader.format.dataset import PackedDataset, open_dataset
from loader.format.manifest import record_checksum

__all__ = ["BadRecord", "verify"]

BadRecord = tuple  # (index, shard name, local key, source, reason)
_BATCH = 64


def _read_checked(ds: PackedDataset, lo: int, hi: int) -> list[np.ndarray | str]:
    """Records ``lo..hi-1``: each one's bytes, or why they are bad: it cannot be read (missing
    from its shard, cut short, on a damaged LMDB page: the rest of the shard is still checked)
    or its checksum does not match."""
    unreadable: dict[int, str] = {}
    out: list[np.ndarray | str] = []
    for i, data in zip(range(lo, hi), ds.read_batch(np.arange(lo, hi), unreadable=unreadable)):
        if i in unreadable:
            out.append(unreadable[i])
            continue
        digest = record_checksum(data, ds.manifest.version)
        if digest != ds.checksum(i):
            out.append(f"checksum mismatch (stored bytes hash to {digest}, manifest says {ds.checksum(i)})")
        else:
            out.append(data)
    return out


def verify(dst: str | os.PathLike, *, decode: bool = True, progress: bool = True) -> list[BadRecord]:
    """Check every record of the packed dataset ``dst``; return the bad ones.

    Each bad record is ``(index, shard, key, source, reason)``. Raises
    :class:`DatasetError` when the dataset cannot be opened at all.

    >>> verify("photos.packed")                             # doctest: +SKIP
    []
    """
    ds = open_dataset(dst)
    decoder = DecodeCheck(batch_size=_BATCH) if decode else None
    bad: list[BadRecord] = []

    def report(i: int, reason: str) -> None:
        shard, key = ds.locate(i)
        bad.append((i, shard, key, ds.source(i), reason))

    with tqdm(total=len(ds), unit="img", desc="verify", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for lo in range(0, len(ds), _BATCH):
            good_idx, arrays = [], []
            for i, data in enumerate(_read_checked(ds, lo, min(lo + _BATCH, len(ds))), start=lo):
                if isinstance(data, str):
                    report(i, data)
                else:
                    good_idx.append(i)
                    arrays.append(data)
            if decoder is not None and arrays:
                # The bytes already read (and checksummed) are the ones decoded.
                reasons = decoder.check_arrays(arrays, ds.heights[good_idx], ds.widths[good_idx])
                for i, reason, a in zip(good_idx, reasons, arrays):
                    if reason is None:   # decodes, but the decoder filled in missing data (pack skips these)
                        reason = suspect_reason(a.tobytes())
                    if reason is not None:
                        report(i, reason)
            bar.update(min(lo + _BATCH, len(ds)) - lo)
    ds.close()
    return bad
