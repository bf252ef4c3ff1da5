"""The DataLoader baseline (loader.bench.baseline): torchvision-equivalent transforms and loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from loader.augment.recipe import IMAGENET_MEAN, IMAGENET_STD
from loader.bench.baseline import (
    EvalTransform,
    ImageFolderDataset,
    TrainTransform,
    baseline_loader,
    random_resized_crop_params,
    to_tensor_normalize,
)
from loader.errors import LoaderError


def _attempt_fits(height, width, rng_state_seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Replay the first attempt of the algorithm: does it fit (no fallback, no retry)?"""
    rng = np.random.default_rng(rng_state_seed)
    area = height * width * rng.uniform(*scale)
    r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = round(math.sqrt(area * r)), round(math.sqrt(area / r))
    return 0 < w <= width and 0 < h <= height


@pytest.mark.parametrize("hw", [(400, 500), (375, 500), (500, 333), (224, 224), (37, 61)])
def test_crop_params_inside_and_in_range(hw):
    height, width = hw
    for seed in range(300):
        top, left, h, w = random_resized_crop_params(height, width, np.random.default_rng(seed))
        assert 0 <= top and 0 <= left and 0 < h and 0 < w
        assert top + h <= height and left + w <= width
        if _attempt_fits(height, width, seed):   # accepted on the first attempt: ranges hold
            # w, h are rounded: allow the rounding slack on area and ratio
            assert 0.08 * height * width * 0.9 - 2 * (h + w) <= h * w <= height * width
            assert 3 / 4 - 1.5 / min(h, w) <= w / h <= 4 / 3 + 1.5 / min(h, w)


def test_crop_params_area_and_ratio_distribution():
    rng = np.random.default_rng(1)
    areas, ratios = [], []
    for _ in range(2000):
        _, _, h, w = random_resized_crop_params(1000, 1000, rng)
        areas.append(h * w / 1e6)
        ratios.append(w / h)
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() >= 0.079 and areas.max() <= 1.0
    assert ratios.min() >= 0.749 and ratios.max() <= 1.334
    # area uniform in [0.08, 1] (large areas are rejected more often, so the mean sits a bit low)
    assert 0.4 < areas.mean() < 0.56
    # log-ratio roughly symmetric around 0
    assert abs(np.log(ratios).mean()) < 0.03


