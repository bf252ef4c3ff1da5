"""ColorJitter: numpy-drawn parameters, torch application, against torchvision's formulas in numpy."""

import itertools

import numpy as np
import pytest
import torch

from loader.augment.jitter import OPS, ColorJitter, JitterParams, apply_jitter
from loader.synthetic import photo_like_image

TOL = 1e-3          # on 0..255; measured ~1.5e-4 (float32 vs float64)

# --- reference: torchvision.transforms.v2.functional on float images in 0..1, float64, one image ---
GRAY = (0.2989, 0.587, 0.114)


def ref_gray(x):
    return GRAY[0] * x[0] + GRAY[1] * x[1] + GRAY[2] * x[2]


def ref_brightness(x, f):
    return np.clip(x * f, 0, 1)


def ref_contrast(x, f):
    mean = ref_gray(x).mean() if x.shape[0] == 3 else x.mean()
    return np.clip(x * f + mean * (1 - f), 0, 1)


def ref_saturation(x, f):
    return np.clip(x * f + ref_gray(x)[None] * (1 - f), 0, 1)


def ref_hue(x, hue_factor):
    # _rgb_to_hsv
    r, g, b = x
    maxc, minc = x.max(0), x.min(0)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / np.where(eqc, 1, maxc)
    div = np.where(eqc, 1, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = np.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = np.remainder(h + hue_factor, 1.0)
    # _hsv_to_rgb
    v = maxc
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(np.int64) % 6
    p = np.clip(v * (1 - s), 0, 1)
    q = np.clip(v * (1 - s * f), 0, 1)
    t = np.clip(v * (1 - s * (1 - f)), 0, 1)
    vpqt = np.stack([v, p, q, t])
    select = np.array([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])
    return np.stack([np.take_along_axis(vpqt, select[c][i][None], 0)[0] for c in range(3)])


REF = (ref_brightness, ref_contrast, ref_saturation, ref_hue)


def reference(img255, factors, order, enabled):
    x = img255.astype(np.float64) / 255.0
    for k in order:
        if enabled[k]:
            x = REF[k](x, float(factors[k]))
    return x * 255.0


# --- helpers ---
def photos(n, w=37, h=29, gray=False):
    imgs = [np.asarray(photo_like_image(100 + i, label=i % 3, num_classes=3, size=(w, h))) for i in range(n)]
    arr = np.stack(imgs).transpose(0, 3, 1, 2).astype(np.float32)
    if gray:
        arr = np.round(ref_gray(arr.transpose(1, 0, 2, 3)))[:, None].astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr))


def fixed(n, op, factor, order=None):
    p = JitterParams.identity(n)
    factors = [a.copy() for a in p.factors]
    factors[op][:] = factor
    return JitterParams(*factors, order=p.order if order is None else order,
                        enabled=tuple(k == op for k in range(4)))


def assert_matches_reference(x, y, params):
    for k in range(len(params)):
        want = reference(x[k].double().numpy(), [a[k] for a in params.factors], params.order[k], params.enabled)
        diff = np.abs(y[k].double().numpy() - want).max()
        assert diff <= TOL, (k, params.order[k], [float(a[k]) for a in params.factors], diff)


# --- application ---
@pytest.mark.parametrize("op,factor", [(0, 0.0), (0, 0.6), (0, 1.4), (1, 0.0), (1, 0.6), (1, 1.9),
                                       (2, 0.0), (2, 0.5), (2, 1.6), (3, -0.5), (3, -0.13), (3, 0.08), (3, 0.5)])
@pytest.mark.parametrize("w,h", [(37, 29), (101, 67)])
def test_each_op_alone_matches_torchvision(op, factor, w, h):
    x = photos(4, w, h)
    params = fixed(4, op, factor)
    assert_matches_reference(x, apply_jitter(x, params), params)


def test_mixed_orders_match_torchvision():
    x = photos(48, 31, 23)
    params = ColorJitter(0.5, 0.5, 0.6, 0.3).draw(np.random.default_rng(7), 48)
    y = apply_jitter(x, params)
    assert_matches_reference(x, y, params)
    assert len({tuple(o) for o in params.order}) > 12      # many orders in one batch


