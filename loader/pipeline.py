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

On the CPU the graph stops after resize + flip; the iterator normalizes while
copying into torch (see :func:`image_graph`). Why the CPU graph does not
resize with ``fn.resize``: on DALI's CPU backend it
costs ~1.2 ms of CPU per 224 px image (measured here: region decode alone ~2300
img/s on 2 cores, with ``fn.resize`` ~860 img/s). torch's uint8 antialiased
bilinear kernel does the same job in ~0.3 ms, bit-identical to Pillow's
bilinear resize (torchvision's PIL path). It runs inside the pipeline as a
batch ``python_function`` (:class:`CpuResize`), so DALI still overlaps it with
decoding the next batch. The GPU graph stays pure DALI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from loader.sampler import crop_windows

__all__ = ["image_graph", "build_pipeline", "CpuResize", "DecodeLimit", "DALI_DTYPES"]

_resize_aa = torch.ops.aten._upsample_bilinear2d_aa   # F.interpolate(mode="bilinear", antialias=True)

# torch dtype name -> DALI output type of crop_mirror_normalize.
DALI_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "uint8": types.UINT8}


class CpuResize:
    """The CPU graph's resize and flip: HWC uint8 crops -> CHW uint8 ``size x size``.

    torch's antialiased bilinear kernel for uint8 channels-last images (AVX2):
    bit-identical to Pillow's ``Image.resize(..., BILINEAR)`` (so to
    torchvision's PIL ``RandomResizedCrop``), reads DALI's arrays without a copy
    and, unlike Pillow, needs no RGB -> RGBX conversion in and out. Runs on a
    small thread pool (torch releases the GIL).
    """

    def __init__(self, size: int, threads: int):
        self.size = size
        self._threads = max(threads, 1)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="loader-resize")

    def _one(self, crop: np.ndarray, flip: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0)   # NCHW view of DALI's HWC array
        if x.shape[-2:] == (self.size, self.size):
            y = x[0].contiguous()
        else:
            # The aten op F.interpolate(..., antialias=True) dispatches to, minus
            # ~15 us of argument checks per call. It writes NCHW: DALI gets CHW
            # as is rather than a uint8 transpose here (~0.17 ms per image).
            y = _resize_aa(x, [self.size, self.size], False)[0]
        if flip:
            y = y.flip(-1)
        return y.numpy()

    def _chunk(self, crops: Sequence[np.ndarray], flips: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self._one(c, f) for c, f in zip(crops, flips)]

    def __call__(self, crops: Sequence[np.ndarray], flips: Sequence[np.ndarray]) -> list[np.ndarray]:
        # One task per thread, not per image: a pool hand-off costs ~20 us.
        n = len(crops)
        k = max(1, min(self._threads, n))
        bounds = [n * i // k for i in range(k + 1)]
        parts = self._pool.map(self._chunk, *zip(*[(crops[a:b], flips[a:b])
                                                    for a, b in zip(bounds, bounds[1:])]))
        return [y for part in parts for y in part]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def image_graph(source, *, device: str, image_size: int, dtype: str = "float32", layout: str = "CHW",
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                cpu_resize: Callable | None = None):
    """Define the graph inside an active ``Pipeline`` context; return (images, labels, indices).

    ``device`` is "cpu" or "gpu"; images and labels live on it.

    - GPU: images are final: ``dtype``, ``layout``, normalized by ``mean``/``std``
      (pixel units, 0..255; None = no normalization) in ``crop_mirror_normalize``.
    - CPU: images are resized and flipped, uint8 CHW; the iterator casts and
      normalizes them while copying into torch (:func:`normalize_into`), one
      fused pass where DALI's CPU ``crop_mirror_normalize`` plus the float copy
      cost ~4x more (0.35 vs 0.08 ms per 224 px image, measured here).
      ``dtype``/``layout``/``mean``/``std`` are then unused. ``cpu_resize`` is the
      batch resize callable (default: :class:`CpuResize`).
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
        resize = cpu_resize or CpuResize(image_size, 2)
        images = fn.python_function(images, flip, function=resize, batch_processing=True,
                                    output_layouts="CHW")
        return images, labels, indices
    images = fn.resize(images, size=[image_size, image_size], interp_type=types.INTERP_LINEAR,
                       antialias=True)
    images = fn.crop_mirror_normalize(
        images, mirror=flip, dtype=DALI_DTYPES[dtype], output_layout=layout,
        mean=list(mean) if mean is not None else [0.0, 0.0, 0.0],
        std=list(std) if std is not None else [1.0, 1.0, 1.0])
    return images, labels.gpu(), indices


def normalize_into(out: torch.Tensor, images: torch.Tensor, mean: torch.Tensor | None,
                   inv_std: torch.Tensor | None) -> torch.Tensor:
    """``out = (images - mean) * inv_std`` for the CPU graph's uint8 NCHW batch.

    ``out`` may be channels_last or another dtype; ``mean``/``inv_std`` broadcast
    as ``[1, 3, 1, 1]`` in pixel units. A converting copy then two in-place
    passes: ~0.08 ms per 224 px image on one core, where a single mixed-dtype
    ``torch.sub(uint8, float)`` takes 0.37 ms.
    """
    out.copy_(images)
    if mean is not None:
        out.sub_(mean).mul_(inv_std)
    return out


def build_pipeline(source, *, batch_size: int, num_threads: int, device_id: int | None,
                   prefetch: int, seed: int, **graph_options) -> tuple[Pipeline, CpuResize | None]:
    """Build the pipeline for ``device_id`` (None = DALI's CPU backend).

    Returns the pipeline and the CPU resizer to close with it (None on GPU).
    """
    device = "cpu" if device_id is None else "gpu"
    resize = CpuResize(graph_options["image_size"], num_threads) if device == "cpu" else None
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                    prefetch_queue_depth=prefetch, seed=seed, exec_async=True, exec_pipelined=True)
    with pipe:
        pipe.set_outputs(*image_graph(source, device=device, cpu_resize=resize, **graph_options))
    pipe.build()
    return pipe, resize


class DecodeLimit:
    """The ceiling: DALI region-of-interest decode, nothing else.

    Train: the random crop fused into the decoder (``decoders.image_random_crop``,
    scale 0.08-1, ratio 3/4-4/3); eval (``train=False``): the eval centre window
    (``decoders.image_slice``). No resize, no normalize, no hand-off to torch.
    Each ``next()`` decodes one batch (records in a seeded random order,
    cycling) and returns how many images it decoded. ``loader bench`` measures
    the full pipeline against it.

    >>> limit = DecodeLimit(open_dataset("photos.packed"), 64)   # doctest: +SKIP
    >>> next(limit)                                             # doctest: +SKIP
    64
    """

    def __init__(self, dataset, batch_size: int, *, num_threads: int = 2, seed: int = 0,
                 device_id: int | None = None, prefetch: int = 2, train: bool = True):
        self._dataset = dataset
        self._batch = batch_size
        self._train = train
        self._order = np.random.default_rng([seed, 0xD0]).permutation(len(dataset))
        self._pos = 0
        self._pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                              prefetch_queue_depth=prefetch, seed=seed)
        decoder_device = "cpu" if device_id is None else "mixed"
        with self._pipe:
            if train:
                jpegs = fn.external_source(source=self._next_records, batch=True, dtype=types.UINT8)
                images = fn.decoders.image_random_crop(
                    jpegs, device=decoder_device, output_type=types.RGB,
                    random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
            else:
                jpegs, anchor, shape = fn.external_source(
                    source=self._next_records, num_outputs=3, batch=True,
                    dtype=[types.UINT8, types.FLOAT, types.FLOAT])
                images = fn.decoders.image_slice(
                    jpegs, anchor, shape, device=decoder_device, output_type=types.RGB,
                    normalized_anchor=False, normalized_shape=False, axis_names="WH")
            self._pipe.set_outputs(images)
        self._pipe.build()

    def _next_records(self):
        n = len(self._order)
        take = self._order[np.arange(self._pos, self._pos + self._batch) % n]
        self._pos = (self._pos + self._batch) % n
        data = self._dataset.read_batch(take)
        if self._train:
            return data
        anchor, shape, _ = crop_windows(self._dataset.heights[take], self._dataset.widths[take], None)
        return data, anchor, shape

    def __iter__(self):
        return self

    def __next__(self) -> int:
        (images,) = self._pipe.run()
        return len(images)

    def close(self) -> None:
        self._pipe = None
