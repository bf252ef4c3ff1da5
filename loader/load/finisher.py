"""The CPU graph's last step, outside DALI: decoded crop windows -> the finished torch batch.

On the CPU the DALI graph (:mod:`loader.load.pipeline`) stops after the region decode;
:class:`CpuFinisher` resizes, flips, colour-jitters and normalizes each crop straight into the
torch batch. Why not DALI's CPU ``fn.resize``: it costs ~1.2 ms of CPU per 224 px image here
(region decode alone ~2300 img/s on 2 cores, with ``fn.resize`` ~860 img/s), where torch's uint8
antialiased bilinear kernel does the same job in ~0.2 ms, bit-identical to Pillow's bilinear
resize (torchvision's PIL path). Why outside the pipeline rather than in a ``python_function``:
DALI runs a CPU stage's operators one after the other, so the resize would wait for the decode of
its batch and the decoders for the resize; outside, the finisher's threads run while DALI's
decode the next batches, and each image is normalized while it is still in cache instead of in a
second pass over the batch.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from loader.augment.jitter import jitter_image_

__all__ = ["CpuFinisher"]


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _interpolate_into(x: torch.Tensor, size: int | tuple[int, int], out: torch.Tensor) -> None:
    """``out[:] = x`` resized to ``size`` (``s x s``, or ``(h, w)``), antialiased bilinear, through the public API."""
    out.copy_(torch.nn.functional.interpolate(x, size=_hw(size), mode="bilinear", antialias=True,
                                              align_corners=False))


def _select_resize_into(aten=torch.ops.aten):
    """The fastest ``resize_into(x, size, out)`` this torch offers (``size``: ``s`` or ``(h, w)``).

    The private aten op behind ``F.interpolate(mode="bilinear", antialias=True)``
    in its ``out=`` form skips ~15 us of argument checks and a copy per call;
    being private it may be gone in another torch, where the public call (the
    same kernel, same pixels) takes over.
    """
    try:
        op = aten._upsample_bilinear2d_aa.out
    except (AttributeError, RuntimeError):   # torch raises either for an unknown op / overload
        return _interpolate_into

    def _aten_into(x: torch.Tensor, size: int | tuple[int, int], out: torch.Tensor) -> None:
        op(x, list(_hw(size)), False, None, None, out=out)

    return _aten_into


_resize_into = _select_resize_into()



def _find_omp_set_num_threads():
    """``omp_set_num_threads`` of the OpenMP runtime torch loaded, or None (not Linux, not found)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps
                            if any(k in line for k in ("libgomp", "libiomp", "libomp"))})
        return ctypes.CDLL(paths[0]).omp_set_num_threads if paths else None
    except (OSError, AttributeError):
        return None


_omp_set_num_threads = _find_omp_set_num_threads()


def _serial_torch_in_this_thread() -> None:
    """Make torch run this thread's ops on this thread alone; other threads keep their setting.

    One 224 px image is too small to split: with torch's default, every op of
    every finisher thread opened an OpenMP team on these 2 cores, ~500 context
    switches per batch and ~13% of the throughput lost (measured here with
    OMP_NUM_THREADS=1). ``torch.set_num_threads`` is process-wide; OpenMP's
    own setting is per thread.
    """
    torch.get_num_threads()        # torch sets this thread's OpenMP default on first use: do it first
    if _omp_set_num_threads is not None:
        _omp_set_num_threads(1)