@pytest.mark.parametrize("perm", list(itertools.permutations(range(4)))[::5])
def test_every_order_is_applied_as_given(perm):
    x = photos(2, 29, 31)
    params = ColorJitter(0.4, 0.4, 0.4, 0.2).draw(np.random.default_rng(1), 2)
    params = JitterParams(*params.factors, order=np.array([perm, perm[::-1]], np.int8), enabled=params.enabled)
    assert_matches_reference(x, apply_jitter(x, params), params)


def test_subset_of_ops_and_output_in_range():
    x = photos(16, 33, 21)
    params = ColorJitter(brightness=(0.2, 2.5), hue=0.4).draw(np.random.default_rng(3), 16)
    y = apply_jitter(x, params)
    assert_matches_reference(x, y, params)
    assert y.min() >= 0 and y.max() <= 255


def test_per_image_entry_point_equals_batch_and_inplace():
    x = photos(12, 35, 27)
    params = ColorJitter(0.4, 0.4, 0.4, 0.1).draw(np.random.default_rng(5), 12)
    batch = apply_jitter(x, params)
    assert not torch.equal(batch, x)
    buf = x.clone()
    for k in range(12):
        apply_jitter(buf[k:k + 1], params.take(k), inplace=True)
    torch.testing.assert_close(buf, batch, atol=1e-4, rtol=0)
    assert params.take(3).order.tolist() == [params.order[3].tolist()]
    assert len(params.take(slice(2, 5))) == 3


def test_not_inplace_leaves_input_alone():
    x = photos(3)
    before = x.clone()
    apply_jitter(x, ColorJitter(0.4, 0.4, 0.4, 0.1).draw(np.random.default_rng(0), 3))
    assert torch.equal(x, before)


@pytest.mark.parametrize("jitter", [ColorJitter(), ColorJitter(brightness=(1, 1), hue=(0, 0)),
                                    ColorJitter(None, None, None, None)])
def test_disabled_jitter_returns_images_unchanged(jitter):
    assert not jitter.enabled
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    params = jitter.draw(rng, 5)
    assert rng.bit_generator.state == state              # nothing drawn
    x = photos(5)
    before = x.clone()
    y = apply_jitter(x, params)
    assert y is x and torch.equal(y, before)


def test_grayscale_brightness_contrast_and_rejects_saturation_hue():
    x = photos(6, 31, 25, gray=True)
    params = ColorJitter(brightness=0.5, contrast=0.5).draw(np.random.default_rng(2), 6)
    assert_matches_reference(x, apply_jitter(x, params), params)
    # Raised by apply_jitter (ColorJitter does not know the channels): torchvision would skip them silently.
    for jitter in (ColorJitter(saturation=0.3), ColorJitter(hue=0.1)):
        with pytest.raises(ValueError, match="grayscale"):
            apply_jitter(x, jitter.draw(np.random.default_rng(0), 6))


def test_apply_rejects_bad_inputs():
    params = ColorJitter(brightness=0.2).draw(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="2 samples"):
        apply_jitter(photos(3), params)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        apply_jitter(torch.zeros(2, 4, 5, 5), params)
    with pytest.raises(ValueError, match="float tensor"):
        apply_jitter(torch.zeros(2, 3, 5, 5, dtype=torch.uint8), params)
    with pytest.raises(ValueError, match="float tensor"):
        apply_jitter(torch.zeros(3, 5, 5), params)


# --- drawing ---
def test_draw_is_deterministic_and_seed_dependent():
    jitter = ColorJitter(0.4, 0.4, 0.4, 0.1)
    a = jitter.draw(np.random.default_rng(11), 64)
    b = jitter.draw(np.random.default_rng(11), 64)
    c = jitter.draw(np.random.default_rng(12), 64)
    for x, y, z in zip(a.factors + (a.order,), b.factors + (b.order,), c.factors + (c.order,)):
        assert np.array_equal(x, y)
        assert not np.array_equal(x, z)
    assert a.enabled == b.enabled == (True,) * 4


