"""The trainer's half of a service batch: the actors' uint8 images -> the batch the local loader yields.

An actor (:mod:`loader.service.actor`) sends each batch resized and flipped, as uint8 NHWC: a
quarter of float32's bytes over Ray's object store. Here the trainer does what is left, the
float steps: the colour jitter (with the rows the actor drew) and the normalization into the
output dtype and layout, and builds the targets from the manifest.

On the CPU that is :class:`~loader.load.finisher.CpuFinisher`, the local loader's own code, fed
the actor's pixels (already ``image_size``, so it resizes nothing): the same operations on the
same uint8 values, hence the same bytes as ``ImageLoader`` without a service. On CUDA the uint8
batch is copied to the GPU and finished there in a few batched ops (the GPU graph's jitter).
"""

from __future__ import annotations

import numpy as np
import torch

from loader.load.batches import host_targets
from loader.load.buffers import BatchBuffers
from loader.load.finisher import CpuFinisher

__all__ = ["Receiver"]


class Receiver:
    """Finishes service batches for ``device`` (``settings``: the loader's :class:`LoaderSettings`)."""

    def __init__(self, *, dataset, device: torch.device, settings, buffers: BatchBuffers, num_threads: int):
        s = settings
        self.dataset, self.device, self.dtype, self.size = dataset, device, s.dtype, s.image_size
        self.channels_last, self._buffers = s.channels_last, buffers
        self.channels = c = s.augment.channels
        self.enabled = tuple(r is not None for r in s.augment.color_jitter.ranges)
        mean, std = s.pixel_mean, s.pixel_std
        # As loader.load.batches.BatchAssembler builds them: the same rounding in float16.
        self._mean = None if mean is None else torch.tensor(mean, dtype=s.dtype).view(c, 1, 1)
        self._inv_std = None if std is None else (1 / torch.tensor(std)).to(s.dtype).view(c, 1, 1)
        self._finisher = CpuFinisher(num_threads) if device.type == "cpu" else None
        if device.type == "cuda" and mean is not None:
            self._mean_dev = torch.tensor(mean).view(c, 1, 1).to(device)
            self._inv_std_dev = (1 / torch.tensor(std)).view(c, 1, 1).to(device)

    def __call__(self, got: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, targets, indices) of one actor reply; ``indices`` int64 on the CPU."""
        idx = np.array(got["indices"], dtype=np.int64)      # a copy: Ray's arrays are read-only
        # One copy of the uint8 batch out of the object store (read-only there; torch wants writable).
        pixels = np.array(got["images"])
        b, s, c = len(idx), self.size, self.channels
        base = self._buffers.take((b, s, s, c) if self.channels_last else (b, c, s, s), self.dtype, self.device)
        out = base.permute(0, 3, 1, 2) if self.channels_last else base     # NCHW view either way
        jit = got["jitter"]
        if self._finisher is not None:
            self._finisher(list(pixels), [0] * b, out, self._mean, self._inv_std,
                           jitter=(jit.tolist(), self.enabled) if jit is not None else None)
        else:
            self._gpu(pixels, jit, out)
        return out, host_targets(self.dataset, idx).to(self.device), torch.from_numpy(idx)

    def _gpu(self, pixels: np.ndarray, jit, out: torch.Tensor) -> None:
        x = torch.from_numpy(pixels).to(self.device, non_blocking=False).permute(0, 3, 1, 2).float()
        if jit is not None:
            from loader.augment.jitter import JitterParams, apply_jitter

            x = apply_jitter(x, JitterParams.from_array(jit, self.enabled))
            if self.dtype == torch.uint8:
                x = x.round_()
        if self._mean is not None:
            x = x.sub_(self._mean_dev).mul_(self._inv_std_dev)
        out.copy_(x)

    def close(self) -> None:
        """Stop the finisher's threads."""
        if self._finisher is not None:
            self._finisher.close()
            self._finisher = None
