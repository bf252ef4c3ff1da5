"""ImageLoader on DALI's CPU backend: batches, epochs, resume, split, errors, lifecycle."""

import gc
import io
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import loader
from loader import ImageLoader
from loader.augment.recipe import IMAGENET_MEAN, IMAGENET_STD
from loader.errors import ArgumentError, DatasetError
from loader.load.sampler import crop_windows
from tests.conftest import edit_columns, pack_photo_dataset, replace_records

COLOURS = [(200, 30, 30), (30, 180, 40), (40, 50, 210)]     # class c -> RGB
SIZES = [(64, 48), (48, 64), (100, 75), (75, 100), (57, 57), (120, 40), (40, 120), (90, 66)]


@pytest.fixture(scope="module")
def colour_ds(tmp_path_factory):
    """3 classes, 8 solid-colour JPEGs each, odd sizes and aspect ratios."""
    root = tmp_path_factory.mktemp("colour")
    src = root / "src"
    for c, rgb in enumerate(COLOURS):
        d = src / f"c{c}"
        d.mkdir(parents=True)
        for i, size in enumerate(SIZES):
            Image.new("RGB", size, rgb).save(d / f"{i}.jpg", quality=95)
    dst = root / "packed"
    loader.pack(src, dst, workers=1, progress=False)
    return dst


@pytest.fixture(scope="module")
def photo_ds(tmp_path_factory):
    from loader.synthetic import make_dataset

    root = tmp_path_factory.mktemp("photo")
    make_dataset(root / "src", classes=3, per_class=14, seed=1, workers=1)
    dst = root / "packed"
    loader.pack(root / "src", dst, workers=1, progress=False)
    return dst


def indices_of(ld, epochs=1):
    out = []
    for _ in range(epochs):
        out.append([i for _, _, idx in ld for i in idx.tolist()])
    return out


# -- batches ------------------------------------------------------------------

@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.float32, True),
                                                 (torch.float16, False), (torch.uint8, True)])
