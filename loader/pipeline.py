"""The DALI pipeline: encoded records in, augmented fixed-size batches out.

One graph for every case (:func:`image_graph`), with the device as a parameter:

    feed (bytes, crop window, flip, label, index)     <- loader.feed.EpochFeed
      -> decoders.image_slice   decode only the crop window ("mixed" = nvJPEG on CUDA)
      -> resize to image_size   (GPU: fn.resize; CPU: torch's uint8 kernel, see below)
      -> crop_mirror_normalize  flip, normalize, cast, HWC -> CHW (GPU; CPU: see below)

Crop windows and flips are drawn in numpy (loader.sampler.crop_windows) from
(seed, epoch, position) rather than by DALI's RNG, so a resumed run, every DDP
rank and the CPU and GPU graphs all agree on the augmentation of a sample, and
train and eval share the graph (eval's window is the centre crop).

On the CPU the DALI graph stops after the region decode; :class:`CpuFinisher`
resizes, flips and normalizes each crop straight into the torch batch. Why not
DALI's CPU ``fn.resize``: it costs ~1.2 ms of CPU per 224 px image here (region
decode alone ~2300 img/s on 2 cores, with ``fn.resize`` ~860 img/s), where
torch's uint8 antialiased bilinear kernel does the same job in ~0.2 ms,
bit-identical to Pillow's bilinear resize (torchvision's PIL path). Why outside
the pipeline rather than in a ``python_function``: DALI runs a CPU stage's
operators one after the other, so the resize would wait for the decode of its
batch and the decoders for the resize; outside, the finisher's threads run
while DALI's decode the next batches, and each image is normalized while it is
still in cache instead of in a second pass over the batch. The GPU graph stays
pure DALI.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

__all__ = ["image_graph", "build_pipeline", "CpuFinisher", "DALI_DTYPES"]


def _interpolate_into(x: torch.Tensor, size: int, out: torch.Tensor) -> None:
    """``out[:] = x`` resized to ``size x size``, antialiased bilinear, through the public API."""
    out.copy_(torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False))


def _select_resize_into(aten=torch.ops.aten):
    """The fastest ``resize_into(x, size, out)`` this torch offers.

    The private aten op behind ``F.interpolate(mode="bilinear", antialias=True)``
    in its ``out=`` form skips ~15 us of argument checks and a copy per call;
    being private it may be gone in another torch, where the public call (the
    same kernel, same pixels) takes over.
    """
    try:
        op = aten._upsample_bilinear2d_aa.out
    except (AttributeError, RuntimeError):   # torch raises either for an unknown op / overload
        return _interpolate_into

    def _aten_into(x: torch.Tensor, size: int, out: torch.Tensor) -> None:
        op(x, [size, size], False, None, None, out=out)

    return _aten_into


_resize_into = _select_resize_into()

# torch dtype name -> DALI output type of crop_mirror_normalize.
DALI_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "uint8": types.UINT8}


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
        buf = getattr(self._scratch, "buf", None)
        if buf is None or buf.shape[-1] != size:
            buf = torch.empty((1, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
            self._scratch.buf = buf
        _resize_into(x, size, buf)
        return buf[0]

    def _run(self, crops, flips, out, mean, inv_std, picks) -> None:
        size = out.shape[-1]
        for k in picks:
            x = torch.from_numpy(crops[k]).permute(2, 0, 1).unsqueeze(0)   # NCHW view of HWC
            y = x[0] if x.shape[-2:] == (size, size) else self._resized(x, size)
            if flips[k]:
                y = y.flip(-1)
            dst = out[k]
            if mean is None:
                dst.copy_(y)
            else:
                # The cast fused into the subtraction: one pass less over the
                # image than copy_ + sub_ (~0.12 vs ~0.15 ms), same results.
                torch.sub(y, mean, out=dst).mul_(inv_std)

    def __call__(self, crops: Sequence[np.ndarray], flips: Sequence[int], out: torch.Tensor,
                 mean: torch.Tensor | None = None, inv_std: torch.Tensor | None = None) -> torch.Tensor:
        """Fill ``out`` ([N, 3, S, S], any dtype/strides) with ``(resize(crop) - mean) * inv_std``.

        ``crops`` are uint8 HWC arrays of any size; ``mean``/``inv_std``
        broadcast as ``[3, 1, 1]`` in pixel units (None: no normalization).
        """
        n = len(crops)
        # Interleaved shares, two per thread: crop sizes vary ~12x, and a
        # pool hand-off costs ~20 us, so not one task per image.
        k = max(1, min(2 * self._threads, n))
        tasks = [self._pool.submit(self._run, crops, flips, out, mean, inv_std, range(j, n, k))
                 for j in range(k)]
        for t in tasks:
            t.result()
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def image_graph(source, *, device: str, image_size: int, dtype: str = "float32", layout: str = "CHW",
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """Define the graph inside an active ``Pipeline`` context.

    ``device`` is "cpu" or "gpu".

    - GPU: returns (images, labels, indices), on the GPU. Images are final:
      resized, flipped, ``dtype``, ``layout``, normalized by ``mean``/``std``
      (pixel units, 0..255; None = no normalization) in ``crop_mirror_normalize``.
    - CPU: returns (crops, labels, indices, flips): the decoded crop windows
      (uint8 HWC, each its own size) and the flip flags.
      :class:`CpuFinisher` resizes, flips and normalizes them into the torch
      batch; ``dtype``/``layout``/``mean``/``std`` are unused here.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    jpegs, anchor, shape, flip, labels, indices = fn.external_source(
        source=source, num_outputs=6, batch=True, cycle="raise",
        dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32, types.INT64, types.INT64])
    images = fn.decoders.image_slice(
        jpegs, anchor, shape, device="mixed" if device == "gpu" else "cpu",
        output_type=types.RGB, normalized_anchor=False, normalized_shape=False, axis_names="WH")
    if device == "cpu":
        return images, labels, indices, flip
    images = fn.resize(images, size=[image_size, image_size], interp_type=types.INTERP_LINEAR,
                       antialias=True)
    images = fn.crop_mirror_normalize(
        images, mirror=flip, dtype=DALI_DTYPES[dtype], output_layout=layout,
        mean=list(mean) if mean is not None else [0.0, 0.0, 0.0],
        std=list(std) if std is not None else [1.0, 1.0, 1.0])
    return images, labels.gpu(), indices


def build_pipeline(source, *, batch_size: int, num_threads: int, device_id: int | None,
                   prefetch: int, seed: int, **graph_options) -> Pipeline:
    """Build the pipeline of :func:`image_graph` for ``device_id`` (None = DALI's CPU backend)."""
    device = "cpu" if device_id is None else "gpu"
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                    prefetch_queue_depth=prefetch, seed=seed, exec_async=True, exec_pipelined=True)
    with pipe:
        pipe.set_outputs(*image_graph(source, device=device, **graph_options))
    pipe.build()
    return pipe
