"""Shared fixtures: tiny image folders built in tmp_path (fast, deterministic)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loader.synthetic import photo_like_image

REPO = Path(__file__).resolve().parents[1]

# Ray reads these when first imported (tests/raycluster.py): set after that, a driver on this machine
# never reaches a cluster bound to 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (64, 48), quality: int = 90, label: int = 0) -> bytes:
    """A small photo-like JPEG (width, height = size)."""
    buf = io.BytesIO()
    photo_like_image(seed, label, 4, size=size).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """SRC with 3 classes x 3 JPEGs, one of them nested; names chosen so
    sorting matters (``b_dog`` before ``c_cat``; ``a_bird`` first)."""
    src = tmp_path / "src"
    for label, cls in enumerate(["a_bird", "b_dog", "c_cat"]):
        for i in range(3):
            sub = "deep/er/" if (label, i) == (1, 2) else ""
            write(src / cls / f"{sub}img_{i}.jpg", jpeg_bytes(seed=10 * label + i, label=label))
    return src


def pack_jpeg_classes(root: Path, *, classes: int, per_class: int, shards: int, seed_step: int,
                      size: tuple[int, int]) -> Path:
    """Pack ``classes x per_class`` small photo-like JPEGs (record ``i`` of class ``c`` from seed
    ``seed_step * c + i``, ``size`` pixels) into ``shards`` shards at ``root/packed``; return it."""
    import loader

    for label in range(classes):
        for i in range(per_class):
            write(root / "src" / f"c{label}" / f"{i:02d}.jpg", jpeg_bytes(seed=seed_step * label + i, size=size,
                                                                          label=label))
    loader.pack(root / "src", root / "packed", shards=shards, workers=1, progress=False)
    return root / "packed"


def pack_small_images(root: Path, classes: int, per_class: int, base: tuple[int, int]) -> Path:
    """Pack ``classes x per_class`` small solid JPEGs, each of its own size (``base`` + (i, class)),
    into ``root/packed``; return it."""
    from PIL import Image

    import loader

    for c in range(classes):
        d = root / "src" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (base[0] + i, base[1] + c), (15 * i % 256, 80 * c % 256, 90)).save(d / f"{i}.jpg")
    loader.pack(root / "src", root / "packed", workers=1, progress=False)
    return root / "packed"


def pack_photo_dataset(root: Path, *, classes: int, per_class: int, seed: int, workers: int) -> Path:
    """Generate ``classes x per_class`` photo-like JPEGs under ``root/src``, pack them into
    ``root/packed`` and return it."""
    import loader
    from loader.synthetic import make_dataset

    make_dataset(root / "src", classes=classes, per_class=per_class, seed=seed, workers=workers)
    loader.pack(root / "src", root / "packed", workers=workers, progress=False)
    return root / "packed"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m loader ARGS`` in a subprocess (from the repo root)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "loader", *args], capture_output=True, text=True,
                          check=False, cwd=REPO, env=env, timeout=timeout)


@pytest.fixture
def make_jpeg():
    """``make_jpeg(seed=0, size=(w, h), quality=90) -> bytes``."""
    return jpeg_bytes


@pytest.fixture
def loader_cli():
    """``loader_cli(*args) -> CompletedProcess`` running ``python -m loader``."""
    return run_cli


def edit_columns(dst: Path, **changes) -> None:
    """Rewrite per-record columns of the version 3 index at ``dst``: ``name=fn(values) -> values``
    (the damage a test needs: a lying size, a blessed checksum)."""
    import numpy as np

    from loader.format.manifest import COLUMNS

    for name, fn in changes.items():
        path = dst / COLUMNS[name][0]
        np.save(path, np.asarray(fn(np.load(path).copy()), dtype=COLUMNS[name][1]))


def replace_records(dst: Path, new: dict[int, bytes]) -> None:
    """Store ``new[i]`` as record ``i``'s bytes inside its LMDB value (a block of records),
    keeping the index's offsets and lengths true; checksums are left as they were."""
    import lmdb
    import numpy as np

    import loader
    from loader.format.shards import record_key

    ds = loader.open_dataset(dst)
    m = ds.manifest
    keys, offsets, lengths = m.keys.copy(), m.offsets.astype(np.int64), m.lengths.astype(np.int64)
    shard_of = {i: ds.locate(i)[0] for i in new}
    ds.close()
    firsts = np.array([s.first for s in m.shards])
    shard_idx = np.searchsorted(firsts, np.arange(len(keys)), side="right") - 1
    for i in sorted(new, reverse=True):      # later records first: earlier offsets stay valid
        env = lmdb.open(str(dst / shard_of[i]), subdir=False, lock=False)
        with env.begin(write=True) as txn:
            value = txn.get(record_key(int(keys[i])))
            a, b = int(offsets[i]), int(offsets[i] + lengths[i])
            txn.put(record_key(int(keys[i])), value[:a] + new[i] + value[b:])
        env.close()
        same = (shard_idx == shard_idx[i]) & (keys == keys[i]) & (offsets > offsets[i])
        offsets[same] += len(new[i]) - lengths[i]
        lengths[i] = len(new[i])
    edit_columns(dst, offsets=lambda _: offsets, lengths=lambda _: lengths)


def record_bytes(ds) -> list[bytes]:
    """Every record of the dataset ``ds``, in order, as bytes (one read_batch)."""
    import numpy as np

    return [a.tobytes() for a in ds.read_batch(np.arange(len(ds)))]


def epoch_batches(ld, epochs: int = 2) -> list:
    """``epochs`` epochs of the loader ``ld`` (set_epoch 0, 1, ...) as a list of cloned (images, labels)."""
    out = []
    for epoch in range(epochs):
        ld.set_epoch(epoch)
        out += [(x.clone(), y.clone()) for x, y in ld]
    return out

