"""Check a record before DALI sees it: its bytes are the ones pack stored, and its header's size is the manifest's.

Why before: when one of DALI's operators fails inside its asynchronous
executor, the next thing the process does with DALI can kill it with SIGSEGV
instead of raising: the main thread feeding the next iteration
(``Pipeline._feed_input`` -> ``SetExternalTensorInput``, during ``run()``'s
prefetch), a finisher thread still reading the outputs of an earlier batch, or
building the next pipeline. Measured on DALI 2.4, 600 photos, batch 32: a
record with its first 4 bytes zeroed, or every height in the manifest tripled,
crashed the process in 10 of 12 (seed, damage) runs (none of the same 12 after). So records that would make
DALI fail are kept from it: a record whose stored bytes no longer match the
manifest's checksum (bit rot, truncation, replacement) or whose image header
gives another height and width than the manifest (a crop window outside the
image) is rejected here, in the feed, with the culprit named.

Each record is checked once per process (a bitmap), so only the first epoch
pays: ~20 us per record (CRC-32 of ~53 KB plus a header walk; see
``benchmarks/test_bench_lmdb_read.py::test_record_guard``) against ~1 ms of
decode and augmentation per image.

What it cannot catch: bytes that match a checksum written for them but do not
decode (a manifest rewritten to bless garbage), or a JPEG that Pillow accepted at
pack time and DALI rejects. Those still reach DALI.
"""

from __future__ import annotations

import zlib

import numpy as np

from loader.format.imageheader import header_size

__all__ = ["RecordGuard", "RecordRejected", "header_size"]   # header_size: re-exported (its home: imageheader)


class RecordRejected(Exception):
    """A record failed :class:`RecordGuard`: ``index`` and ``reason`` say which and why."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"record {index}: {reason}")
        self.index, self.reason = index, reason


class RecordGuard:
    """Checks each record of ``dataset`` the first time it is fed (see the module docstring)."""

    def __init__(self, dataset):
        self._ds = dataset
        self._checked = np.zeros(len(dataset), dtype=bool)
        self.bad: dict[int, str] = {}               # record -> reason, for every bad record met so far
        # One uint32 per record (mapped in version 3); version 1's blake2b costs 5x: size check only.
        self._crc = dataset.manifest.crc32

    def _reason(self, i: int, a) -> str | None:
        ds = self._ds
        if self._crc is not None:
            digest = zlib.crc32(a)
            if digest != int(self._crc[i]):
                return (f"its stored bytes do not match the manifest (CRC-32 {digest:08x}, manifest "
                        f"{ds.checksum(i)}): the shard is damaged")
        size = header_size(a)
        if size is None:
            return "its stored bytes do not start with a JPEG or PNG header"
        h, w = int(ds.heights[i]), int(ds.widths[i])
        if size != (h, w):
            return f"its header says {size[0]}x{size[1]} but the manifest says {h}x{w} (height x width)"
        return None

    def bad_positions(self, records: np.ndarray, arrays) -> list[int]:
        """Positions in ``records`` of bad records (checking those not checked before)."""
        for k in np.flatnonzero(~self._checked[records]).tolist():
            i = int(records[k])
            reason = self._reason(i, arrays[k])
            if reason is None:
                self._checked[i] = True
            else:
                self.bad.setdefault(i, reason)
        return [k for k, i in enumerate(records.tolist()) if i in self.bad] if self.bad else []

    def good(self, i: int) -> bool:
        """Whether record ``i`` passes (reading it if it was not checked yet)."""
        if self._checked[i]:
            return True
        if i in self.bad:
            return False
        reason = self._reason(i, np.frombuffer(self._ds.read(i), dtype=np.uint8))
        if reason is None:
            self._checked[i] = True
            return True
        self.bad[i] = reason
        return False

    def check(self, records: np.ndarray, arrays) -> None:
        """Raise :class:`RecordRejected` for the first bad record of a batch about to be fed."""
        bad = self.bad_positions(records, arrays)
        if bad:
            i = int(records[bad[0]])
            raise RecordRejected(i, self.bad[i])
