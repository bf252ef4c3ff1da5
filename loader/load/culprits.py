"""Naming the record behind a failed batch: the ``DecodeError`` and the ``on_error="replace"`` warning.

Every message names the record as ``record I (shard S, key K, source 'path')`` (:func:`record_name`)
and ends with the command that checks the whole dataset, ``loader verify DST``.
"""

from __future__ import annotations

import warnings

from loader.errors import DecodeError

__all__ = ["culprit", "decode_error", "record_name", "warn_replaced"]


def record_name(dataset, i: int) -> str:
    """``record I (shard S, key K, source 'path')``: where record ``i`` is and where it came from."""
    shard, key = dataset.locate(i)
    return f"record {i} (shard {shard}, key {key}, source {dataset.source(i)!r})"


def culprit(dataset, i: int, reason: str) -> DecodeError:
    """The error for record ``i``, which failed to load for ``reason``."""
    return DecodeError(f"{record_name(dataset, i)} failed to load: {reason}; run `loader verify {dataset.where}`")


def decode_error(dataset, in_flight, err: Exception, *, batch_size: int, num_threads: int) -> DecodeError:
    """Turn a DALI failure into an error naming the shard and record.

    The culprit is searched with :class:`loader.check.decodecheck.DecodeCheck`, the check
    ``loader verify`` runs: DALI's decoder and the manifest's height and width, which the crop
    windows come from (Pillow decodes records DALI rejects, and a wrong size only shows against
    the manifest). Only the records DALI was handed last (``in_flight``: the feed's batches of
    record indices) are searched: the failed batch is among them, and any further search would
    decode more data that DALI may crash on rather than reject.
    """
    from loader.check.decodecheck import DecodeCheck, dali_reason

    records = list(dict.fromkeys(i for batch in list(in_flight) for i in batch.tolist()))
    try:
        bad = DecodeCheck(batch_size=max(1, min(batch_size, 64)), num_threads=num_threads).check(dataset, records)
    except Exception:  # noqa: BLE001 - the search must not hide DALI's own error
        bad = []
    if bad:
        return culprit(dataset, *bad[0])
    return DecodeError(f"DALI failed on a batch of {dataset.where}: {dali_reason(err)}; "
                       f"run `loader verify {dataset.where}`")


def warn_replaced(dataset, replaced: dict[int, int], reasons: dict[int, str], warned: set[int]) -> None:
    """One RuntimeWarning per damaged record not warned about yet (``warned`` is updated)."""
    for bad, good in replaced.items():
        if bad not in warned:
            warned.add(bad)
            warnings.warn(f"loader: {record_name(dataset, bad)} is damaged: {reasons[bad]}; replaced by record "
                          f"{good} (on_error='replace'); run `loader verify {dataset.where}`", RuntimeWarning,
                          stacklevel=5)
