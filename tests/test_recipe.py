"""ImageLoader's recipe knobs on DALI's CPU graph: defaults as loader 0.2, crops, flips, colour
jitter, grayscale, torchvision-exact eval, the batch hook. References are written out with Pillow
and numpy here, never with the code under test."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import loader
from loader import ImageLoader
from loader.augment.jitter import ColorJitter
from loader.augment.settings import Augment
from loader.errors import ArgumentError

V3 = Path(__file__).parent / "data" / "v3"
# Photo-like test images of odd sizes, both orientations, one upscaled (short side < 256).
SIZES = [(500, 375), (375, 500), (333, 257), (257, 333), (301, 300), (640, 161), (161, 640), (230, 200)]


@pytest.fixture(scope="module")
def odd_ds(tmp_path_factory):
    """16 photo-like JPEGs in 2 classes, each of a size from SIZES."""
    from loader.synthetic import photo_like_image

    root = tmp_path_factory.mktemp("odd")
    for c in range(2):
        (root / "src" / f"c{c}").mkdir(parents=True)
        for i, size in enumerate(SIZES):
            photo_like_image(100 * c + i, label=c, num_classes=2, size=size).save(
                root / "src" / f"c{c}" / f"{i}.jpg", quality=90)
    loader.pack(root / "src", root / "packed", workers=1, progress=False)
    return root / "packed"


def decoded(ds, i: int, mode: str = "RGB") -> Image.Image:
    return Image.open(io.BytesIO(ds.read(i))).convert(mode)


def raw(**kw) -> dict:
    return dict(dtype=torch.uint8, mean=None, std=None, device="cpu", with_indices=True, **kw)


# ------------------------------------------------------------------ defaults


@pytest.mark.parametrize("name", ["train_uint8", "train_float32", "eval_uint8", "eval_float32"])
def test_defaults_give_loader_0_2_batches_bit_for_bit(name):
    """tests/data/v3/batches-0.2.0.json holds the batches loader 0.2.0 yielded: the default train
    and eval recipes give the same bytes, labels and order."""
    golden = json.loads((V3 / "batches-0.2.0.json").read_text())
    kw = dict(train=name.startswith("train"))
    if name.endswith("uint8"):
        kw.update(dtype=torch.uint8, mean=None, std=None)
    ld = ImageLoader(V3 / "packed", batch_size=golden["batch_size"], image_size=golden["image_size"],
                     seed=golden["seed"], device="cpu", with_indices=True, **kw)
    for epoch, want in enumerate(golden["batches"][name]):
        ld.set_epoch(epoch)
        got = [[hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest(), y.tolist(), i.tolist()]
               for x, y, i in ld]
        assert got == want, (name, epoch)
    ld.close()


# ------------------------------------------------------------------ crops and flips


def test_scale_and_ratio_reach_the_crop(odd_ds):
    """scale=(1, 1) with ratio pinned to an image's own aspect ratio crops the whole image: the
    output is Pillow's bilinear resize of the whole decoded record, exactly."""
    ds = loader.open_dataset(odd_ds)
    i = next(i for i in range(len(ds)) if (ds.widths[i], ds.heights[i]) == (500, 375))
    r = 500 / 375
    ld = ImageLoader(odd_ds, batch_size=16, image_size=40, augment=Augment(scale=(1.0, 1.0), ratio=(r, r), hflip=0.0),
                     **raw())
    images, _, idx = next(iter(ld))
    k = idx.tolist().index(i)
    ref = np.asarray(decoded(ds, i).resize((40, 40), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(images[k].numpy(), ref)
    with pytest.raises(ArgumentError, match="scale"):
        Augment(scale=(0.5, 1.5))
    with pytest.raises(ArgumentError, match="ratio"):
        Augment(ratio=(2.0, 1.0))


def test_hflip_probability(odd_ds):
    """hflip=0 never flips, hflip=1 always does, on the same crops (the draw does not move)."""
    batches = {}
    for p in (0.0, 0.5, 1.0):
        ld = ImageLoader(odd_ds, batch_size=16, image_size=24, augment=Augment(hflip=p), seed=2, **raw())
        batches[p] = next(iter(ld))
        ld.close()
    never, half, always = batches[0.0][0], batches[0.5][0], batches[1.0][0]
    assert torch.equal(always, never.flip(-1))
    flipped = [torch.equal(half[k], always[k]) and not torch.equal(half[k], never[k]) for k in range(16)]
    kept = [torch.equal(half[k], never[k]) for k in range(16)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 16
    with pytest.raises(ArgumentError, match="hflip"):
        Augment(hflip=1.5)


def test_fast_eval_crop_fraction(odd_ds):
    """eval_mode="fast" crops the centre square of crop_fraction x the shorter side."""
    ds = loader.open_dataset(odd_ds)
    ld = ImageLoader(odd_ds, batch_size=16, image_size=32, train=False,
                     augment=Augment(eval_mode="fast", crop_fraction=0.5), **raw())
    images, _, idx = next(iter(ld))
    for img, i in zip(images, idx.tolist()):
        im = decoded(ds, i)
        w, h = im.size
        side = round(min(w, h) * 0.5)
        x, y = (w - side) // 2, (h - side) // 2
        ref = np.asarray(im.crop((x, y, x + side, y + side)).resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
        assert np.array_equal(img.numpy(), ref), i
    for bad in (0.0, 1.2, "x"):
        with pytest.raises(ArgumentError, match="crop_fraction"):
            Augment(crop_fraction=bad)


# ------------------------------------------------------------------ torchvision-exact eval


def torchvision_eval_reference(im: Image.Image, size: int, crop_fraction: float) -> np.ndarray:
    """torchvision 0.29's Resize(int(size / crop_fraction)) + CenterCrop(size) on a PIL image,
    written out: the shorter side becomes R, the longer int(R * long / short) (Resize's
    _compute_resized_output_size), Pillow bilinear, then the crop at int(round((H - size) / 2))."""
    w, h = im.size
    r = int(size / crop_fraction)
    if w <= h:
        nw, nh = r, int(r * h / w)
    else:
        nw, nh = int(r * w / h), r
    big = im.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.asarray(big.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize("size,crop_fraction", [(224, 0.875), (160, 0.95), (64, 1.0)])
def test_torchvision_eval_matches_torchvision_pixels(odd_ds, size, crop_fraction):
    """eval_mode="torchvision" is torchvision's Resize + CenterCrop on the same decoded pixels: per image
    mean |difference| <= 1 grey level and 99% of pixels within 2 (measured: identical)."""
    ds = loader.open_dataset(odd_ds)
    ld = ImageLoader(odd_ds, batch_size=16, image_size=size, train=False,
                     augment=Augment(crop_fraction=crop_fraction, eval_mode="torchvision"), **raw())
    images, _, idx = next(iter(ld))
    assert sorted(idx.tolist()) == list(range(16))
    exact = 0
    for img, i in zip(images, idx.tolist()):
        ref = torchvision_eval_reference(decoded(ds, i), size, crop_fraction).transpose(2, 0, 1)
        diff = np.abs(ref.astype(int) - img.numpy().astype(int))
        assert diff.mean() <= 1.0 and (diff <= 2).mean() >= 0.99, (i, diff.mean(), diff.max())
        exact += int(diff.max() == 0)
    assert exact == 16      # what was measured here: DALI's window decode and Pillow's full decode agree


def test_fast_eval_is_not_torchvision_eval(odd_ds):
    """Why eval_mode="torchvision" exists: the default (0.2's) eval window is off torchvision's by up
    to ~1 output pixel."""
    ds = loader.open_dataset(odd_ds)
    ld = ImageLoader(odd_ds, batch_size=16, image_size=224, train=False, **raw())
    images, _, idx = next(iter(ld))
    means = [np.abs(torchvision_eval_reference(decoded(ds, i), 224, 0.875).transpose(2, 0, 1).astype(int)
                    - img.numpy().astype(int)).mean() for img, i in zip(images, idx.tolist())]
    assert max(means) > 1.0


# ------------------------------------------------------------------ grayscale


def test_grayscale_is_one_channel_like_pil_convert_l(odd_ds):
    ds = loader.open_dataset(odd_ds)
    gray = Augment(color_mode="grayscale", eval_mode="torchvision")
    ld = ImageLoader(odd_ds, batch_size=16, image_size=64, train=False, augment=gray, **raw())
    images, _, idx = next(iter(ld))
    assert images.shape == (16, 1, 64, 64) and images.dtype == torch.uint8
    for img, i in zip(images, idx.tolist()):
        ref = torchvision_eval_reference(decoded(ds, i, "L"), 64, 0.875)
        diff = np.abs(ref.astype(int) - img[0].numpy().astype(int))
        # DALI decodes the JPEG's luma directly; PIL converts the decoded RGB back to L.
        assert diff.mean() <= 1.0 and diff.max() <= 4, (i, diff.mean(), diff.max())
    norm = ImageLoader(odd_ds, batch_size=16, image_size=64, train=False, augment=gray, device="cpu")
    x, _ = next(iter(norm))
    want = (images.float() / 255 - 0.449) / 0.226
    assert x.shape == (16, 1, 64, 64) and torch.allclose(x, want, atol=1e-5)
    train = ImageLoader(odd_ds, batch_size=8, image_size=32, device="cpu",
                        augment=Augment(color_mode="grayscale", color_jitter=(0.4, 0.4, 0)))
    assert next(iter(train))[0].shape == (8, 1, 32, 32)
    with pytest.raises(ArgumentError, match="grayscale"):
        Augment(color_mode="grayscale", color_jitter=0.4)    # saturation too
    with pytest.raises(ArgumentError, match="mean must be 1 number"):
        ImageLoader(odd_ds, batch_size=4, augment=Augment(color_mode="grayscale"), mean=(0.5, 0.5, 0.5),
                    std=(0.2, 0.2, 0.2))
    with pytest.raises(ArgumentError, match="color_mode"):
        Augment(color_mode="gray")


# ------------------------------------------------------------------ batch hook


class Recorder:
    """A batch_transform that records its calls and mixes the batch with its reverse by a
    coefficient drawn from the generator it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, targets, generator):
        assert isinstance(generator, torch.Generator)
        lam = float(torch.rand((), generator=generator))
        self.calls.append((images.shape[0], lam, generator.initial_seed()))
        return images * lam + images.flip(0) * (1 - lam), targets


def test_batch_transform_is_called_once_per_batch_with_a_seeded_generator(odd_ds):
    from loader.augment.batch import batch_seed

    def run(f, epochs=(0, 1), **kw):
        ld = ImageLoader(odd_ds, batch_size=4, image_size=16, seed=5, device="cpu", batch_transform=f, **kw)
        out = []
        for e in epochs:
            ld.set_epoch(e)
            out.append([x.clone() for x, _ in ld])
        return ld, out

    a, b = Recorder(), Recorder()
    ld, first = run(a)
    _, second = run(b)
    assert len(a.calls) == 2 * len(ld) == 8
    assert [c[2] for c in a.calls] == [batch_seed(5, e, 0, k) for e in (0, 1) for k in range(4)]
    assert a.calls == b.calls and len({c[1] for c in a.calls}) == 8
    assert all(torch.equal(x, y) for e in range(2) for x, y in zip(first[e], second[e]))
    # Resumed after 2 batches of epoch 1: the same mixed batches as the uninterrupted run.
    ld.set_epoch(1)
    it = iter(ld)
    next(it), next(it)
    state = ld.state_dict()
    c = Recorder()
    resumed = ImageLoader(odd_ds, batch_size=4, image_size=16, seed=5, device="cpu", batch_transform=c)
    resumed.load_state_dict(state)
    rest = [x for x, _ in resumed]
    assert len(rest) == 2 and all(torch.equal(x, y) for x, y in zip(rest, first[1][2:]))
    assert c.calls == a.calls[6:8]
    # What f returns is what the loader yields (the indices still come last with with_indices).
    ld = ImageLoader(odd_ds, batch_size=4, image_size=16, device="cpu", with_indices=True,
                     batch_transform=lambda x, y, g: (x[:, :1], y + 100))
    x, y, idx = next(iter(ld))
    assert x.shape == (4, 1, 16, 16) and y.tolist() == [int(ld.dataset.labels[i]) + 100 for i in idx.tolist()]
    with pytest.raises(ArgumentError, match="batch_transform"):
        ImageLoader(odd_ds, batch_size=4, batch_transform="mixup")


def test_mixup_cutmix_example_gives_soft_targets_and_replays(odd_ds):
    """scripts/mixup_cutmix.py (the docs' example): rows of the soft targets sum to 1, mix two
    classes by the coefficient the images were mixed with, and two runs agree exactly."""
    from scripts.mixup_cutmix import MixupCutmix

    def epoch(alpha_mix, alpha_cut):
        f = MixupCutmix(num_classes=2, mixup_alpha=alpha_mix, cutmix_alpha=alpha_cut)
        ld = ImageLoader(odd_ds, batch_size=8, image_size=16, seed=1, device="cpu", batch_transform=f,
                         with_indices=True)
        return list(ld), ld

    for alphas in ((0.2, 0.0), (0.0, 1.0), (0.2, 1.0)):
        run1, ld = epoch(*alphas)
        run2, _ = epoch(*alphas)
        for (x1, t1, i1), (x2, t2, i2) in zip(run1, run2):
            assert torch.equal(x1, x2) and torch.equal(t1, t2) and torch.equal(i1, i2)
            assert t1.shape == (8, 2) and torch.allclose(t1.sum(1), torch.ones(8))
            labels = torch.tensor([int(ld.dataset.labels[i]) for i in i1.tolist()])
            hot = torch.nn.functional.one_hot(labels, 2).float()
            lam = t1[0] @ hot[0] if labels[0] != labels[-1] else None
            if lam is not None:   # soft target = lam * own + (1 - lam) * partner's
                assert torch.allclose(t1[0], lam * hot[0] + (1 - lam) * hot[-1], atol=1e-6)


# ------------------------------------------------------------------ colour jitter


def test_color_jitter_pixels_parameters_resume_and_ranks(odd_ds):
    """Each batch's jitter is torchvision's ColorJitter (the numpy reference of test_jitter) applied
    to the un-jittered batch (same crops: its own random stream), with parameters drawn from
    (seed, epoch, the batch's first position): so a resumed run and every rank of a DDP run get
    exactly the parameters of the plan's positions."""
    from tests.test_jitter import TOL, reference

    jit = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    kw = dict(batch_size=4, image_size=24, seed=9, device="cpu", with_indices=True, mean=None, std=None)
    plain = ImageLoader(odd_ds, **kw)
    jittered = ImageLoader(odd_ds, augment=Augment(color_jitter=jit), **kw)
    plain.set_epoch(1), jittered.set_epoch(1)
    plan = jittered.epoch_plan(1)
    batches = list(jittered)
    for b, ((x, _, i), (y, _, j)) in enumerate(zip(plain, batches)):
        assert torch.equal(i, j)
        p = jit.draw(np.random.default_rng([9, 1, int(plan.positions[4 * b]), 0xC1]), 4)
        for k in range(4):
            want = reference(x[k].double().numpy(), [f[k] for f in p.factors], p.order[k], (True,) * 4)
            assert np.abs(y[k].double().numpy() - want).max() <= TOL + 1e-3
        assert not torch.equal(x, y)
    # Resume after one batch: the remaining batches are identical.
    jittered.set_epoch(1)
    it = iter(jittered)
    next(it)
    state = jittered.state_dict()
    again = ImageLoader(odd_ds, augment=Augment(color_jitter=jit), **kw)
    again.load_state_dict(state)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, batches[1:]))
    # Two ranks: rank r's batches are what the single formula gives for its own positions.
    for rank in (0, 1):
        ld = ImageLoader(odd_ds, augment=Augment(color_jitter=jit), rank=rank, world_size=2, **kw)
        ref = ImageLoader(odd_ds, rank=rank, world_size=2, **kw)
        ld.set_epoch(1), ref.set_epoch(1)
        plan = ld.epoch_plan(1)
        for b, ((x, _, _), (y, _, _)) in enumerate(zip(ref, ld)):
            p = jit.draw(np.random.default_rng([9, 1, int(plan.positions[4 * b]), 0xC1]), 4)
            want = np.stack([reference(x[k].double().numpy(), [f[k] for f in p.factors], p.order[k], (True,) * 4)
                             for k in range(4)])
            assert np.abs(y.double().numpy() - want).max() <= TOL + 1e-3
    # uint8 output rounds the jittered values.
    u8 = ImageLoader(odd_ds, augment=Augment(color_jitter=jit), **dict(kw, dtype=torch.uint8))
    u8.set_epoch(1)
    assert torch.equal(next(iter(u8))[0], batches[0][0].round().to(torch.uint8))
    for bad in (-0.1, (0.2, 0.3, 0.4, 0.9), "strong"):
        with pytest.raises(ArgumentError, match="color_jitter"):
            Augment(color_jitter=bad)


# ------------------------------------------------------------------ targets


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory):
    """12 photo-like JPEGs with no class layout, and a CSV / JSONL label file for them."""
    from loader.synthetic import photo_like_image

    root = tmp_path_factory.mktemp("flat")
    for i in range(12):
        (root / "src" / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        photo_like_image(i, size=SIZES[i % len(SIZES)]).save(root / "src" / f"d{i % 3}" / f"{i}.jpg", quality=90)
    return root


def test_targets_follow_the_labels_the_dataset_was_packed_with(flat_tree):
    """One class per row: int64 class indices; lists of classes: float multi-hot; unlabeled:
    the record indices. On every record of an epoch, in the loader's order."""
    root, src = flat_tree, flat_tree / "src"
    rows = [(f"d{i % 3}/{i}.jpg", ["cat", "dog", "owl"][i % 3]) for i in range(12)][::-1]
    (root / "one.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    multi = [(p, [label] + (["dog"] if k % 2 else []) + ([] if k % 5 else ["zebra"])) for k, (p, label) in
             enumerate(rows)]
    (root / "multi.jsonl").write_text("".join(json.dumps({"path": p, "label": ls}) + "\n" for p, ls in multi))
    for name, kw in (("one", dict(labels=root / "one.csv")), ("multi", dict(labels=root / "multi.jsonl")),
                     ("none", dict(unlabeled=True))):
        loader.pack(src, root / name, workers=1, progress=False, **kw)

    ld = ImageLoader(root / "one", batch_size=5, image_size=16, device="cpu", with_indices=True, train=False)
    got = {i: y for _, t, idx in ld for i, y in zip(idx.tolist(), t.tolist())}
    classes = ld.dataset.classes
    assert classes == ("cat", "dog", "owl") and sorted(got) == list(range(12))
    assert [classes[got[i]] for i in range(12)] == [label for _, label in rows]      # row order = record order

    ld = ImageLoader(root / "multi", batch_size=4, image_size=16, device="cpu", with_indices=True, seed=3)
    classes = ld.dataset.classes
    assert classes == ("cat", "dog", "owl", "zebra")
    seen = 0
    for _, t, idx in ld:
        assert t.dtype == torch.float32 and t.shape == (4, 4)
        for row, i in zip(t.tolist(), idx.tolist()):
            assert {classes[c] for c, v in enumerate(row) if v == 1.0} == set(multi[i][1]) and set(row) <= {0.0, 1.0}
            seen += 1
    assert seen == 12

    ld = ImageLoader(root / "none", batch_size=6, image_size=16, device="cpu", train=False)
    targets = [t for _, t in ld]
    assert ld.dataset.classes == () and torch.cat(targets).tolist() == list(range(12))
    assert sorted(ld.dataset.source(i) for i in range(12)) == sorted(p for p, _ in rows)
