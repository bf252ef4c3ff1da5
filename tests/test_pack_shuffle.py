"""``pack(shuffle_seed=...)`` / ``loader pack --shuffle-seed``: the same records in a seeded order, byte for byte
reproducible, multi-label rows following their records; and the warning of ``shuffle="block"`` on a
class-sorted pack."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import loader
from loader.errors import ArgumentError
from loader.rng import PACK_ORDER
from tests.conftest import jpeg_bytes, run_cli, write


@pytest.fixture
def photos(tmp_path):
    src = tmp_path / "src"
    for label in range(3):
        for i in range(7):
            write(src / f"c{label}" / f"{i}.jpg", jpeg_bytes(seed=10 * label + i, label=label))
    return src


def _records(path):
    ds = loader.open_dataset(path)
    return [(ds.source(i), int(ds.labels[i]), ds.read(i)) for i in range(len(ds))]


def _files(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_seeded_order_same_records_reproducible(photos, tmp_path):
    loader.pack(photos, tmp_path / "sorted", shards=3, workers=1, progress=False)
    loader.pack(photos, tmp_path / "a", shards=3, workers=1, progress=False, shuffle_seed=7)
    loader.pack(photos, tmp_path / "b", shards=3, workers=2, progress=False, shuffle_seed=7)
    loader.pack(photos, tmp_path / "c", shards=3, workers=1, progress=False, shuffle_seed=8)
    base, a, c = _records(tmp_path / "sorted"), _records(tmp_path / "a"), _records(tmp_path / "c")
    # The records of the sorted pack, in the documented seeded permutation of its order.
    perm = np.random.default_rng([7, PACK_ORDER]).permutation(len(base))
    assert a == [base[j] for j in perm]
    assert sorted(c) == sorted(base) and c != a
    assert _files(tmp_path / "a") == _files(tmp_path / "b")          # byte for byte, whatever the workers
    m = loader.open_dataset(tmp_path / "a").manifest
    assert m.pack_params["shuffle_seed"] == 7
    assert "shuffle_seed" not in loader.open_dataset(tmp_path / "sorted").manifest.pack_params
    # Every shard mixes the classes (a class-sorted pack of 3 shards has one class per shard).
    ds = loader.open_dataset(tmp_path / "a")
    assert all(len(set(ds.labels[s.first:s.first + s.records].tolist())) > 1 for s in m.shards)


def test_multi_label_rows_follow_their_records(photos, tmp_path):
    rows = [("c0/0.jpg", "c0|c1"), ("c1/3.jpg", "c2"), ("c2/6.jpg", "c0|c1|c2"), ("c0/5.jpg", "c1"),
            ("c2/1.jpg", "c0|c2")]
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    loader.pack(photos, tmp_path / "ml", labels=labels, workers=1, progress=False, shuffle_seed=3)
    ds = loader.open_dataset(tmp_path / "ml")
    classes = ds.manifest.classes
    hot = ds.multi_hot(np.arange(len(ds)))
    got = {ds.source(i): {classes[k] for k in np.flatnonzero(hot[i])} for i in range(len(ds))}
    assert got == {p: set(lab.split("|")) for p, lab in rows}
    perm = np.random.default_rng([3, PACK_ORDER]).permutation(len(rows))
    assert [ds.source(i) for i in range(len(ds))] == [rows[j][0] for j in perm]


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "3", True])
def test_bad_seed_refused_naming_it(photos, tmp_path, bad):
    with pytest.raises(ArgumentError) as e:
        loader.pack(photos, tmp_path / "x", progress=False, shuffle_seed=bad)
    assert e.value.param == "shuffle_seed" and "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


def test_cli_flag(photos, tmp_path):
    r = run_cli("pack", str(photos), str(tmp_path / "d0"), "--shuffle-seed", "0", "--quiet", "--workers", "1")
    assert r.returncode == 0, r.stderr
    r = run_cli("pack", str(photos), str(tmp_path / "d5"), "--shuffle-seed", "5", "--quiet", "--workers", "1")
    assert r.returncode == 0, r.stderr
    seeds = [json.loads((tmp_path / d / "manifest.json").read_text())["pack_params"]["shuffle_seed"]
             for d in ("d0", "d5")]
    assert seeds == [0, 5]


def test_block_shuffle_warns_on_a_class_sorted_pack_only(photos, tmp_path):
    loader.pack(photos, tmp_path / "sorted", shards=3, workers=1, progress=False)
    loader.pack(photos, tmp_path / "mixed", shards=3, workers=1, progress=False, shuffle_seed=0)
    with pytest.warns(UserWarning, match="--shuffle-seed"):
        loader.ImageLoader(tmp_path / "sorted", batch_size=2, shuffle="block", device="cpu", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.ImageLoader(tmp_path / "mixed", batch_size=2, shuffle="block", device="cpu", seed=0)
        loader.ImageLoader(tmp_path / "sorted", batch_size=2, shuffle=True, device="cpu", seed=0)