def test_draw_respects_ranges_and_orders_are_permutations():
    n = 10_000
    jitter = ColorJitter(brightness=0.4, contrast=(0.2, 1.8), saturation=1.5, hue=(-0.1, 0.3))
    assert jitter.ranges == ((0.6, 1.4), (0.2, 1.8), (0.0, 2.5), (-0.1, 0.3))
    p = jitter.draw(np.random.default_rng(0), n)
    for a, (lo, hi) in zip(p.factors, jitter.ranges):
        assert a.dtype == np.float32 and a.shape == (n,)
        assert a.min() >= np.float32(lo) and a.max() <= np.float32(hi)
        assert a.min() < lo + 0.01 * (hi - lo) and a.max() > hi - 0.01 * (hi - lo)     # the whole range
    assert p.order.dtype == np.int8 and p.order.shape == (n, 4)
    assert (np.sort(p.order, axis=1) == np.arange(4)).all()
    assert len({tuple(o) for o in p.order}) == 24
    # torchvision's randperm: every op equally likely at every step.
    for step in range(4):
        freq = np.bincount(p.order[:, step], minlength=4) / n
        assert np.abs(freq - 0.25).max() < 0.03


def test_disabled_ops_get_identity_factors_and_draw_nothing():
    p = ColorJitter(contrast=0.3).draw(np.random.default_rng(0), 100)
    assert p.enabled == (False, True, False, False)
    assert (p.brightness == 1).all() and (p.saturation == 1).all() and (p.hue == 0).all()
    # The draw of an op does not depend on which other ops are off.
    q = ColorJitter(contrast=0.3, saturation=0.0).draw(np.random.default_rng(0), 100)
    assert np.array_equal(p.contrast, q.contrast) and np.array_equal(p.order, q.order)
    assert ColorJitter(brightness=1.0).ranges[0] == (0.0, 2.0)      # clipped at 0, as torchvision


@pytest.mark.parametrize("kwargs,match", [
    ({"brightness": -0.1}, "non-negative"),
    ({"contrast": (1.5, 0.5)}, "min <= max"),
    ({"saturation": (-0.1, 1.0)}, "min <= max"),
    ({"hue": 0.6}, "-0.5 <= min <= max <= 0.5"),
    ({"hue": (-0.7, 0.1)}, "-0.5"),
    ({"brightness": "0.4"}, "single number"),
    ({"brightness": (0.1, 0.2, 0.3)}, "single number"),
    ({"contrast": True}, "single number"),
    ({"saturation": float("nan")}, "finite"),
    ({"brightness": (0.5, float("inf"))}, "finite"),
])
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ColorJitter(**kwargs)


def test_settings_are_frozen_and_hashable():
    j = ColorJitter(brightness=[0.5, 1.5])
    assert j.brightness == (0.5, 1.5) and hash(j) == hash(ColorJitter(brightness=(0.5, 1.5)))
    assert ColorJitter(contrast=(0.5, 0.5)).enabled          # a constant factor is still a change
    with pytest.raises(AttributeError):
        j.brightness = 0.1
    assert OPS == ("brightness", "contrast", "saturation", "hue")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = photos(32, 64, 48)
    params = ColorJitter(0.4, 0.4, 0.4, 0.1).draw(np.random.default_rng(9), 32)
    torch.testing.assert_close(apply_jitter(x.cuda(), params).cpu(), apply_jitter(x, params), atol=1e-3, rtol=0)


@pytest.mark.parametrize("factors", [(0.6, 1.4, 0.5, 0.1), (1.4, 0.3, 1.7, -0.4), (0.0, 0.0, 0.0, 0.5),
                                     (1.0, 1.0, 1.0, 0.0)])
def test_the_per_image_path_matches_the_reference(factors):
    """jitter_image_ (the CPU finisher's path: scalar factors, one-pass blends) is torchvision's
    ColorJitter too, for factors below and above 1, every order."""
    from loader.augment.jitter import jitter_image_

    x = photos(6, w=45, h=31)
    rng = np.random.default_rng(3)
    for k in range(6):
        order = rng.permutation(4)
        row = [*factors, *order.tolist()]
        y = jitter_image_(x[k:k + 1].clone(), row, (True,) * 4)
        want = reference(x[k].double().numpy(), factors, order, (True,) * 4)
        assert np.abs(y[0].double().numpy() - want).max() <= TOL, (factors, order)
    gray = photos(2, gray=True)
    y = jitter_image_(gray[:1].clone(), [0.7, 1.3, 1.0, 0.0, 1, 0, 2, 3], (True, True, False, False))
    want = reference(gray[0].double().numpy(), (0.7, 1.3, 1.0, 0.0), [1, 0, 2, 3], (True, True, False, False))
    assert np.abs(y[0].double().numpy() - want).max() <= TOL
