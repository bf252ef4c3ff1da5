"""`loader show`: the PNG grid holds exactly the batch the model sees, denormalized, with its labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import loader
from loader.check.show import show
from loader.errors import ArgumentError
from tests.conftest import pack_photo_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    return pack_photo_dataset(tmp_path_factory.mktemp("show"), classes=3, per_class=7, seed=3, workers=1)


def reference_batch(packed, epoch, batch, **kw):
    """Batch ``batch`` of ``epoch`` by plain iteration (no resume), raw uint8 pixels (no
    normalization): what the grid's tiles must show."""
    ref = loader.ImageLoader(packed, 4, device="cpu", with_indices=True, dtype=torch.uint8, mean=None, std=None,
                             **kw)
    ref.set_epoch(epoch)
    for k, out in enumerate(ref):
        if k == batch:
            return out
    raise AssertionError("batch not reached")


@pytest.mark.parametrize("train", [True, False])
def test_grid_tiles_are_the_batch_denormalized_with_its_labels(packed, tmp_path, train):
    epoch, batch = 2, 1
    images, targets, idx = reference_batch(packed, epoch, batch, train=train)
    out = tmp_path / "grid.png"
    grid = show(packed, epoch=epoch, batch=batch, batch_size=4, train=train, path=out)
    png = np.asarray(Image.open(out).convert("RGB"))
    tiles = grid.info["tiles"]
    ds = loader.open_dataset(packed)
    assert [t.record for t in tiles] == idx.tolist()
    assert [t.labels for t in tiles] == [ds.classes[int(t)] for t in targets]
    assert [t.source for t in tiles] == [ds.source(int(i)) for i in idx]
    for t, want in zip(tiles, images):
        left, top, right, bottom = t.box
        got = png[top:bottom, left:right].astype(np.int16)
        diff = np.abs(got - want.permute(1, 2, 0).numpy().astype(np.int16))
        assert diff.max() <= 1, (t, diff.max())


def test_soft_targets_of_a_batch_transform_are_captioned_top_two(packed):
    lam = 0.7

    def mix(images, targets, generator):
        onehot = torch.nn.functional.one_hot(targets, 3).float()
        return lam * images + (1 - lam) * images.flip(0), lam * onehot + (1 - lam) * onehot.flip(0)

    _, targets, _ = reference_batch(packed, 0, 0)
    grid = show(packed, batch_size=4, batch_transform=mix)
    ds = loader.open_dataset(packed)
    names = [ds.classes[int(t)] for t in targets]
    want = []
    for a, b in zip(names, names[::-1]):
        want.append(f"{a} 1.00" if a == b else f"{a} 0.70 {b} 0.30")
    assert [t.labels for t in grid.info["tiles"]] == want


def test_an_existing_loader_keeps_its_position(packed):
    L = loader.ImageLoader(packed, 4, device="cpu", with_indices=True)
    it = iter(L)
    next(it)
    before = L.state_dict()
    show(L, epoch=1, batch=2)
    assert L.state_dict() == before


def test_unlabeled_pack_captions_record_indices(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    for i in range(5):
        Image.new("RGB", (40 + i, 30), (40 * i, 90, 20)).save(src / f"{i}.jpg")
    loader.pack(src, tmp_path / "u.packed", unlabeled=True, workers=1, progress=False)
    grid = show(tmp_path / "u.packed", batch_size=5, train=False, image_size=32)
    tiles = grid.info["tiles"]
    assert [t.labels for t in tiles] == [f"record {t.record}" for t in tiles]
    assert sorted(t.record for t in tiles) == [0, 1, 2, 3, 4]


def test_past_the_end_and_bad_arguments_are_one_line_naming_them(packed):
    with pytest.raises(ArgumentError, match=r"batch=99 is past the end of epoch 0: it has 5 batches") as e:
        show(packed, batch=99, batch_size=4)
    assert e.value.param == "batch"
    with pytest.raises(ArgumentError, match="epoch must be an int >= 0") as e:
        show(packed, epoch=-1)
    assert e.value.param == "epoch"


def test_compare_torchvision_without_torchvision_says_so(packed):
    code = ("import sys; sys.modules['torchvision'] = None\n"
            "from loader.check.show import show\n"
            f"g = show({str(packed)!r}, batch_size=2, compare_torchvision=True)\n"
            "print(g.info['torchvision'], len(g.info['tiles']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["not", "importable", "2"]
def test_cli_writes_the_default_path_outside_the_dataset(packed, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loader", "show", str(packed), "--batch-size", "4", "--epoch", "1",
                           "--batch", "2", "--json", "-"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = tmp_path / f"show-{packed.name}-e1-b2.png"
    assert want.is_file() and not list(packed.glob("*.png"))
    report = json.loads(proc.stdout)
    assert report["path"] == str(want) and len(report["tiles"]) == 4
    _, targets, idx = reference_batch(packed, 1, 2)
    assert [t["record"] for t in report["tiles"]] == idx.tolist()


def test_cli_past_the_end_is_one_line_exit_2(packed, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loader", "show", str(packed), "--batch-size", "4", "--batch", "7"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "--batch=7 is past the end of epoch 0: it has 5 batches" in lines[-1]
    assert not list(tmp_path.glob("*.png"))


def test_cli_batch_transform_factory_gives_soft_target_captions(packed, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loader", "show", str(packed), "--batch-size", "4", "--json", "-",
                           "--out", str(tmp_path / "g.png"), "--batch-transform", "scripts.mixup_cutmix:MixupCutmix"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = [t["labels"] for t in json.loads(proc.stdout)["tiles"]]
    # Mixup/CutMix rows: two classes with weights summing to 1 (or one class at 1.00).
    for text in labels:
        parts = text.split()
        weights = [float(w) for w in parts[1::2]]
        assert 1 <= len(weights) <= 2 and abs(sum(weights) - 1) < 0.02, text


def test_cli_bad_batch_transform_is_one_line_naming_the_flag(packed, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loader", "show", str(packed), "--batch-transform", "nosuch:f"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --batch-transform nosuch:f: cannot import 'nosuch'")


def test_multi_label_pack_captions_every_class_of_the_record(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    rows = ["path,label"]
    sets = ["a", "a|b", "c", "b|c", "a|b|c", "b"]
    for i, labels in enumerate(sets):
        Image.new("RGB", (40, 30 + i), (40 * i, 90, 20)).save(src / f"{i}.jpg")
        rows.append(f"{i}.jpg,{labels}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    loader.pack(src, tmp_path / "m.packed", labels=tmp_path / "labels.csv", workers=1, progress=False)
    grid = show(tmp_path / "m.packed", batch_size=6, train=False, image_size=32)
    ds = loader.open_dataset(tmp_path / "m.packed")
    want = {i: "|".join(sorted(s.split("|"))) for i, s in enumerate(sets)}
    by_source = {int(Path(t.source).stem): t.labels for t in grid.info["tiles"]}
    assert by_source == want and ds.multi_label
