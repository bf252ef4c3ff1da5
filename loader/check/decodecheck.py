"""Does a record decode the way training needs it to? One check, for ``verify`` and the loader.

Training decodes each record with DALI, inside a crop window computed from
the manifest's height and width. So a record is good when DALI's CPU decoder
decodes it, to exactly the size the manifest promises. :class:`DecodeCheck`
checks that, and is what both :func:`loader.check.verify.verify` (every record) and
:class:`loader.ImageLoader` (after a failed batch, to name the culprit) use.
Pillow is no substitute: it decodes records DALI rejects, and a wrong manifest
size only shows against the manifest.

DALI is imported when a :class:`DecodeCheck` is built, so importing this
module is cheap.

>>> check = DecodeCheck()                                # doctest: +SKIP
>>> check.check(open_dataset("photos.packed"), range(100))   # doctest: +SKIP
[(17, 'decodes to 48x64 but the manifest says 96x128 (height x width)')]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from loader.errors import import_dali
from loader.units import available_cores

__all__ = ["DecodeCheck", "dali_reason"]


def dali_reason(e: BaseException) -> str:
    """The informative line of a DALI pipeline error (DALI wraps it in boilerplate), at most 160 chars.

    >>> dali_reason(RuntimeError("Critical error in pipeline:\\nError in CPU operator ...\\n\\n"
    ...     "encountered:\\n\\nnvImageCodec failure: '#4'\\nCurrent pipeline object is no longer valid."))
    "nvImageCodec failure: '#4'"
    """
    text = str(e)
    if not text.strip():
        return type(e).__name__
    m = re.search(r"encountered:\s*(.+?)\s*(?:Current pipeline object|$)", text, re.DOTALL)
    lines = (m.group(1) if m else text).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:160]


class DecodeCheck:
    """A small CPU-only DALI pipeline that decodes records and compares their size with the manifest.

    Args:
        batch_size: records decoded per DALI run. A failed run is retried one
            record at a time to find the culprit(s).
        num_threads: DALI threads (default: up to 4 of the available cores).

    Reasons, for a record that fails:

    - ``"DALI cannot decode it: <DALI's message>"``
    - ``"decodes to HxW but the manifest says HxW (height x width)"``

    DALI may crash the process (not raise) on some damaged data; callers that
    must survive that run the check in a subprocess.
    """

    def __init__(self, batch_size: int = 64, num_threads: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.num_threads = num_threads or min(4, available_cores())
        self._pipe = self._build()

    def _build(self):
        import_dali("decoding records (`loader verify`; `--no-decode` checks checksums without DALI)")
        from nvidia.dali import fn, pipeline_def, types

        # Synchronous: after an operator error DALI's asynchronous executor can leave the
        # process to die with SIGSEGV on the next feed, build or teardown (loader.load.pipeline).
        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=None,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def decode_pipe():
            data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(data, device="cpu", output_type=types.RGB)

        pipe = decode_pipe()
        pipe.build()
        return pipe

    def _run(self, arrays: Sequence[np.ndarray]) -> list[tuple[int, ...]]:
        self._pipe.feed_input("data", list(arrays))
        (out,) = self._pipe.run()
        return [tuple(out.at(k).shape) for k in range(len(arrays))]

    def shapes(self, arrays: Sequence[np.ndarray]) -> list[tuple[int, ...] | str]:
        """Decoded HWC shape of each encoded array (uint8, 1-D), or why DALI could not decode it."""
        result: list[tuple[int, ...] | str] = []
        for lo in range(0, len(arrays), self.batch_size):
            chunk = arrays[lo:lo + self.batch_size]
            try:
                result.extend(self._run(chunk))
                continue
            except Exception:  # noqa: BLE001 - DALI raises RuntimeError or others; the retry says why
                self._pipe = self._build()  # a failed DALI pipeline cannot be reused
            for a in chunk:  # find the culprit(s): one record at a time
                try:
                    result.extend(self._run([a]))
                except Exception as e:  # noqa: BLE001 - any failure is this record's
                    result.append(f"DALI cannot decode it: {dali_reason(e)}")
                    self._pipe = self._build()
        return result

    def check_arrays(self, arrays: Sequence[np.ndarray], heights: Sequence[int],
                     widths: Sequence[int]) -> list[str | None]:
        """For each encoded array, why it fails (see the class docstring), or None if it is good."""
        reasons: list[str | None] = []
        for shape, h, w in zip(self.shapes(arrays), heights, widths):
            h, w = int(h), int(w)
            if isinstance(shape, str):
                reasons.append(shape)
            elif shape[:2] != (h, w):
                reasons.append(f"decodes to {shape[0]}x{shape[1]} but the manifest says {h}x{w} "
                               f"(height x width)")
            else:
                reasons.append(None)
        return reasons

    def check(self, dataset, indices: Iterable[int]) -> list[tuple[int, str]]:
        """``(index, reason)`` for each record of ``dataset`` among ``indices`` that fails, in order.

        ``dataset`` is a :class:`loader.format.dataset.PackedDataset`; a record
        that cannot be read (missing, cut short, on a damaged LMDB page) raises :class:`loader.errors.DatasetError`.
        """
        idx = np.asarray(list(indices), dtype=np.int64).reshape(-1)
        bad: list[tuple[int, str]] = []
        for lo in range(0, len(idx), self.batch_size):
            part = idx[lo:lo + self.batch_size]
            reasons = self.check_arrays(dataset.read_batch(part), dataset.heights[part], dataset.widths[part])
            bad.extend((int(i), r) for i, r in zip(part.tolist(), reasons) if r is not None)
        return bad