def test_batch_shape_dtype_layout_device(colour_ds, dtype, channels_last):
    norm = {} if dtype != torch.uint8 else dict(mean=None, std=None)
    ld = ImageLoader(colour_ds, batch_size=5, image_size=32, dtype=dtype, channels_last=channels_last,
                     device="cpu", **norm)
    assert ld.device == torch.device("cpu")
    assert len(ld) == 24 // 5
    batches = list(ld)
    assert len(batches) == len(ld)
    for images, labels in batches:
        assert images.shape == (5, 3, 32, 32) and images.dtype == dtype
        assert images.device.type == "cpu" and labels.device.type == "cpu"
        assert labels.shape == (5,) and labels.dtype == torch.int64
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert images.is_contiguous(memory_format=fmt)
        assert set(labels.tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("train", [False, True])
def test_pixels_and_labels_are_correct(colour_ds, train):
    """Each decoded image is its class colour (within JPEG tolerance) and carries its label."""
    ld = ImageLoader(colour_ds, batch_size=4, image_size=24, train=train, mean=None, std=None,
                     dtype=torch.uint8, with_indices=True)
    ds = ld.dataset
    seen = 0
    for images, labels, idx in ld:
        for img, lab, i in zip(images, labels.tolist(), idx.tolist()):
            assert lab == int(ds.labels[i])
            assert ds.source(i).startswith(f"c{lab}/")
            mean_rgb = img.float().mean(dim=(1, 2))
            assert torch.allclose(mean_rgb, torch.tensor(COLOURS[lab], dtype=torch.float32), atol=4), \
                (ds.source(i), mean_rgb)
            seen += 1
    assert seen == (24 if not train else len(ld) * 4)


def test_normalization_matches_mean_std(colour_ds):
    ld = ImageLoader(colour_ds, batch_size=24, image_size=16, train=False, drop_last=False)
    images, labels = next(iter(ld))
    for img, lab in zip(images, labels.tolist()):
        want = (torch.tensor(COLOURS[lab]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        assert torch.allclose(img.mean(dim=(1, 2)), want.float(), atol=0.08)


def test_train_and_eval_pixels_match_the_pil_reference(photo_ds):
    """Eval batches equal resize-shorter-side + centre crop done with PIL, up to decoder rounding;
    train batches equal PIL's crop of the loader's window, bilinear resize, flip and normalization."""
    ld = ImageLoader(photo_ds, batch_size=6, image_size=48, train=False, mean=None, std=None,
                     dtype=torch.uint8, with_indices=True)
    images, _, idx = next(iter(ld))
    ds = ld.dataset
    for img, i in zip(images, idx.tolist()):
        im = Image.open(io.BytesIO(ds.read(i))).convert("RGB")
        w, h = im.size
        side = round(min(w, h) * 0.875)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        ref = np.asarray(im.resize((48, 48), Image.BILINEAR, box=box)).transpose(2, 0, 1)
        diff = np.abs(ref.astype(int) - img.numpy().astype(int))
        assert diff.mean() < 2.0, (i, diff.mean())

    # Train, a whole epoch: the windows and flips are the ones loader.load.feed draws
    # for each batch, from numpy keyed by (seed, epoch, the batch's first position).
    seed, size, bs = 3, 48, 6
    ld = ImageLoader(photo_ds, batch_size=bs, image_size=size, train=True, with_indices=True, seed=seed)
    plan = ld.epoch_plan(0)
    mean = np.array(IMAGENET_MEAN).reshape(3, 1, 1) * 255
    std = np.array(IMAGENET_STD).reshape(3, 1, 1) * 255
    flips = cropped = 0
    for b, (images, _, idx) in enumerate(ld):
        records = plan.records[b * bs:(b + 1) * bs]
        assert idx.tolist() == records.tolist()
        rng = np.random.default_rng([seed, 0, int(plan.positions[b * bs]), 0xC0])
        anchor, shape, flip = crop_windows(ds.heights[records], ds.widths[records], rng)
        for k, i in enumerate(records.tolist()):
            (x, y), (w, h) = anchor[k].astype(int), shape[k].astype(int)
            im = Image.open(io.BytesIO(ds.read(i))).convert("RGB")
            ref = im.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR)
            if flip[k]:
                ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
            want = (np.asarray(ref).transpose(2, 0, 1) - mean) / std
            # In pixel units. Measured max diff here: 0 (DALI's region decode and
            # Pillow, both libjpeg-turbo, give the same pixels; the resize is
            # Pillow's bit for bit). 1 grey level allows another libjpeg-turbo
            # build's rounding; a window off by one pixel or a wrong flip is far more.
            diff = np.abs(images[k].numpy().astype(np.float64) - want) * std
            assert diff.max() <= 1 + 1e-3, (i, diff.max())
            flips += int(flip[k])
            cropped += int(w < im.width or h < im.height)
    assert b + 1 == len(ld) == len(ds) // bs
    assert 0 < flips < len(ds) and cropped > len(ds) // 2       # both flip cases, real crops


# -- epochs -------------------------------------------------------------------

def test_train_epoch_coverage_and_order(photo_ds):
    ld = ImageLoader(photo_ds, batch_size=8, image_size=16, with_indices=True, seed=3)
    n = len(ld.dataset)
    assert len(ld) == n // 8
    e0, e1 = indices_of(ld, epochs=2)
    for e in (e0, e1):
        assert len(e) == len(ld) * 8 and len(set(e)) == len(e) and set(e) <= set(range(n))
    assert e0 != e1                                                  # reshuffled per epoch
    again = ImageLoader(photo_ds, batch_size=8, image_size=16, with_indices=True, seed=3)
    assert indices_of(again, epochs=2) == [e0, e1]                   # same seed, same orders
    other = ImageLoader(photo_ds, batch_size=8, image_size=16, with_indices=True, seed=4)
    assert indices_of(other)[0] != e0


def test_eval_covers_every_record_once_with_partial_last_batch(photo_ds):
    ld = ImageLoader(photo_ds, batch_size=8, image_size=16, train=False, with_indices=True)
    n = len(ld.dataset)
    sizes = [len(lab) for _, lab, _ in ld]
    assert len(sizes) == len(ld) == -(-n // 8) and sizes[-1] == n - 8 * (len(sizes) - 1)
    e0, e1 = indices_of(ld, epochs=2)
    assert e0 == list(range(n)) == e1


def test_same_seed_gives_bit_identical_batches(photo_ds):
    a = ImageLoader(photo_ds, batch_size=6, image_size=32, seed=9)
    b = ImageLoader(photo_ds, batch_size=6, image_size=32, seed=9)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_set_epoch_and_break_mid_epoch(photo_ds):
    ref = ImageLoader(photo_ds, batch_size=8, image_size=16, with_indices=True)
    epochs = indices_of(ref, epochs=3)
    ld = ImageLoader(photo_ds, batch_size=8, image_size=16, with_indices=True)
    for k, _ in enumerate(ld):                # abandon epoch 0 after 2 batches
        if k == 1:
            break
    assert indices_of(ld)[0] == epochs[1]     # next iter() is epoch 1, complete
    ld.set_epoch(2)
    assert indices_of(ld)[0] == epochs[2]
    ld.set_epoch(0)
    assert indices_of(ld)[0] == epochs[0]


@pytest.mark.parametrize("k", [0, 1, 3])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(photo_ds, k):
    full = ImageLoader(photo_ds, batch_size=5, image_size=24, with_indices=True, seed=2)
    list(full)                                                   # epoch 0
    expected = [(x.clone(), i.tolist()) for x, _, i in full]     # epoch 1

    run = ImageLoader(photo_ds, batch_size=5, image_size=24, with_indices=True, seed=2)
    list(run)
    it = iter(run)
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(run.state_dict()))             # survives a checkpoint file
    del it, run

    resumed = ImageLoader(photo_ds, batch_size=5, image_size=24, with_indices=True, seed=2)
    resumed.load_state_dict(state)
    rest = [(x, i.tolist()) for x, _, i in resumed]
    assert [i for _, i in rest] == [i for _, i in expected[k:]]
    for (x, _), (xe, _) in zip(rest, expected[k:]):
        assert torch.equal(x, xe)                                # same crops and flips too
    # ...and the epoch after continues as the uninterrupted run would.
    assert indices_of(resumed)[0] == indices_of(full)[0]


def test_resume_from_a_state_saved_after_the_last_batch_starts_the_next_epoch(photo_ds):
    """A checkpoint taken inside the loop after the epoch's last batch (batches_done == len(loader))
    resumes with the whole next epoch, not an empty one nor the same one again."""
    full = ImageLoader(photo_ds, batch_size=5, image_size=24, with_indices=True, seed=2)
    list(full)                                                   # epoch 0
    expected = [(x.clone(), i.tolist()) for x, _, i in full]     # epoch 1
    after = indices_of(full)[0]                                  # epoch 2

    run = ImageLoader(photo_ds, batch_size=5, image_size=24, with_indices=True, seed=2)
    it = iter(run)
    for _ in range(len(run)):
        next(it)                                                 # the generator has not finished
    state = json.loads(json.dumps(run.state_dict()))
    assert (state["epoch"], state["batches_done"]) == (0, len(run))
    del it, run

    resumed = ImageLoader(photo_ds, batch_size=5, image_size=24, with_indices=True, seed=2)
    resumed.load_state_dict(state)
    got = [(x, i.tolist()) for x, _, i in resumed]
    assert [i for _, i in got] == [i for _, i in expected] and len(got) == len(resumed)
    for (x, _), (xe, _) in zip(got, expected):
        assert torch.equal(x, xe)                                # epoch 1's crops and flips
    assert indices_of(resumed)[0] == after


def test_set_epoch_after_resume_keeps_the_position(photo_ds):
    """The DDP loop idiom `loader.set_epoch(epoch)` must not undo a restored state."""
    ref = ImageLoader(photo_ds, batch_size=5, image_size=16, with_indices=True, seed=2)
    ref.set_epoch(3)
    expected = indices_of(ref)[0]
    run = ImageLoader(photo_ds, batch_size=5, image_size=16, with_indices=True, seed=2)
    run.set_epoch(3)
    it = iter(run)
    next(it), next(it)
    state = run.state_dict()
    resumed = ImageLoader(photo_ds, batch_size=5, image_size=16, with_indices=True, seed=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)                          # same epoch: resume point kept
    assert indices_of(resumed)[0] == expected[10:]
    resumed.load_state_dict(state)
    resumed.set_epoch(4)                          # another epoch: starts at its beginning
    assert len(indices_of(resumed)[0]) == len(expected)


def test_load_state_dict_rejects_another_configuration(photo_ds):
    a = ImageLoader(photo_ds, batch_size=5, image_size=16)
    it = iter(a)
    next(it)                     # mid-epoch (an epoch boundary's state loads anywhere: tests/test_resume.py)
    b = ImageLoader(photo_ds, batch_size=6, image_size=16)
    with pytest.raises(ValueError, match="batch_size"):
        b.load_state_dict(a.state_dict())


def test_validation_split(photo_ds):
    kw = dict(batch_size=4, image_size=16, train=False, with_indices=True, validation_split=0.25, seed=7)
    tr = ImageLoader(photo_ds, subset="training", **kw)
    va = ImageLoader(photo_ds, subset="validation", **kw)
    t, v = indices_of(tr)[0], indices_of(va)[0]
    n = len(tr.dataset)
    assert len(v) == int(0.25 * n) and not set(t) & set(v) and sorted(t + v) == list(range(n))
    assert indices_of(ImageLoader(photo_ds, subset="validation", **kw))[0] == v


def test_rank_and_world_size_from_environment(photo_ds, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r1 = ImageLoader(photo_ds, batch_size=4, image_size=16, with_indices=True)
    monkeypatch.setenv("RANK", "0")
    r0 = ImageLoader(photo_ds, batch_size=4, image_size=16, with_indices=True, rank=0, world_size=2)
    monkeypatch.setenv("RANK", "1")
    assert (r0.rank, r1.rank, r0.world_size) == (0, 1, 2)
    a, b = indices_of(r0)[0], indices_of(r1)[0]
    assert len(a) == len(b) == len(r0) * 4 == (len(r0.dataset) // 2) // 4 * 4
    assert not set(a) & set(b)


def test_ranks_are_resolved_when_used_not_when_built(photo_ds, monkeypatch):
    """Trainers (Lightning) build loaders before they start the other ranks: the rank and
    world size in force when an epoch starts count, and len() follows them."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    kw = dict(batch_size=4, image_size=16, with_indices=True, seed=3)
    early = [ImageLoader(photo_ds, **kw), ImageLoader(photo_ds, **kw)]   # built alone
    pinned = ImageLoader(photo_ds, rank=0, world_size=1, **kw)
    alone = len(early[0])
    assert alone == len(pinned) == len(early[0].dataset) // 4
    monkeypatch.setenv("WORLD_SIZE", "2")                                # the "fit" starts 2 ranks
    seen = []
    for rank, ld in enumerate(early):
        monkeypatch.setenv("RANK", str(rank))
        assert (ld.rank, ld.world_size) == (rank, 2)
        assert len(ld) == (len(ld.dataset) // 2) // 4
        (idx,) = indices_of(ld)
        assert len(idx) == len(ld) * 4
        seen.append(set(idx))
    assert not seen[0] & seen[1]
    assert len(pinned) == alone and len(indices_of(pinned)[0]) == alone * 4   # explicit args keep their meaning


def test_world_size_change_mid_epoch_is_an_error(photo_ds, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    loader = ImageLoader(photo_ds, batch_size=4, image_size=16)
    it = iter(loader)
    next(it)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="world size changed from 1 to 2 in the middle of epoch 0"):
        next(it)


def test_iter_alone_does_not_start_an_epoch(photo_ds):
    """Lightning calls iter() once to check that a loader is iterable: that costs no epoch."""
    loader = ImageLoader(photo_ds, batch_size=4, image_size=16, with_indices=True, seed=5)
    for _ in range(3):
        iter(loader)
    assert loader.state_dict()["epoch"] == 0 and loader._pipe is None
    first = [b[2].tolist() for b in loader]
    again = ImageLoader(photo_ds, batch_size=4, image_size=16, with_indices=True, seed=5)
    assert first == [b[2].tolist() for b in again]


def test_trainers_set_the_epoch_through_the_sampler(photo_ds):
    """Lightning's fit and evaluation loops call ``dataloader.sampler.set_epoch(epoch)``."""
    kw = dict(batch_size=4, image_size=16, with_indices=True, seed=5)
    a, b = ImageLoader(photo_ds, **kw), ImageLoader(photo_ds, **kw)
    a.sampler.set_epoch(3)
    b.set_epoch(3)
    assert indices_of(a) == indices_of(b) and a.batch_sampler is None
    assert a.state_dict()["epoch"] == 4


# -- errors -------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=4, image_size=2), "image_size"),
    (dict(batch_size=4, dtype=torch.float64), "dtype"),
    (dict(batch_size=4, dtype=torch.uint8), "mean=None"),
    (dict(batch_size=4, mean=None), "mean and std"),
    (dict(batch_size=4, device="tpu"), "device"),
    (dict(batch_size=4, device="cuda"), "CUDA"),
    (dict(batch_size=4, prefetch=0), "prefetch"),
    (dict(batch_size=4, num_threads=0), "num_threads"),
    (dict(batch_size=4, rank=2, world_size=2), "rank"),
    (dict(batch_size=4, validation_split=0.5, subset="test"), "subset"),
    (dict(batch_size=100), "batch_size=100 is larger"),
])
def test_bad_arguments_raise_value_error_naming_them(colour_ds, kwargs, match):
    """An ArgumentError (a ValueError) at construction; every parameter: tests/test_loader_settings.py."""
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ArgumentError, match=match) as info:
        ImageLoader(colour_ds, **kwargs)
    assert isinstance(info.value, ValueError) and info.value.param in str(info.value)


def test_empty_subset_is_an_error(colour_ds):
    with pytest.raises(ArgumentError, match="leaves subset 'validation' of .* empty") as info:
        ImageLoader(colour_ds, batch_size=1, validation_split=0.01, subset="validation")
    assert info.value.param == "validation_split"


def test_not_a_packed_dataset(tmp_path):
    with pytest.raises(DatasetError, match="manifest"):
        ImageLoader(tmp_path, batch_size=4)
    with pytest.raises(DatasetError):
        ImageLoader(tmp_path / "missing", batch_size=4)


def test_unsupported_manifest_version(colour_ds, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(colour_ds, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["version"] = 999
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="999"):
        ImageLoader(copy, batch_size=4)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# DALI may crash the process (not raise) on undecodable data: every test that
# feeds it some runs DALI in a child and checks how the child ended.
EPOCHS_IN_A_CHILD = textwrap.dedent("""
    import json, sys
    from loader import ImageLoader
    from loader.load.imageloader import DecodeError
    path, kwargs, epochs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    ld = ImageLoader(path, **kwargs)
    outcomes = []
    for _ in range(epochs):
        try:
            outcomes.append(f"ok: {sum(1 for _ in ld)} batches")
        except DecodeError as e:
            outcomes.append(f"DecodeError: {e}")
    print(json.dumps(outcomes))
""")


def epochs_in_a_child(path, epochs: int = 2, **kwargs) -> list[str]:
    """Run ``epochs`` epochs of ``ImageLoader(path, **kwargs)`` in a child: each one's outcome."""
    r = subprocess.run([sys.executable, "-c", EPOCHS_IN_A_CHILD, str(path), json.dumps(kwargs), str(epochs)],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, f"the child died (rc {r.returncode}): {r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def damaged_copy(src, dst, *, zero_header=(), doubled_size=(), truncate=(), bless=False):
    """A copy of the packed dataset ``src``: records in ``zero_header`` lose their first
    64 bytes (no decoder gets past that; ``bless``: the manifest's checksums are rewritten
    to match, so only a decode can tell); records in ``doubled_size`` keep their bytes, but
    the manifest doubles their height and width; records in ``truncate`` keep their first third
    (their header included)."""
    import shutil

    from loader.format.manifest import record_checksum

    shutil.copytree(src, dst)
    ds = loader.open_dataset(dst)
    new = {v: b"\0" * 64 + ds.read(v)[64:] for v in zero_header}
    new.update({v: ds.read(v)[: len(ds.read(v)) // 3] for v in truncate})
    ds.close()
    replace_records(dst, new)
    blessed = {v: int(record_checksum(data), 16) for v, data in new.items()} if bless else {}

    def bless_them(crc):
        for victim, digest in blessed.items():
            crc[victim] = digest
        return crc

    def double(a):
        a[list(doubled_size)] *= 2
        return a

    edit_columns(dst, checksums=bless_them, heights=double, widths=double)
    return dst


def test_damaged_record_is_kept_from_dali_and_named(colour_ds, tmp_path):
    """Bytes that no longer match the manifest never reach DALI (recordguard): named at the feed."""
    copy = damaged_copy(colour_ds, tmp_path / "copy", zero_header=[5])
    ds = loader.open_dataset(copy)
    shard, key = ds.locate(5)
    for outcome in epochs_in_a_child(copy, batch_size=24, image_size=16, train=False):
        assert outcome.startswith(f"DecodeError: record 5 (shard {shard}, key {key}, source {ds.source(5)!r}) "
                                  f"failed to load: its stored bytes do not match the manifest (CRC-32 "), outcome
        assert outcome.endswith(f"): the shard is damaged; run `loader verify {copy}`"), outcome


def test_undecodable_record_names_shard_and_record(colour_ds, tmp_path):
    """A truncated record whose checksum the manifest blesses passes the guard (its header is
    intact): DALI's failure is named."""
    copy = damaged_copy(colour_ds, tmp_path / "copy", truncate=[5], bless=True)
    ds = loader.open_dataset(copy)
    shard, key = ds.locate(5)
    # The loader stays usable: the next epoch builds a fresh pipeline and fails the same way.
    first, second = epochs_in_a_child(copy, batch_size=24, image_size=16, train=False)
    for outcome in (first, second):
        assert outcome.startswith(f"DecodeError: record 5 (shard {shard}, key {key}, source {ds.source(5)!r}) "
                                  f"failed to load: DALI cannot decode it: "), outcome
        assert outcome.endswith(f"; run `loader verify {copy}`"), outcome


def test_record_whose_manifest_size_lies_is_named(colour_ds, tmp_path):
    """Its bytes decode (Pillow decodes them fine), but not at the size the crop window
    was computed from. In eval the centre window of the doubled size, [5..75] x [85..155]
    of a 40x120 image, lies partly outside the real image: DALI's slice fails every time."""
    victim = 5
    copy = damaged_copy(colour_ds, tmp_path / "copy", doubled_size=[victim])
    ds = loader.open_dataset(copy)
    assert (int(ds.heights[victim]), int(ds.widths[victim])) == (80, 240)
    with Image.open(io.BytesIO(ds.read(victim))) as im:
        im.load()                               # what the old, Pillow-based culprit search checked
        assert im.size == (120, 40)
    shard, key = ds.locate(victim)
    outcomes = epochs_in_a_child(copy, batch_size=8, image_size=16, train=False)
    assert outcomes == [f"DecodeError: record {victim} (shard {shard}, key {key}, source {ds.source(victim)!r}) "
                        f"failed to load: its header says 40x120 but the manifest says 80x240 (height x width); "
                        f"run `loader verify {copy}`"] * 2


DECODE_CHECK_IN_A_CHILD = textwrap.dedent("""
    import json, sys
    from loader import open_dataset
    from loader.check.decodecheck import DecodeCheck
    ds = open_dataset(sys.argv[1])
    # batch_size 4: the bad records' batches fail and are retried one record
    # at a time, the others decode in one run.
    print(json.dumps(DecodeCheck(batch_size=4).check(ds, range(len(ds)))))
""")


def test_decode_check_names_undecodable_and_wrong_size_records(colour_ds, tmp_path):
    copy = damaged_copy(colour_ds, tmp_path / "copy", zero_header=[2, 3], doubled_size=[9, 23])
    r = subprocess.run([sys.executable, "-c", DECODE_CHECK_IN_A_CHILD, str(copy)], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, f"the child died (rc {r.returncode}): {r.stderr[-3000:]}"
    bad = json.loads(r.stdout.strip().splitlines()[-1])
    assert [i for i, _ in bad] == [2, 3, 9, 23]
    assert all(reason.startswith("DALI cannot decode it: ") for _, reason in bad[:2]), bad
    # SIZES[1] is 48x64 (w x h), SIZES[7] 90x66.
    assert [reason for _, reason in bad[2:]] == ["decodes to 64x48 but the manifest says 128x96 (height x width)",
                                                 "decodes to 66x90 but the manifest says 132x180 (height x width)"]


# -- lifecycle ------------------------------------------------------------------

def _native_threads():
    return len(os.listdir("/proc/self/task"))


def test_no_thread_leak_over_many_loaders_and_epochs(photo_ds):
    def cycle():
        ld = ImageLoader(photo_ds, batch_size=8, image_size=16, num_threads=2)
        for _ in range(3):
            for _ in ld:
                pass
        ld.close()
        del ld
        gc.collect()

    def python_threads():
        # DALI's native threads that ran Python code show up as threading._DummyThread
        # entries, which CPython never removes: count real Python threads only.
        return sum(not isinstance(t, threading._DummyThread) for t in threading.enumerate())

    cycle()                                   # warm-up: torch/DALI global pools
    py0, native0 = python_threads(), _native_threads()
    for _ in range(5):
        cycle()
    assert python_threads() <= py0
    assert _native_threads() <= native0 + 2


def test_gpu_graph_places_decode_on_mixed_and_everything_after_on_gpu():
    """Without CUDA the GPU pipeline can't be built, but its graph can be defined and inspected."""
    from nvidia.dali.pipeline import Pipeline

    from loader.load.pipeline import image_graph

    with Pipeline(batch_size=4, num_threads=1, device_id=0):
        images, labels, indices, _ = image_graph(iter(()), device="gpu", image_size=32,
                                                 mean=[0, 0, 0], std=[1, 1, 1])
    assert images.device == "gpu" and labels.device == "gpu"
    chain = []
    node = images
    while True:
        op = node.source._op
        chain.append((op.schema_name, op.device, node.device))
        if op.schema_name.startswith("decoders__") or op.schema_name == "ExternalSource":
            break
        node = node.source.inputs[0]
    names = [c[0] for c in chain]
    assert names == ["CropMirrorNormalize", "Resize", "decoders__ImageSlice"], chain
    assert chain[-1][1] == "mixed" and chain[-1][2] == "gpu"          # nvJPEG decode
    assert all(dev == "gpu" and out == "gpu" for _, dev, out in chain[:-1])

    # The same function defines the CPU graph: decode on the CPU, the crops and
    # flips handed to CpuFinisher.
    with Pipeline(batch_size=4, num_threads=1, device_id=None):
        crops, labels, _, flips, _, _ = image_graph(iter(()), device="cpu", image_size=32)
    assert crops.source._op.schema_name == "decoders__ImageSlice" and crops.source._op.device == "cpu"
    assert crops.device == "cpu" and labels.device == "cpu" and flips.device == "cpu"


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def test_memory_stays_flat_over_20_epochs(photo_ds, capsys):
    ld = ImageLoader(photo_ds, batch_size=8, image_size=64, num_threads=2)
    rss = []
    for _ in range(20):
        for _ in ld:
            pass
        gc.collect()
        rss.append(_rss_mb())
    with capsys.disabled():
        print(f"\nRSS over 20 epochs (MB): first {rss[0]:.1f}, epoch 5 {rss[4]:.1f}, last {rss[-1]:.1f}, "
              f"max {max(rss):.1f}")
    # After warm-up, no growth beyond allocator noise (a batch here is 0.4 MB).
    assert rss[-1] - rss[4] < 16, rss


def test_held_batches_are_never_overwritten(photo_ds):
    """Batch buffers are recycled only once nobody holds them (BatchBuffers)."""
    kept = list(ImageLoader(photo_ds, batch_size=4, image_size=32, seed=5))       # hold them all
    cloned = [(x.clone(), y.clone()) for x, y in ImageLoader(photo_ds, batch_size=4, image_size=32, seed=5)]
    assert len(kept) == len(cloned) == len(ImageLoader(photo_ds, batch_size=4, image_size=32))
    assert len({x.data_ptr() for x, _ in kept}) == len(kept)
    for (x, y), (xc, yc) in zip(kept, cloned):
        assert torch.equal(x, xc) and torch.equal(y, yc)


def test_batch_buffers_reuse_only_free_storage():
    from loader.load.buffers import BatchBuffers

    pool = BatchBuffers(capacity=2)
    cpu = torch.device("cpu")
    a = pool.take((4, 4), torch.float32, cpu)
    view = a[1:]                                   # a view alone keeps the storage busy
    ptr = a.data_ptr()
    del a
    b = pool.take((4, 4), torch.float32, cpu)
    assert b.data_ptr() != ptr
    ptr_b = b.data_ptr()
    del view, b                                    # both buffers free again: reused, none allocated
    bases = {t.data_ptr() for t in pool._pool}
    assert bases == {ptr, ptr_b}
    c = pool.take((4, 4), torch.float32, cpu)
    d = pool.take((4, 4), torch.float32, cpu)
    assert {c.data_ptr(), d.data_ptr()} == {ptr, ptr_b}


# -- the damage table of issue 12: an exception naming the record, every seed, never a signal -------

SEEDS_IN_A_CHILD = textwrap.dedent("""
    import json, sys
    from loader import ImageLoader
    from loader.load.imageloader import DecodeError
    path, configs = sys.argv[1], json.loads(sys.argv[2])
    out = []
    for kw in configs:
        ld = ImageLoader(path, image_size=32, **kw)
        for _ in range(2):
            try:
                out.append(f"ok: {sum(1 for _ in ld)} batches")
            except DecodeError as e:
                out.append(f"DecodeError: {e}")
        ld.close()
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def photo120(tmp_path_factory):
    return pack_photo_dataset(tmp_path_factory.mktemp("photo120"), classes=4, per_class=30, seed=2, workers=2)


def _damage(src, dst, kind):
    """The four damages of issue 12's table; returns the records that must be named (None: any)."""
    import shutil


    shutil.copytree(src, dst)
    ds = loader.open_dataset(dst)
    if kind == "heights-x3":
        edit_columns(dst, heights=lambda h: 3 * h)
        named = None
    elif kind == "one-size-doubled":
        def double(a):
            a[17] *= 2
            return a
        edit_columns(dst, heights=double, widths=double)
        named = {17}
    else:
        victims = [3, 50, 97] if kind == "three-truncated" else [40]
        new = {}
        for v in victims:
            data = ds.read(v)
            new[v] = data[: len(data) // 3] if kind == "three-truncated" else b"\0\0\0\0" + data[4:]
        ds.close()
        replace_records(dst, new)
        named = set(victims)
    ds.close()
    return named


@pytest.mark.parametrize("kind", ["heights-x3", "one-size-doubled", "three-truncated", "first-4-bytes-zeroed"])
def test_damaged_datasets_raise_naming_the_record_for_every_seed(photo120, tmp_path, kind):
    """Before recordguard, this table crashed the process with SIGSEGV in most seeds (DALI 2.4)."""
    copy = tmp_path / "copy"
    named = _damage(photo120, copy, kind)
    configs = [{"batch_size": b, "seed": s, "train": train} for b in (8, 16) for s in range(4)
               for train in (True, False)]
    r = subprocess.run([sys.executable, "-c", SEEDS_IN_A_CHILD, str(copy), json.dumps(configs)], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, f"the child died (rc {r.returncode}): {r.stderr[-3000:]}"
    outcomes = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(outcomes) == 2 * len(configs)
    why = {"heights-x3": "its header says", "one-size-doubled": "its header says",
           "three-truncated": "its stored bytes do not match the manifest",
           "first-4-bytes-zeroed": "its stored bytes do not match the manifest"}[kind]
    failed = 0
    for outcome in outcomes:
        if outcome.startswith("ok: "):   # train drops a remainder: the damaged record may not be in it
            assert kind != "heights-x3"
            continue
        failed += 1
        assert outcome.startswith("DecodeError: record ") and f"failed to load: {why}" in outcome, outcome
        record = int(outcome.split()[2])
        assert named is None or record in named, outcome
        assert outcome.endswith(f"; run `loader verify {copy}`")
    assert failed >= len(configs)        # eval reads every record: each eval epoch fails


REPLACE_IN_A_CHILD = textwrap.dedent("""
    import json, sys, warnings
    from loader import ImageLoader
    path, kw = sys.argv[1], json.loads(sys.argv[2])
    out = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ld = ImageLoader(path, image_size=32, with_indices=True, on_error="replace", **kw)
        epochs = [[(idx.tolist(), labels.tolist(), list(images.shape)) for images, labels, idx in ld]
                  for _ in range(2)]
    print(json.dumps({"epochs": epochs, "bad": ld.bad_records, "len": len(ld),
                      "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}))
""")


@pytest.mark.parametrize("seed, batch_size, train", [(0, 8, True), (3, 16, True), (1, 16, False)])
def test_on_error_replace_keeps_batches_full_and_reports_the_bad_records(photo120, tmp_path, seed, batch_size,
                                                                         train):
    copy = tmp_path / "copy"
    bad = sorted(_damage(photo120, copy, "three-truncated"))          # records 3, 50, 97
    kw = {"batch_size": batch_size, "seed": seed, "train": train}

    def run():
        r = subprocess.run([sys.executable, "-c", REPLACE_IN_A_CHILD, str(copy), json.dumps(kw)], cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300,
                           check=False)
        assert r.returncode == 0, f"the child died (rc {r.returncode}): {r.stderr[-3000:]}"
        return json.loads(r.stdout.strip().splitlines()[-1])

    got = run()
    clean = ImageLoader(photo120, image_size=32, **kw)
    ds = loader.open_dataset(copy)
    for e, batches in enumerate(got["epochs"]):
        plan = clean.epoch_plan(e).records.tolist()
        seen = [i for idx, _, _ in batches for i in idx]
        assert len(batches) == got["len"] == len(clean)
        assert all(shape[0] == len(idx) for idx, _, shape in batches)
        assert len(seen) == len(plan) and not set(seen) & set(bad)    # full batches, never a bad record
        for k, (want, have) in enumerate(zip(plan, seen)):
            if want in bad:                                            # the next good record of the plan
                j = next(plan[(k + s) % len(plan)] for s in range(1, len(plan)) if plan[(k + s) % len(plan)]
                         not in bad)
                assert have == j
            else:
                assert have == want
        labels = [lab for _, labs, _ in batches for lab in labs]
        assert labels == [int(ds.labels[i]) for i in seen]
    met = sorted({i for e in range(2) for i in clean.epoch_plan(e).records.tolist()} & set(bad))
    assert got["bad"] == met and met
    assert len(got["warnings"]) == len(met)                            # once per bad record
    assert all("is damaged: its stored bytes do not match the manifest" in w for w in got["warnings"])
    assert run() == got                                                # deterministic


def test_on_error_must_be_raise_or_replace(colour_ds):
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'replace', got 'skip'"):
        ImageLoader(colour_ds, batch_size=4, on_error="skip")
