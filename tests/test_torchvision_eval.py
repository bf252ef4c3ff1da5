"""torchvision's eval transform (Resize(floor(s / crop_fraction)) + CenterCrop(s)) from a decoded window."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from loader.augment.torchvision_eval import ResizeScratch, eval_geometry, resize_window, resized_size
from loader.synthetic import photo_like_image


def _public_resize_into(src, hw, out):
    """torch's public form of the kernel (the finisher uses the private ``out=`` op)."""
    out.copy_(torch.nn.functional.interpolate(src, size=hw, mode="bilinear", antialias=True, align_corners=False))


def ours(win: np.ndarray, g, resize_into=None) -> np.ndarray:
    """resize_window on a numpy HW / HWC window, back as numpy of the same layout."""
    from loader.load.finisher import _resize_into

    arr = np.array(win)                               # writable, as DALI's windows are
    x = torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1)).permute(2, 0, 1).unsqueeze(0)
    y = resize_window(x, g, 0, ResizeScratch(), resize_into or _resize_into).permute(1, 2, 0).numpy()
    return y.reshape((g.size, g.size) + arr.shape[2:])

SIZES = [(500, 375), (375, 500), (333, 257), (257, 333), (224, 224), (100, 80), (1001, 77), (301, 300)]


def decoded(w, h, mode="RGB", seed=3):
    """A photo-like JPEG (quality 90) of w x h, decoded whole by Pillow."""
    buf = io.BytesIO()
    photo_like_image(seed, size=(w, h)).save(buf, "JPEG", quality=90)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode))


def torchvision_reference(arr, s, cf):
    """torchvision's PIL path written out: Resize(R) (shorter side R, longer int(R * long / short),
    Image.resize BILINEAR), then CenterCrop(s) at int(round((H' - s) / 2.0))."""
    h, w = arr.shape[:2]
    r = math.floor(s / cf)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = r, int(r * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    im = Image.fromarray(arr).resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - s) / 2.0))
    left = int(round((new_w - s) / 2.0))
    return np.asarray(im.crop((left, top, left + s, top + s))), (new_w, new_h, left, top)


def window_of(arr, g, k=0):
    (x, y), (w, h) = g.anchor[k].tolist(), g.shape[k].tolist()
    return arr[y:y + h, x:x + w]


@pytest.mark.parametrize("w,h", SIZES)
@pytest.mark.parametrize("s", [224, 160, 32])
@pytest.mark.parametrize("cf", [0.875, 0.95, 1.0])
def test_window_resize_equals_full_resize_then_center_crop(w, h, s, cf):
    arr = decoded(w, h)
    want, (new_w, new_h, left, top) = torchvision_reference(arr, s, cf)
    g = eval_geometry(np.array([h]), np.array([w]), s, cf)
    assert g.resized[0].tolist() == [new_w, new_h] and g.crop[0].tolist() == [left, top]
    for kernel in (None, _public_resize_into):        # the finisher's form and the public API
        got = ours(window_of(arr, g), g, kernel)
        assert got.shape == (s, s, 3) and got.dtype == np.uint8
        assert np.array_equal(got, want)


@pytest.mark.parametrize("w,h", [(500, 375), (257, 333), (100, 80), (1001, 77)])
@pytest.mark.parametrize("s,cf", [(224, 0.875), (32, 0.95)])
def test_grayscale_window_is_exact_too(w, h, s, cf):
    arr = decoded(w, h, "L")
    want, _ = torchvision_reference(arr, s, cf)
    g = eval_geometry(np.array([h]), np.array([w]), s, cf)
    win = window_of(arr, g)
    assert np.array_equal(ours(win, g), want)


def test_geometry_by_hand_500x375():
    # R = 224 / 0.875 = 256; W' = int(256 * 500 / 375) = 341; left = round(117 / 2) = 58 (half to even),
    # top = 16. Columns: scale = support = 500/341; centre of output 58 is 58.5 * 500/341 = 85.777,
    # xmin = int(85.777 - 1.466 + 0.5) = 84; of output 281: 412.757 -> xmax = int(414.72) = 414.
    # Rows: scale 375/256; 16.5 * 1.4648 = 24.17 -> ymin 23; 239.5 * 1.4648 = 350.83 -> ymax 352.
    g = eval_geometry(np.array([375]), np.array([500]), 224, 0.875)
    assert g.resize == 256 and g.size == 224
    assert g.source.tolist() == [[500, 375]]
    assert g.resized.tolist() == [[341, 256]]
    assert g.crop.tolist() == [[58, 16]]
    assert g.anchor.tolist() == [[84, 23]]
    assert g.shape.tolist() == [[330, 329]]
    np.testing.assert_allclose(g.box[0], [58 * 500 / 341 - 84, 16 * 375 / 256 - 23,
                                          282 * 500 / 341 - 84, 240 * 375 / 256 - 23], rtol=1e-6)


