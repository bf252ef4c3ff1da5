"""torchvision's eval transform, ``Resize(floor(s / crop_fraction)) + CenterCrop(s)``, pixel for pixel,
from a decoded window of the source instead of the whole image.

torchvision's PIL path: ``Resize(R)`` makes the shorter side ``R`` and the longer
``int(R * long / short)`` (``_compute_resized_output_size``, pytorch/vision main at
version.txt 0.26.0a0; the formula is the same in every release since 0.8), resampled
with ``Image.resize(size, BILINEAR)`` (antialiased: the triangle's support grows with
the downscale factor); then ``CenterCrop(s)`` keeps the window at
``top = int(round((H' - s) / 2.0))``, ``left = int(round((W' - s) / 2.0))`` (Python's
round: halves to even). Only the source pixels under the filter's support of those
``s x s`` outputs matter: :func:`eval_geometry` says which (the window to decode) and
:func:`resize_window` resamples that window to exactly the pixels torchvision keeps.

Why not a single ``window.resize((s, s), BILINEAR, box=box)`` (what ``EvalGeometry.box``
describes, and what a GPU resize with a region of interest does): measured here, it
differs by one level on up to 0.3% of the pixels (two levels on 100x80 upscales), in 37 of
72 (image, s, crop_fraction) cases. Pillow passes the box as float32, so the crop's scale
and filter centres are not the whole-image doubles; and pillow-simd (installed here) picks
the fixed-point precision of its int16 weights from the largest weight of the call, which
the border columns of the whole image can raise (torch's uint8 kernel, a port of it, does the
same). :func:`resize_window` therefore resamples each axis with the whole image's
coefficients: it places the window in a canvas of the full source extent along that axis
(pixels outside the window are never read by a kept output: each has weight zero there) and
keeps the crop; same coefficients, same integer arithmetic, same bytes.

>>> g = eval_geometry(np.array([375]), np.array([500]), 224, 0.875)
>>> g.resized.tolist(), g.crop.tolist()
([[341, 256]], [[58, 16]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["EvalGeometry", "ResizeScratch", "eval_geometry", "resize_of", "resize_window", "resized_size"]


@dataclass(frozen=True)
class EvalGeometry:
    """Per-image geometry of ``Resize(R) + CenterCrop(size)`` for a batch (``[B, 2]`` arrays as x, y).

    - ``source``   int32 ``[B, 2]``  (W, H) of the source image.
    - ``resized``  int32 ``[B, 2]``  (W', H') after ``Resize(R)``.
    - ``crop``     int32 ``[B, 2]``  (left, top) of the ``size x size`` crop in the resized image.
    - ``anchor``   int32 ``[B, 2]``  (x, y) of the source window to decode.
    - ``shape``    int32 ``[B, 2]``  (w, h) of that window: every source pixel the bilinear
      filter reads for a kept output pixel, clamped to the image.
    - ``box``      float32 ``[B, 4]`` (x0, y0, x1, y1) the crop's source rectangle, relative to the
      window: ``window.resize((size, size), BILINEAR, box=box)`` is the same filter (within one
      level, see the module docstring; the GPU graph's ROI resize); :func:`resize_window` is exact.
    """

    size: int
    resize: int
    source: np.ndarray
    resized: np.ndarray
    crop: np.ndarray
    anchor: np.ndarray
    shape: np.ndarray
    box: np.ndarray

    def __len__(self) -> int:
        return len(self.source)

    FIELDS = 14

    def to_fields(self) -> np.ndarray:
        """float32 ``[B, 14]``: box, source, resized, crop, anchor, shape (how the geometry travels
        through DALI with the batch; every integer here is exact in float32, below 2**24)."""
        return np.column_stack([self.box, self.source, self.resized, self.crop, self.anchor,
                                self.shape]).astype(np.float32)

    @classmethod
    def from_fields(cls, a: np.ndarray, size: int, resize: int) -> EvalGeometry:
        """The inverse of :meth:`to_fields`."""
        a = np.asarray(a, dtype=np.float32).reshape(-1, cls.FIELDS)

        def ints(k: int) -> np.ndarray:
            return np.rint(a[:, k:k + 2]).astype(np.int32)

        return cls(size=size, resize=resize, source=ints(4), resized=ints(6), crop=ints(8), anchor=ints(10),
                   shape=ints(12), box=np.ascontiguousarray(a[:, :4]))


def resized_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """(H', W') of torchvision's ``Resize(resize)`` (int size: the shorter side becomes ``resize``).

    >>> resized_size(375, 500, 256)
    (256, 341)
    """
    h, w = int(height), int(width)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w


def _support_span(n_in: np.ndarray, n_out: np.ndarray, first: np.ndarray, count: int):
    """Source span [lo, hi) Pillow's bilinear filter reads for outputs ``first .. first+count-1``.

    Pillow's ``precompute_coeffs`` per output ``i``: ``scale = in / out``, ``support =
    max(scale, 1)``, ``center = (i + 0.5) * scale``, ``xmin = max((int)(center - support + 0.5), 0)``,
    ``xmax = min((int)(center + support + 0.5), in)``. Both bounds grow with ``i``, so the
    union over the crop is [xmin(first), xmax(last)). ``astype(int64)`` truncates like C's cast.
    """
    scale = n_in / n_out
    support = np.maximum(scale, 1.0)
    c_first = (first + 0.5) * scale
    c_last = (first + count - 1 + 0.5) * scale
    lo = np.maximum((c_first - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((c_last + support + 0.5).astype(np.int64), n_in)
    return lo, hi, scale


def resize_of(size: int, crop_fraction: float) -> int:
    """``R`` of ``Resize(R) + CenterCrop(size)``: ``floor(size / crop_fraction)`` (the reference
    scripts' and timm's ``int(size / crop_pct)``; 224 / 0.875 -> 256).

    >>> resize_of(224, 0.875), resize_of(224, 0.95)
    (256, 235)
    """
    return math.floor(size / crop_fraction)


def eval_geometry(heights: np.ndarray, widths: np.ndarray, size: int, crop_fraction: float) -> EvalGeometry:
    """The geometry of torchvision's eval transform for each image of a batch.

    ``R = floor(size / crop_fraction)`` (timm's and torchvision's reference scripts'
    convention: 224 / 0.875 -> 256); ``Resize(R)`` then ``CenterCrop(size)`` as in the
    module docstring. Raises ValueError for a ``size`` below 1, a ``crop_fraction``
    outside (0, 1] or an empty image.

    >>> g = eval_geometry(np.array([375, 500]), np.array([500, 375]), 224, 0.875)
    >>> g.anchor.tolist(), g.shape.tolist()
    ([[84, 23], [23, 84]], [[330, 329], [329, 330]])
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not (0.0 < crop_fraction <= 1.0):
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    h = np.asarray(heights, dtype=np.int64).reshape(-1)
    w = np.asarray(widths, dtype=np.int64).reshape(-1)
    if h.shape != w.shape:
        raise ValueError(f"heights and widths differ in length: {h.shape[0]} vs {w.shape[0]}")
    if h.size and (h.min() < 1 or w.min() < 1):
        raise ValueError("every image must be at least 1x1")
    resize = resize_of(size, crop_fraction)

    short, long = np.minimum(h, w), np.maximum(h, w)
    # int(R * long / short): the product is exact, the division the same IEEE double as Python's.
    new_long = ((resize * long).astype(np.float64) / short).astype(np.int64)
    portrait = w <= h
    new_w = np.where(portrait, resize, new_long)
    new_h = np.where(portrait, new_long, resize)
    # int(round(x / 2.0)): np.rint rounds halves to even, as Python's round does (341 - 224 -> 58).
    top = np.rint((new_h - size) / 2.0).astype(np.int64)
    left = np.rint((new_w - size) / 2.0).astype(np.int64)

    x0, x1, sx = _support_span(w, new_w, left, size)
    y0, y1, sy = _support_span(h, new_h, top, size)
    box = np.stack([left * sx - x0, top * sy - y0, (left + size) * sx - x0, (top + size) * sy - y0], axis=1)

    def pairs(a, b):
        return np.stack([a, b], axis=1).astype(np.int32)

    return EvalGeometry(size=size, resize=resize, source=pairs(w, h), resized=pairs(new_w, new_h),
                        crop=pairs(left, top), anchor=pairs(x0, y0), shape=pairs(x1 - x0, y1 - y0),
                        box=box.astype(np.float32))


class ResizeScratch:
    """Grow-only uint8 buffers, one per role, reused image after image by one thread."""

    def __init__(self):
        self._bufs: dict[str, object] = {}

    def take(self, role: str, h: int, w: int, c: int):
        """A channels-last ``[1, c, h, w]`` uint8 view of this role's buffer (contents undefined)."""
        import torch

        n = h * w * c
        buf = self._bufs.get(role)
        if buf is None or buf.numel() < n:
            buf = torch.empty(max(n, 1 << 18), dtype=torch.uint8)
            self._bufs[role] = buf
        return buf[:n].view(1, h, w, c).permute(0, 3, 1, 2)


def resize_window(x, geometry: EvalGeometry, index: int, scratch: ResizeScratch,
                  resize_into):
    """The ``s x s`` crop torchvision's eval transform keeps, from the decoded window of image ``index``:
    a uint8 ``[C, s, s]`` view, equal byte for byte to Pillow's
    ``full.resize((W', H'), BILINEAR).crop((left, top, left + s, top + s))``.

    ``x`` is the window (the source pixels at ``geometry.anchor[index]``, of
    ``geometry.shape[index]``) as a uint8 ``[1, C, h, w]`` tensor, any strides, C = 3 or 1.
    Two passes, one per axis, each with the whole image's coefficients (the module docstring
    says why): horizontal over the window's rows on a canvas as wide as the source, vertical
    over the crop's columns on a canvas as tall as the source. ``resize_into(src, (h, w), out)``
    is torch's uint8 antialiased bilinear kernel, which computes Pillow's coefficients, int16
    precision and rounding (``CpuFinisher`` passes its ``out=`` form). Measured here, one
    thread, 500x375 -> 224: 0.25 ms (the same two passes as Pillow calls: 0.31 ms; the fast
    eval's single resize: 0.14 ms). ``scratch`` (one per thread) keeps the canvases.
    """
    s = geometry.size
    (W, H), (Wn, Hn) = geometry.source[index].tolist(), geometry.resized[index].tolist()
    (left, top), (wx, wy) = geometry.crop[index].tolist(), geometry.anchor[index].tolist()
    ww, wh = geometry.shape[index].tolist()
    c = x.shape[1]
    if tuple(x.shape[-2:]) != (wh, ww):
        raise ValueError(f"window of image {index} must be {wh}x{ww} (h x w), got {x.shape[-2]}x{x.shape[-1]}")
    if Wn != W:
        # The columns outside the window are left unset: no kept output reads them with a nonzero weight.
        canvas = scratch.take("wide", wh, W, c)
        canvas[:, :, :, wx:wx + ww] = x
        rows = scratch.take("rows", wh, Wn, c)
        resize_into(canvas, (wh, Wn), rows)
        rows = rows[:, :, :, left:left + s]
    else:
        rows = x[:, :, :, left - wx:left - wx + s]
    if Hn == H:
        return rows[0, :, top - wy:top - wy + s]
    tall = scratch.take("tall", H, s, c)
    tall[:, :, wy:wy + wh] = rows
    out = scratch.take("out", Hn, s, c)
    resize_into(tall, (Hn, s), out)
    return out[0, :, top:top + s]
