"""torchvision's ``ColorJitter``, reproducibly: parameters drawn in numpy, applied with vectorised torch.

:class:`ColorJitter` validates its ranges as ``torchvision.transforms.v2.ColorJitter``
does; :meth:`ColorJitter.draw` draws every sample's four factors and the random order of
the four ops (torchvision's ``torch.randperm(4)``) from a numpy Generator, so the
augmentation of a sample is a function of the loader's (seed, epoch, position) like its
crop (:mod:`loader.load.sampler`), whatever device or thread applies it. :func:`apply_jitter`
applies them to a float batch in 0..255 on any device with torch ops only, each op as
``torchvision.transforms.v2.functional`` defines it on float images in 0..1 (scaled by 255,
which every op commutes with): brightness blends with black, contrast with the mean of the
grayscale image (0.2989 R + 0.587 G + 0.114 B), saturation with the grayscale image, hue
shifts H in HSV; each clamps to the range.

>>> jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
>>> params = jitter.draw(np.random.default_rng(0), 8)
>>> params.order.shape, params.brightness.dtype
((8, 4), dtype('float32'))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from loader.validate import is_number

__all__ = ["ColorJitter", "JitterParams", "apply_jitter", "jitter_image_", "OPS"]

# Op ids, as torchvision's ColorJitter numbers them in its ``fn_idx`` permutation.
OPS = ("brightness", "contrast", "saturation", "hue")
_IDENTITY = (1.0, 1.0, 1.0, 0.0)          # the factor of each op that leaves an image unchanged
# ITU-R 601-2 luma, torchvision's rgb_to_grayscale weights.
_GRAY = (0.2989, 0.587, 0.114)
_MAX = 255.0


def _check_range(value, name: str, center: float, bound: tuple[float, float],
                 clip_first_on_zero: bool) -> tuple[float, float] | None:
    """torchvision's ``ColorJitter._check_input``: a number or a (min, max) pair -> range, or None (off)."""
    if value is None:
        return None
    if is_number(value):
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}={value!r}: a single number must be finite and non-negative")
        lo, hi = center - v, center + v
        if clip_first_on_zero:
            lo = max(lo, 0.0)
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(is_number(v) for v in value)):
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name}={value!r}: the (min, max) bounds must be finite")
    else:
        raise ValueError(f"{name}={value!r} must be a single number or a (min, max) pair of numbers")
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ValueError(f"{name}={value!r}: the range must satisfy {bound[0]} <= min <= max <= {bound[1]}, "
                         f"got ({lo}, {hi})")
    return None if lo == hi == center else (lo, hi)


@dataclass(frozen=True)
class JitterParams:
    """Per-sample jitter parameters for ``n`` samples (numpy; see :meth:`ColorJitter.draw`).

    ``brightness``, ``contrast``, ``saturation``, ``hue``: float32 ``[n]`` factors (the
    identity, 1 or 0, where the op is off). ``order``: int8 ``[n, 4]``, ``order[k, j]`` is
    the op (index into :data:`OPS`) sample ``k`` applies at step ``j``. ``enabled``: which
    of the four ops run at all.
    """

    brightness: np.ndarray
    contrast: np.ndarray
    saturation: np.ndarray
    hue: np.ndarray
    order: np.ndarray
    enabled: tuple[bool, bool, bool, bool]

    def __len__(self) -> int:
        return len(self.order)

    @property
    def factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The four factor arrays in :data:`OPS` order."""
        return self.brightness, self.contrast, self.saturation, self.hue

    def take(self, index) -> JitterParams:
        """The parameters of samples ``index`` (an int keeps a length-1 batch: ``take(k)`` goes
        with ``images[k:k + 1]``)."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return JitterParams(*(a[idx] for a in self.factors), order=self.order[idx], enabled=self.enabled)

    def to_array(self) -> np.ndarray:
        """float32 ``[n, 8]``: the four factors, then the order (how they travel through DALI with the batch)."""
        return np.column_stack([*self.factors, self.order.astype(np.float32)]).astype(np.float32)

    @staticmethod
    def from_array(a: np.ndarray, enabled: tuple[bool, bool, bool, bool]) -> JitterParams:
        """The inverse of :meth:`to_array` (``enabled``: :attr:`ColorJitter.ranges` not None)."""
        a = np.asarray(a, dtype=np.float32).reshape(-1, 8)
        return JitterParams(*(np.ascontiguousarray(a[:, k]) for k in range(4)),
                            order=a[:, 4:].astype(np.int8), enabled=tuple(enabled))

    @staticmethod
    def identity(n: int) -> JitterParams:
        """Parameters that change nothing (every op off)."""
        return JitterParams(*(np.full(n, v, np.float32) for v in _IDENTITY),
                            order=np.tile(np.arange(4, dtype=np.int8), (n, 1)), enabled=(False,) * 4)