def test_crop_params_fallback_extreme_ratio():
    # 10 x 1000: no crop with ratio in [3/4, 4/3] and area >= 8% fits -> centre crop,
    # ratio clamped to 4/3 (w = round(h * 4/3)).
    for seed in range(20):
        top, left, h, w = random_resized_crop_params(10, 1000, np.random.default_rng(seed))
        assert (top, left, h, w) == (0, (1000 - 13) // 2, 10, 13)
    # tall: ratio clamped to 3/4 (h = round(w / (3/4)))
    assert random_resized_crop_params(1000, 10, np.random.default_rng(0)) == ((1000 - 13) // 2, 0, 13, 10)


def test_crop_params_fallback_whole_image_when_ratio_in_range():
    # scale > 1 can never fit: fallback; square image -> whole image
    assert random_resized_crop_params(50, 60, np.random.default_rng(0), scale=(2.0, 3.0)) == (0, 0, 50, 60)


def test_crop_params_deterministic_by_seed():
    a = [random_resized_crop_params(400, 500, np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(8)
    s1 = [random_resized_crop_params(400, 500, rng1) for _ in range(10)]
    s2 = [random_resized_crop_params(400, 500, rng2) for _ in range(10)]
    assert s1 != s2


def _expected(colour):
    return [(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD)]


@pytest.mark.parametrize("size", [32, 64])
def test_transforms_solid_colour_exact(size):
    colour = (200, 30, 120)
    img = Image.new("RGB", (97, 71), colour)
    want = torch.tensor(_expected(colour), dtype=torch.float32).view(3, 1, 1).expand(3, size, size)
    rng = np.random.default_rng(0)
    for tf in (TrainTransform(size), EvalTransform(size)):
        for _ in range(3):
            x = tf(img, rng)
            assert x.shape == (3, size, size) and x.dtype == torch.float32
            assert x.is_contiguous()
            torch.testing.assert_close(x, want, rtol=0, atol=1e-6)


def test_to_tensor_normalize_layout_and_values():
    arr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    x = to_tensor_normalize(Image.fromarray(arr, "RGB"), mean=(0, 0, 0), std=(1, 1, 1))
    assert x.shape == (3, 4, 5)
    torch.testing.assert_close(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


def test_to_tensor_normalize_rejects_zero_std_like_torchvision():
    img = Image.new("RGB", (4, 4), (10, 20, 30))
    with pytest.raises(ValueError, match="std evaluated to zero"):
        to_tensor_normalize(img, mean=(0, 0, 0), std=(1, 0, 1))


def test_train_transform_equals_crop_then_resize_as_torchvision():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    x = TrainTransform(24)(img, np.random.default_rng(7))
    top, left, h, w = random_resized_crop_params(60, 80, np.random.default_rng(7))
    flip = np.random.default_rng(7)
    random_resized_crop_params(60, 80, flip)          # the same draws, then the flip's
    ref = img.crop((left, top, left + w, top + h)).resize((24, 24), Image.BILINEAR)
    if flip.random() < 0.5:
        ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
    torch.testing.assert_close(x, to_tensor_normalize(ref), rtol=0, atol=0)


def test_train_flip_happens_about_half_the_time():
    # left half black, right half white: a flipped crop of the whole image is bright on the left
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, 32:] = 255
    img = Image.fromarray(arr)
    rng = np.random.default_rng(0)
    tf = TrainTransform(16)
    left_bright = 0
    n = 200
    for _ in range(n):
        x = tf(img, rng)
        left_bright += bool(x[0, :, 0].mean() > x[0, :, -1].mean())
    assert 0.35 * n < left_bright < 0.65 * n


def test_eval_resize_and_centre_crop_geometry():
    # A 100 x 200 (h x w) image with a marker column at the horizontal centre:
    # eval at 56 resizes the shorter side to 64 (-> 64 x 128) and centre-crops 56.
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, 98:102] = 255
    x = EvalTransform(56)(Image.fromarray(arr))
    assert x.shape == (3, 56, 56)
    col = x[0].mean(0)
    assert int(col.argmax()) in (27, 28)
    assert EvalTransform(224).resize == 256


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from loader.synthetic import make_dataset

    root = tmp_path_factory.mktemp("baseline") / "imgs"
    make_dataset(root, classes=3, per_class=6, workers=1)
    (root / "class_01" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_dataset(tiny_folder):
    ds = ImageFolderDataset(tiny_folder, size=32, train=False)
    assert ds.classes == ["class_00", "class_01", "class_02"]
    assert len(ds) == 18
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    x, y = ds[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    # eval is deterministic
    torch.testing.assert_close(ds[7][0], x)


def test_image_folder_dataset_bad_root(tmp_path):
    with pytest.raises(LoaderError, match="not a directory"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(LoaderError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")


@pytest.mark.parametrize("workers", [0, 2])
def test_baseline_loader_epoch(tiny_folder, workers):
    ds = ImageFolderDataset(tiny_folder, size=24, train=True)
    dl = baseline_loader(ds, 4, workers=workers, train=True, seed=3)
    assert dl.drop_last and dl.persistent_workers == (workers > 0) and not dl.pin_memory
    assert len(dl) == 18 // 4
    seen = []
    for images, labels in dl:
        assert images.shape == (4, 3, 24, 24) and images.dtype == torch.float32
        assert labels.shape == (4,) and labels.dtype == torch.int64
        seen.append(labels)
    labels = torch.cat(seen)
    assert len(labels) == 16
    # each sample at most once: compare label multiset against the dataset's
    counts = torch.bincount(labels, minlength=3)
    assert (counts <= torch.bincount(torch.from_numpy(ds.labels), minlength=3)).all()


def test_baseline_loader_covers_each_sample_at_most_once(tiny_folder):
    class Indexed(torch.utils.data.Dataset):
        def __len__(self):
            return 18

        def __getitem__(self, i):
            return torch.zeros(1), i

    dl = baseline_loader(Indexed(), 4, workers=0, train=True, seed=0)
    idx = torch.cat([y for _, y in dl]).tolist()
    assert len(idx) == 16 and len(set(idx)) == 16
    # shuffled, and the order depends on the seed
    idx2 = torch.cat([y for _, y in baseline_loader(Indexed(), 4, workers=0, train=True, seed=1)]).tolist()
    assert idx != sorted(idx) or idx2 != sorted(idx2)
    assert idx != idx2
    # eval: in order, every sample, last batch partial
    ev = torch.cat([y for _, y in baseline_loader(Indexed(), 4, workers=0, train=False)]).tolist()
    assert ev == list(range(18))


def test_baseline_loader_augmentation_seeded(tiny_folder):
    def first_batch(seed):
        ds = ImageFolderDataset(tiny_folder, size=16, train=True)
        images, labels = next(iter(baseline_loader(ds, 6, workers=0, seed=seed)))
        return images, labels

    a, b, c = first_batch(5), first_batch(5), first_batch(6)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.equal(a[0], c[0])


def test_packed_file_dataset_matches_folder(tiny_folder, tmp_path):
    pack = pytest.importorskip("loader.convert.packing").pack
    from loader.bench.baseline import PackedFileDataset

    dst = tmp_path / "packed"
    pack(tiny_folder, dst, progress=False, workers=1)
    pds = PackedFileDataset(dst, size=32, train=False)
    fds = ImageFolderDataset(tiny_folder, size=32, train=False)
    assert pds.classes == fds.classes and len(pds) == len(fds)
    src = {pds.packed.source(i): i for i in range(len(pds))}
    for i, (path, label) in enumerate(fds.samples):
        rel = str(path)[len(str(tiny_folder)) + 1:].replace("\\", "/")
        j = src[rel]
        x, y = pds[j]
        assert y == label
        torch.testing.assert_close(x, fds[i][0])
    # and through forked DataLoader workers, after the main process has read records
    n = sum(int(y.shape[0]) for _, y in baseline_loader(pds, 4, workers=2, train=True))
    assert n == 16


def test_baseline_and_loader_draw_crops_from_the_same_distribution():
    """The scalar torchvision-style crop and ImageLoader's vectorised one agree statistically."""
    from loader.load.sampler import crop_windows

    rng = np.random.default_rng(11)
    n, height, width = 4000, 375, 500
    scalar = np.array([random_resized_crop_params(height, width, rng) for _ in range(n)], dtype=float)
    _, shape, _ = crop_windows(np.full(n, height), np.full(n, width), np.random.default_rng(12))
    frac_a = scalar[:, 2] * scalar[:, 3] / (height * width)
    frac_b = shape[:, 0] * shape[:, 1] / (height * width)
    ratio_a, ratio_b = scalar[:, 3] / scalar[:, 2], shape[:, 0] / shape[:, 1]
    assert abs(frac_a.mean() - frac_b.mean()) < 0.02
    assert abs(np.log(ratio_a).mean() - np.log(ratio_b).mean()) < 0.02
    assert abs(np.quantile(frac_a, 0.9) - np.quantile(frac_b, 0.9)) < 0.03


def test_pil_color_jitter_is_torchvisions_pil_path():
    """Each op is PIL's ImageEnhance (brightness, contrast, colour) or the HSV hue shift that
    torchvision's PIL functional uses; factors come from the ranges; nothing when off."""
    from PIL import ImageEnhance

    from loader.augment.jitter import ColorJitter
    from loader.bench.baseline import TrainTransform, pil_color_jitter
    from loader.synthetic import photo_like_image

    img = photo_like_image(4, size=(64, 48))
    rng = np.random.default_rng(0)
    for k, (jit, enhance) in enumerate([(ColorJitter(brightness=(1.3, 1.3)), ImageEnhance.Brightness),
                                        (ColorJitter(contrast=(0.6, 0.6)), ImageEnhance.Contrast),
                                        (ColorJitter(saturation=(1.7, 1.7)), ImageEnhance.Color)]):
        f = (1.3, 0.6, 1.7)[k]
        assert np.array_equal(np.asarray(pil_color_jitter(img, jit, rng)), np.asarray(enhance(img).enhance(f)))
    h, s, v = img.convert("HSV").split()
    h25 = ((np.asarray(h).astype(int) + 25) % 256).astype(np.uint8)     # int(0.1 * 255) = 25
    shifted = Image.merge("HSV", (Image.fromarray(h25, "L"), s, v))
    got = pil_color_jitter(img, ColorJitter(hue=(0.1, 0.1)), rng)
    assert np.array_equal(np.asarray(got), np.asarray(shifted.convert("RGB")))
    assert pil_color_jitter(img, ColorJitter(), rng) is img
    # Drawn from the generator: the same seed, the same image; the transform applies it after the flip.
    a = pil_color_jitter(img, ColorJitter(0.4, 0.4, 0.4, 0.1), np.random.default_rng(5))
    b = pil_color_jitter(img, ColorJitter(0.4, 0.4, 0.4, 0.1), np.random.default_rng(5))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    plain = TrainTransform(32)(img, np.random.default_rng(1))
    jittered = TrainTransform(32, color_jitter=ColorJitter(brightness=(0.5, 0.5)))(img, np.random.default_rng(1))
    assert jittered.shape == plain.shape and not torch.equal(jittered, plain)
