"""The decode ceiling: DALI's region-of-interest decode and nothing else (a ``loader bench`` contender).

``loader bench`` reports :class:`loader.ImageLoader` as a share of this: what
the same DALI decoder does on the same records when it is all there is.

On CUDA (``device_id`` set) it is the GPU row: the loader's own GPU decode and
nothing after it -- nvJPEG region decode (``decoders.image_slice`` on "mixed")
of numpy-drawn windows, or, where ``ImageLoader``'s ``gpu_decode="auto"`` picks
"full" (nvImageCodec 0.9.x, NVIDIA/nvImageCodec#55), the full decode and the
GPU crop the loader then runs -- with the same nvJPEG arguments
(:func:`loader.load.pipeline.nvjpeg_arguments`). ``decoders.image_random_crop`` on
"mixed" is the very call #55 reports crashing, so the GPU row never uses it.
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from loader import rng as rng_streams
from loader.augment.recipe import RRC_RATIO, RRC_SCALE
from loader.load.sampler import crop_windows

__all__ = ["DecodeLimit"]


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
        self._gpu = device_id is not None
        self._rng = np.random.default_rng([seed, rng_streams.DECODE_LIMIT_CROP])
        self._order = np.random.default_rng([seed, rng_streams.DECODE_LIMIT_ORDER]).permutation(len(dataset))
        self._pos = 0
        self._pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                              prefetch_queue_depth=prefetch, seed=seed)
        decoder_device = "cpu" if device_id is None else "mixed"
        with self._pipe:
            if self._gpu:
                self._pipe.set_outputs(self._gpu_decode())
            elif train:
                jpegs = fn.external_source(source=self._next_records, batch=True, dtype=types.UINT8)
                images = fn.decoders.image_random_crop(
                    jpegs, device=decoder_device, output_type=types.RGB,
                    random_area=list(RRC_SCALE), random_aspect_ratio=list(RRC_RATIO))
            else:
                jpegs, anchor, shape = fn.external_source(
                    source=self._next_records, num_outputs=3, batch=True,
                    dtype=[types.UINT8, types.FLOAT, types.FLOAT])
                images = fn.decoders.image_slice(
                    jpegs, anchor, shape, device=decoder_device, output_type=types.RGB,
                    normalized_anchor=False, normalized_shape=False, axis_names="WH")
            if not self._gpu:
                self._pipe.set_outputs(images)
        self._pipe.build()

    def _gpu_decode(self):
        from loader.load.pipeline import nvjpeg_arguments, resolve_gpu_decode

        jpegs, anchor, shape = fn.external_source(source=self._next_records, num_outputs=3, batch=True,
                                                  dtype=[types.UINT8, types.FLOAT, types.FLOAT])
        nvjpeg = nvjpeg_arguments(int(self._dataset.heights.max()), int(self._dataset.widths.max()))
        if resolve_gpu_decode("auto") == "roi":
            return fn.decoders.image_slice(jpegs, anchor, shape, device="mixed", output_type=types.RGB,
                                           normalized_anchor=False, normalized_shape=False, axis_names="WH",
                                           **nvjpeg)
        images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB, **nvjpeg)
        return fn.slice(images, anchor, shape, normalized_anchor=False, normalized_shape=False, axis_names="WH",
                        out_of_bounds_policy="error")

    def _next_records(self):
        n = len(self._order)
        take = self._order[np.arange(self._pos, self._pos + self._batch) % n]
        self._pos = (self._pos + self._batch) % n
        data = self._dataset.read_batch(take)
        if self._train and not self._gpu:
            return data
        anchor, shape, _ = crop_windows(self._dataset.heights[take], self._dataset.widths[take],
                                        self._rng if self._train else None)
        return data, anchor, shape

    def __iter__(self):
        return self

    def __next__(self) -> int:
        (images,) = self._pipe.run()
        return len(images)

    def close(self) -> None:
        self._pipe = None