@dataclass(frozen=True)
class ColorJitter:
    """torchvision's ``ColorJitter(brightness, contrast, saturation, hue)`` settings.

    Each of brightness, contrast, saturation: a number ``b >= 0`` (factor uniform in
    ``[max(0, 1 - b), 1 + b]``) or a ``(min, max)`` pair with ``0 <= min <= max``. hue: a
    number ``h`` in ``[0, 0.5]`` (shift uniform in ``[-h, h]``) or a pair with
    ``-0.5 <= min <= max <= 0.5``. 0 (or None) turns an op off, as does a pair equal to
    the identity (``(1, 1)``; ``(0, 0)`` for hue). Anything else raises ValueError.
    """

    brightness: float | tuple[float, float] | None = 0.0
    contrast: float | tuple[float, float] | None = 0.0
    saturation: float | tuple[float, float] | None = 0.0
    hue: float | tuple[float, float] | None = 0.0
    ranges: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        ranges = []
        for name in OPS:
            value = getattr(self, name)
            if isinstance(value, list):           # keep the dataclass hashable
                value = tuple(value)
                object.__setattr__(self, name, value)
            if name == "hue":
                ranges.append(_check_range(value, name, 0.0, (-0.5, 0.5), clip_first_on_zero=False))
            else:
                ranges.append(_check_range(value, name, 1.0, (0.0, math.inf), clip_first_on_zero=True))
        object.__setattr__(self, "ranges", tuple(ranges))

    @property
    def enabled(self) -> bool:
        """Whether any op can change an image."""
        return any(r is not None for r in self.ranges)

    def draw(self, rng: np.random.Generator, n: int) -> JitterParams:
        """Parameters for ``n`` samples, a pure function of (``rng``'s state, ``n``, the settings).

        Draws, in this sequence: the order (one uniform random permutation of the four
        ops per sample, torchvision's ``randperm(4)``), then each enabled op's factors
        (uniform in its range) in :data:`OPS` order. Nothing is drawn when nothing is
        enabled; a disabled op draws nothing and gets its identity factor.
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if not self.enabled:
            return JitterParams.identity(n)
        # argsort of iid uniforms: a uniform permutation per row (ties have probability ~2^-53).
        order = np.argsort(rng.random((n, 4)), axis=1).astype(np.int8)
        factors = []
        for r, ident in zip(self.ranges, _IDENTITY):
            if r is None:
                factors.append(np.full(n, ident, np.float32))
            else:
                factors.append(rng.uniform(r[0], r[1], n).astype(np.float32))
        return JitterParams(*factors, order=order, enabled=tuple(r is not None for r in self.ranges))


def _gray_weighted(x: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale of ``x`` [b, 3, H, W] -> [b, 1, H, W] (same op order)."""
    return x[:, 0:1].mul(_GRAY[0]).add_(x[:, 1:2], alpha=_GRAY[1]).add_(x[:, 2:3], alpha=_GRAY[2])


def _clamp_needed(f) -> bool:
    """Only a factor above 1 can leave 0..255: a blend with ``0 <= f <= 1`` stays between its two
    inputs. A tensor of per-sample factors is clamped always (one pass, on the GPU's batch)."""
    return not isinstance(f, float) or f > 1.0