class CpuFinisher:
    """The CPU graph's last step: decoded crop windows -> the finished torch batch.

    For each image: torch's uint8 antialiased bilinear resize to ``size x size``
    (AVX2; bit-identical to Pillow's ``Image.resize(..., BILINEAR)``, i.e. to
    torchvision's PIL ``RandomResizedCrop``), the flip, then the cast and
    normalization written straight into its slot of the output batch, while
    the image is still in cache. Images are spread over a small thread pool
    (torch releases the GIL), which runs while DALI's threads decode the next
    batches.

    >>> finisher = CpuFinisher(threads=2)                              # doctest: +SKIP
    >>> finisher(crops, flips, out, mean, inv_std)   # out: [N, 3, S, S]   # doctest: +SKIP
    """

    def __init__(self, threads: int):
        self._threads = max(threads, 1)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="loader-finish",
                                        initializer=_serial_torch_in_this_thread)
        self._scratch = threading.local()

    def _resized(self, x: torch.Tensor, size: int) -> torch.Tensor:
        # Resized into a per-thread channels-last buffer: with a channels-last
        # output torch's kernel skips a slow planar repack (0.19 vs 0.26 ms per
        # 224 px image, measured here), more than the transposing cast then costs.
        c = x.shape[1]
        buf = getattr(self._scratch, "buf", None)
        if buf is None or buf.shape[-1] != size or buf.shape[1] != c:
            buf = torch.empty((1, size, size, c), dtype=torch.uint8).permute(0, 3, 1, 2)
            self._scratch.buf = buf
        _resize_into(x, size, buf)
        return buf[0]

    def _float_scratch(self, shape) -> torch.Tensor:
        buf = getattr(self._scratch, "f32", None)
        if buf is None or buf.shape != shape:
            buf = self._scratch.f32 = torch.empty(shape, dtype=torch.float32)
        return buf

    def _image(self, crop: np.ndarray, size: int, geometry, k: int) -> torch.Tensor:
        """One window -> the resized uint8 CHW image (a view; valid until this thread's next image)."""
        if crop.ndim == 2:
            crop = crop[:, :, None]
        x = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0)   # NCHW view of HWC
        if geometry is not None:
            # torchvision-exact eval: the window resampled with the whole image's filter, as
            # torchvision's Resize would have (loader.augment.torchvision_eval).
            from loader.augment.torchvision_eval import ResizeScratch, resize_window

            scratch = getattr(self._scratch, "eval", None)
            if scratch is None:
                scratch = self._scratch.eval = ResizeScratch()
            return resize_window(x, geometry, k, scratch, _resize_into)
        return x[0] if x.shape[-2:] == (size, size) else self._resized(x, size)

    def _run(self, crops, flips, out, mean, inv_std, geometry, jitter, picks) -> None:
        size = out.shape[-1]
        for k in picks:
            y = self._image(crops[k], size, geometry, k)
            if flips[k]:
                y = y.flip(-1)
            dst = out[k]
            if jitter is not None:
                rows, enabled = jitter
                f = self._float_scratch(y.shape)
                f.copy_(y)
                y = jitter_image_(f.unsqueeze(0), rows[k], enabled)[0]
                if dst.dtype == torch.uint8:
                    y = y.round_()
            if mean is None:
                dst.copy_(y)
            else:
                # The cast fused into the subtraction: one pass less over the
                # image than copy_ + sub_ (~0.12 vs ~0.15 ms), same results.
                torch.sub(y, mean, out=dst).mul_(inv_std)

    def __call__(self, crops: Sequence[np.ndarray], flips: Sequence[int], out: torch.Tensor,
                 mean: torch.Tensor | None = None, inv_std: torch.Tensor | None = None,
                 geometry=None, jitter=None) -> torch.Tensor:
        """Fill ``out`` ([N, C, S, S], any dtype/strides) with ``(resize(crop) - mean) * inv_std``.

        ``crops`` are uint8 HWC arrays of any size (C = 3, or 1 for grayscale);
        ``mean``/``inv_std`` broadcast as ``[C, 1, 1]`` in pixel units (None: no
        normalization). ``geometry``
        (:class:`loader.augment.torchvision_eval.EvalGeometry` of the batch): resample each
        window as torchvision's eval would have, exactly. ``jitter``: ``(rows, enabled)``, the
        rows of :meth:`loader.augment.jitter.JitterParams.to_array` as lists: colour jitter
        after the flip (:func:`loader.augment.jitter.jitter_image_`).
        """
        n = len(crops)
        # Interleaved shares, two per thread: crop sizes vary ~12x, and a
        # pool hand-off costs ~20 us, so not one task per image.
        k = max(1, min(2 * self._threads, n))
        tasks = [self._pool.submit(self._run, crops, flips, out, mean, inv_std, geometry, jitter,
                                   range(j, n, k))
                 for j in range(k)]
        for t in tasks:
            t.result()
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
