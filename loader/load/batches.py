"""DALI's outputs -> the torch batch ``(images, targets[, indices])`` a training step takes.

:class:`BatchAssembler` is the torch side of :class:`loader.ImageLoader`: it finishes
the CPU graph's windows (:class:`loader.load.finisher.CpuFinisher`), copies the GPU graph's
images into torch memory (colour jitter and normalization in torch when jitter is on),
and builds the targets the dataset's labels call for:

=================================  ==========================================
dataset (``loader info``)          targets
=================================  ==========================================
one class per image (folders/file) int64 ``[B]`` class indices
multi-label (``--labels``)         float32 ``[B, num_classes]`` multi-hot
unlabeled (``--unlabeled``)        int64 ``[B]`` record indices (``ds.source(i)``)
=================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from loader.augment.settings import Augment
from loader.load.buffers import BatchBuffers
from loader.load.finisher import CpuFinisher

__all__ = ["BatchAssembler", "TargetKind", "host_targets", "target_kind"]

TargetKind = Literal["class", "multi_hot", "index"]


def target_kind(dataset) -> TargetKind:
    """What the targets of ``dataset``'s batches are (see the module docstring)."""
    if getattr(dataset, "multi_label", False):
        return "multi_hot"
    if getattr(dataset, "label_source", "folders") == "none":
        return "index"
    return "class"


def host_targets(dataset, idx: np.ndarray) -> torch.Tensor:
    """The targets of records ``idx`` from the manifest alone, on the CPU (see the module docstring):
    what every batch's second tensor must equal (``loader doctor`` checks it)."""
    kind = target_kind(dataset)
    if kind == "multi_hot":
        return torch.from_numpy(dataset.multi_hot(idx))
    return torch.from_numpy((idx if kind == "index" else dataset.labels[idx]).astype(np.int64))


class BatchAssembler:
    """Turns one ``pipe.run()`` into torch tensors on ``device``; see the module docstring."""

    def __init__(self, *, dataset, device: torch.device, dtype: torch.dtype, image_size: int,
                 channels_last: bool, augment: Augment, train: bool,
                 pixel_mean: Sequence[float] | None, pixel_std: Sequence[float] | None, buffers: BatchBuffers,
                 finisher: CpuFinisher | None):
        self.dataset, self.device, self.dtype, self.size = dataset, device, dtype, image_size
        self.channels_last, self.augment, self.finisher, self._buffers = channels_last, augment, finisher, buffers
        self.channels = augment.channels
        self.jitter = train and augment.color_jitter.enabled
        self.exact_eval = not train and augment.eval_mode == "torchvision"
        self.kind = target_kind(dataset)
        c = self.channels
        # ``pixel_mean``/``pixel_std``: 0..255 units (loader.augment.recipe.pixel_units, the GPU
        # graph's too). The finisher normalizes in the output dtype (built as loader 0.2 built
        # them: the same float16 rounding), the GPU jitter path in float32.
        mean, std = pixel_mean, pixel_std
        self._mean = None if mean is None else torch.tensor(mean, dtype=dtype).view(c, 1, 1)
        self._inv_std = None if std is None else (1 / torch.tensor(std)).to(dtype).view(c, 1, 1)
        if device.type == "cuda" and mean is not None:
            self._mean_dev = torch.tensor(mean).view(c, 1, 1).to(device)
            self._inv_std_dev = (1 / torch.tensor(std)).view(c, 1, 1).to(device)

    def _images_out(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, c = self.size, self.channels
        shape = (b, s, s, c) if self.channels_last else (b, c, s, s)
        base = self._buffers.take(shape, self.dtype, self.device)
        # NCHW view of NHWC memory = channels_last, no copy.
        return base, (base.permute(0, 3, 1, 2) if self.channels_last else base)

    def __call__(self, outputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, targets, indices) of one batch; ``indices`` on the CPU (int64)."""
        if self.device.type == "cuda":
            images, labels, indices, jit = outputs
        else:
            images, labels, indices, flips, geometry, jit = outputs
        idx = np.asarray(indices.as_tensor()).reshape(-1)
        b = len(idx)
        base, out = self._images_out(b)
        enabled = tuple(r is not None for r in self.augment.color_jitter.ranges)
        if self.device.type == "cuda":
            params = None
            if self.jitter:
                from loader.augment.jitter import JitterParams

                params = JitterParams.from_array(np.asarray(jit.as_tensor()), enabled)
            self._gpu_images(images, base, out, params)
        else:
            # The CPU graph yields the decoded windows (numpy views of DALI's buffers,
            # valid until the next run()); the finisher does the rest.
            self.finisher([np.asarray(t) for t in images], np.asarray(flips.as_tensor()).reshape(b).tolist(),
                          out, self._mean, self._inv_std,
                          geometry=self._geometry(geometry) if self.exact_eval else None,
                          jitter=(np.asarray(jit.as_tensor()).tolist(), enabled) if self.jitter else None)
        return out, self._targets(labels, idx), torch.from_numpy(idx.astype(np.int64, copy=True))

    def _geometry(self, fields):
        from loader.augment.torchvision_eval import EvalGeometry, resize_of

        return EvalGeometry.from_fields(np.asarray(fields.as_tensor()), self.size,
                                        resize_of(self.size, self.augment.crop_fraction))

    def _gpu_images(self, images, base: torch.Tensor, out: torch.Tensor, params) -> None:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        stream = torch.cuda.current_stream(self.device)
        if params is None:
            # Into `base`, whose shape is DALI's (NHWC with channels_last): feed_ndarray checks
            # the shapes and copies raw bytes; the permuted view would fail that check.
            feed_ndarray(images.as_tensor(), base, cuda_stream=stream)
            return
        from loader.augment.jitter import apply_jitter

        b = out.shape[0]
        raw = torch.empty((b, self.channels, self.size, self.size), dtype=torch.float32, device=self.device)
        feed_ndarray(images.as_tensor(), raw, cuda_stream=stream)     # float 0..255, CHW, flipped
        x = apply_jitter(raw, params)
        if self.dtype == torch.uint8:
            x = x.round_()
        if self._mean is not None and self.device.type == "cuda":
            x = x.sub_(self._mean_dev).mul_(self._inv_std_dev)
        out.copy_(x)

    def _targets(self, labels, idx: np.ndarray) -> torch.Tensor:
        if self.kind != "class":
            return host_targets(self.dataset, idx).to(self.device, non_blocking=self.device.type == "cuda")
        b = len(idx)
        lab = torch.empty((b,), dtype=torch.int64, device=self.device)
        if self.device.type == "cuda":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            feed_ndarray(labels.as_tensor(), lab, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            lab.copy_(torch.from_numpy(np.asarray(labels.as_tensor())).view(b))
        return lab