def _blend_(x: torch.Tensor, f, other: torch.Tensor) -> None:
    """``x[:] = clamp(f * x + (1 - f) * other, 0, 255)`` in place; ``f`` a float or ``[B, 1, 1, 1]``.

    ``lerp_`` is the blend in one pass (``x + (1 - f) * (other - x)``, torchvision's ``f * x +
    (1 - f) * other`` up to float32 rounding); mul_ + add_ + clamp_ read the image three times.
    In the loader (224 px, 2 threads) brightness + contrast + saturation cost 0.42 ms of CPU per
    image the three-pass way, 0.26 this way (docs/performance.md).
    """
    x.lerp_(other, 1.0 - f)
    if _clamp_needed(f):
        x.clamp_(0.0, _MAX)


def _brightness_(x: torch.Tensor, f) -> None:
    x.mul_(f)
    if _clamp_needed(f):
        x.clamp_(max=_MAX)


def _contrast_(x: torch.Tensor, f) -> None:
    if x.shape[1] == 3:
        # mean(gray) as the gray-weighted channel means: one read of the image, no gray
        # image allocated; equal to torchvision's mean of the gray image up to float32 rounding.
        m = x.mean(dim=(2, 3), keepdim=True)
        mean = m[:, 0:1].mul(_GRAY[0]).add_(m[:, 1:2], alpha=_GRAY[1]).add_(m[:, 2:3], alpha=_GRAY[2])
    else:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
    _blend_(x, f, mean)


def _saturation_(x: torch.Tensor, f) -> None:
    _blend_(x, f, _gray_weighted(x))


def _hue_(x: torch.Tensor, shift: torch.Tensor) -> None:
    """torchvision's adjust_hue (RGB -> HSV, H += shift mod 1, HSV -> RGB) in place on 0..255 floats.

    H from torchvision's ``_rgb2hsv`` sectors, kept as ``6H``; back with the closed form of
    its ``_hsv2rgb`` (v, p, q, t) table: R, G, B = ``min + (max - min) * clamp(d - 1, 0, 1)``
    with ``d`` the distance of ``6H`` from 3, 5 and 1 around the hue circle of length 6.
    Equal to torchvision's formulas up to float32 rounding (~1e-4 of a level, see
    tests/test_jitter.py). Elementwise ops only: ``torch.aminmax(x, dim=1)`` alone took
    0.61 ms per 224 px image here (a reduction over the 3-long channel axis), the pairwise
    maximum/minimum 0.03 ms; ``remainder`` 0.07 ms where a floor-based wrap costs 0.03.
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    cr = maxc - minc
    # Grey pixels (cr = 0): any finite 1/cr works, the chroma factor below is 0 there.
    inv = cr.clamp(min=1e-30).reciprocal_()
    is_r = maxc == r
    is_g = maxc == g
    # 6H per sector: R max: (g - b) / cr; G max: 2 + (b - r) / cr; B max: 4 + (r - g) / cr.
    h6 = torch.where(is_r, g - b, torch.where(is_g, (b - r).add_(cr, alpha=2.0), (r - g).add_(cr, alpha=4.0)))
    # (H + shift) mod 1, as 6H in [0, 6): torchvision's fmod(H + 1, 1) then remainder(H + shift, 1), in one.
    h6.mul_(inv).add_(6.0 * shift if isinstance(shift, float) else shift.view(-1, 1, 1) * 6.0)
    h6.sub_(h6.div(6.0).floor_().mul_(6.0))
    for c, turn in enumerate((0.0, 4.0, 2.0)):      # R, G, B: the hue circle turned by 0, 2/3, 1/3
        if turn:
            k = h6.add(turn)                          # in [0, 10): distance to 3 or to 9, the same point
            d = torch.minimum(k.sub(3.0).abs_(), k.sub_(9.0).abs_())
        else:
            d = h6.sub(3.0).abs_()
        torch.addcmul(minc, cr, d.sub_(1.0).clamp_(0.0, 1.0), out=x[:, c])


_APPLY = (_brightness_, _contrast_, _saturation_, _hue_)


def _factor_tensors(params: JitterParams, device: torch.device, ops: list[int]) -> dict[int, torch.Tensor]:
    """The enabled ops' factors on ``device``, shaped to broadcast: ``[B, 1, 1, 1]`` (hue: ``[B]``)."""
    out = {}
    for k in ops:
        t = torch.from_numpy(np.ascontiguousarray(params.factors[k], dtype=np.float32)).to(device)
        out[k] = t if k == 3 else t.view(-1, 1, 1, 1)
    return out