def test_geometry_by_hand_upscale_and_identity():
    # 100x80 at s=224: R = 256 on the short side (80), W' = int(256 * 100 / 80) = 320, left 48, top 16.
    # Upscale: support 1, scale 0.3125: 48.5 * 0.3125 = 15.16 -> xmin int(14.66) = 14;
    # 271.5 * 0.3125 = 84.84 -> xmax int(86.34) = 86; rows the same numbers shifted: 4 .. 76.
    g = eval_geometry(np.array([80, 224]), np.array([100, 224]), 224, 0.875)
    assert g.resized[0].tolist() == [320, 256] and g.crop[0].tolist() == [48, 16]
    assert g.anchor[0].tolist() == [14, 4] and g.shape[0].tolist() == [72, 72]
    # 224x224 at s=224, crop_fraction 0.875: upscaled to 256, crop (16, 16); scale 0.875:
    # 16.5 * 0.875 = 14.44 -> int(13.94) = 13; 239.5 * 0.875 = 209.56 -> int(211.06) = 211.
    assert g.resized[1].tolist() == [256, 256] and g.crop[1].tolist() == [16, 16]
    assert g.anchor[1].tolist() == [13, 13] and g.shape[1].tolist() == [198, 198]
    # crop_fraction 1 on a 224 image: no resize at all, the window is the image.
    g1 = eval_geometry(np.array([224]), np.array([224]), 224, 1.0)
    assert g1.resized.tolist() == [[224, 224]] and g1.crop.tolist() == [[0, 0]]
    assert g1.shape.tolist() == [[224, 224]]


def test_portrait_is_the_transpose_of_landscape():
    g = eval_geometry(np.array([375, 500]), np.array([500, 375]), 224, 0.875)
    assert g.resized.tolist() == [[341, 256], [256, 341]]
    assert g.crop.tolist() == [[58, 16], [16, 58]]
    assert g.anchor.tolist() == [[84, 23], [23, 84]]
    assert g.shape.tolist() == [[330, 329], [329, 330]]


def test_vectorised_equals_one_by_one_and_dtypes():
    rng = np.random.default_rng(0)
    h = rng.integers(1, 900, 200)
    w = rng.integers(1, 900, 200)
    g = eval_geometry(h, w, 160, 0.95)
    assert len(g) == 200
    for name in ("source", "resized", "crop", "anchor", "shape"):
        assert getattr(g, name).dtype == np.int32 and getattr(g, name).shape == (200, 2)
    assert g.box.dtype == np.float32 and g.box.shape == (200, 4)
    for k in range(0, 200, 17):
        one = eval_geometry(h[k:k + 1], w[k:k + 1], 160, 0.95)
        for name in ("resized", "crop", "anchor", "shape"):
            assert getattr(one, name)[0].tolist() == getattr(g, name)[k].tolist()
        assert resized_size(h[k], w[k], g.resize) == (g.resized[k, 1], g.resized[k, 0])
    # The window always lies in the image and holds the crop's source rectangle.
    assert (g.anchor >= 0).all() and (g.anchor + g.shape <= g.source).all()
    assert (g.box[:, :2] >= -1e-4).all() and (g.box[:, 2:] <= g.shape + 1e-3).all()


def test_single_box_resize_is_close_but_not_exact():
    # What EvalGeometry.box describes (one Pillow call on the window) is the same filter up to
    # float32 box rounding and pillow-simd's per-call weight precision: off by <= 2 levels, rarely.
    arr = decoded(500, 375)
    want, _ = torchvision_reference(arr, 224, 0.875)
    g = eval_geometry(np.array([375]), np.array([500]), 224, 0.875)
    win = np.ascontiguousarray(window_of(arr, g))
    one = np.asarray(Image.fromarray(win).resize((224, 224), Image.BILINEAR, box=tuple(g.box[0].tolist())))
    diff = np.abs(one.astype(int) - want)
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01


def test_errors_are_raised():
    with pytest.raises(ValueError, match="crop_fraction"):
        eval_geometry(np.array([10]), np.array([10]), 8, 0.0)
    with pytest.raises(ValueError, match="crop_fraction"):
        eval_geometry(np.array([10]), np.array([10]), 8, 1.5)
    with pytest.raises(ValueError, match="size"):
        eval_geometry(np.array([10]), np.array([10]), 0, 0.875)
    with pytest.raises(ValueError, match="1x1"):
        eval_geometry(np.array([0]), np.array([10]), 8, 0.875)
    with pytest.raises(ValueError, match="length"):
        eval_geometry(np.array([10, 11]), np.array([10]), 8, 0.875)
    g = eval_geometry(np.array([375]), np.array([500]), 224, 0.875)
    with pytest.raises(ValueError, match="must be 329x330"):
        ours(np.zeros((100, 100, 3), np.uint8), g)