def apply_jitter(images: torch.Tensor, params: JitterParams, *, inplace: bool = False) -> torch.Tensor:
    """``images`` (float32 ``[B, C, H, W]`` in 0..255, any device) jittered by ``params`` (``len == B``).

    Each sample gets its ops in its own order; samples sharing an order are processed
    together, so a batch costs at most 24 groups (one when all ops but one are off, or
    for one image: ``apply_jitter(batch[k:k + 1], params.take(k), inplace=True)`` from a
    thread pool). With ``inplace`` the result is written into ``images``; otherwise a
    new tensor is returned. With every op off, ``images`` itself is returned, untouched.

    Raises ValueError for a shape or dtype other than the above, a length mismatch, or
    saturation/hue enabled on grayscale (C = 1) images: torchvision silently skips those
    two on grayscale; here that is taken as a configuration mistake.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [B, C, H, W], got "
                         f"{getattr(images, 'dtype', type(images))} of shape {tuple(getattr(images, 'shape', ()))}")
    b, c = images.shape[:2]
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    if len(params) != b:
        raise ValueError(f"params are for {len(params)} samples, images has {b}")
    if c == 1 and (params.enabled[2] or params.enabled[3]):
        raise ValueError("saturation and hue jitter need RGB images; grayscale (C = 1) takes brightness "
                         "and contrast only")
    if not any(params.enabled) or b == 0:
        return images
    out = images if inplace else images.clone()
    ops = [k for k in range(4) if params.enabled[k]]
    factors = _factor_tensors(params, images.device, ops)
    # The order restricted to the enabled ops; samples with equal sequences form one group
    # (one gather, the ops, one scatter). Grouping per step instead (4 steps x 4 ops, a
    # gather and scatter each) measured 0.84 vs 0.55 ms per 224 px image (B = 64, b+c+s)
    # and 1.37 vs 1.07 (all four) here, one thread; masks with torch.where would run
    # every op on every sample.
    order = params.order
    seqs = order[np.isin(order, ops)].reshape(b, len(ops))
    if b == 1 or len(ops) == 1:
        # One group (one image, e.g. from a thread pool; or one op): no grouping, no gathers.
        groups = [(None, seqs[0])]
    else:
        keys = (seqs.astype(np.int64) * (4 ** np.arange(len(ops)))).sum(axis=1)
        uniq, inverse = np.unique(keys, return_inverse=True)
        groups = []
        for g in range(len(uniq)):
            members = np.flatnonzero(inverse == g)
            groups.append((None if len(members) == b else members, seqs[members[0]]))
    for members, seq in groups:
        if members is None:
            view, fs = out, factors
        else:
            idx = torch.from_numpy(members).to(images.device)
            view = out.index_select(0, idx)
            fs = {k: f.index_select(0, idx) for k, f in factors.items()}
        for k in seq.tolist():
            _APPLY[k](view, fs[k])
        if members is not None:
            out.index_copy_(0, idx, view)
    return out


def jitter_image_(x: torch.Tensor, row, enabled: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """One image ``x`` (float ``[1, C, H, W]``, 0..255) jittered in place by one row of
    :meth:`JitterParams.to_array` (``row``: 4 factors then the order, Python floats).

    :func:`apply_jitter` for a batch of one, with the factors as Python floats: no tensor
    built per image, no grouping, and no clamp a factor cannot need (:func:`_blend_`). The
    finisher calls it from its threads, image by image, while the image is in cache.
    """
    for k in row[4:]:
        k = int(k)
        if enabled[k]:
            _APPLY[k](x, float(row[k]))
    return x
