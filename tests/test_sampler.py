"""Order, split, rank share and crop windows: pure numpy, no DALI."""

import math

import numpy as np
import pytest

from loader.augment.recipe import EVAL_CROP_FRACTION
from loader.load.sampler import (
    crop_windows,
    epoch_order,
    num_batches,
    rank_share,
    share_size,
    split_indices,
)


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(1000, seed=3, epoch=0, shuffle=True)
    assert sorted(a.tolist()) == list(range(1000))
    assert (a == epoch_order(1000, seed=3, epoch=0, shuffle=True)).all()
    assert not (a == epoch_order(1000, seed=3, epoch=1, shuffle=True)).all()
    assert not (a == epoch_order(1000, seed=4, epoch=0, shuffle=True)).all()
    assert epoch_order(5, seed=3, epoch=7, shuffle=False).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n,world,batch", [(100, 1, 8), (100, 2, 8), (101, 3, 4), (7, 4, 1), (64, 2, 32)])
def test_rank_share_drop_last_is_disjoint_and_equal(n, world, batch):
    order = epoch_order(n, seed=0, epoch=2, shuffle=True)
    shares = [rank_share(order, r, world, batch, drop_last=True) for r in range(world)]
    lengths = {len(s) for s in shares}
    assert lengths == {(n // world) // batch * batch} == {share_size(n, world, batch, True)}
    flat = np.concatenate(shares)
    assert len(set(flat.tolist())) == len(flat)          # disjoint
    assert set(flat.tolist()) <= set(range(n))


@pytest.mark.parametrize("n,world", [(10, 1), (10, 2), (11, 2), (10, 3), (2, 3)])
def test_rank_share_without_drop_last_covers_everything(n, world):
    order = epoch_order(n, seed=1, epoch=0, shuffle=True)
    shares = [rank_share(order, r, world, 4, drop_last=False) for r in range(world)]
    assert {len(s) for s in shares} == {math.ceil(n / world)} == {share_size(n, world, 4, False)}
    flat = np.concatenate(shares).tolist()
    assert set(flat) == set(range(n))
    # Only the wrap-around padding repeats, and only when n does not divide.
    assert len(flat) - n == math.ceil(n / world) * world - n
    if world == 1:
        assert flat == order.tolist()


def test_num_batches():
    assert num_batches(100, 8, drop_last=True) == 12
    assert num_batches(100, 8, drop_last=False) == 13
    assert num_batches(96, 8, drop_last=False) == 12


def test_split_is_disjoint_complete_and_stable():
    tr = split_indices(1000, 0.2, "training", seed=5)
    va = split_indices(1000, 0.2, "validation", seed=5)
    assert len(va) == 200 and len(tr) == 800
    assert not set(tr.tolist()) & set(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    assert (va == split_indices(1000, 0.2, "validation", seed=5)).all()
    assert not (va == split_indices(1000, 0.2, "validation", seed=6)).all()
    assert (split_indices(7, None, None, seed=0) == np.arange(7)).all()


@pytest.mark.parametrize("kwargs", [dict(validation_split=0.0, subset="training"),
                                    dict(validation_split=1.0, subset="training"),
                                    dict(validation_split=0.2, subset="train"),
                                    dict(validation_split=None, subset="training")])
def test_split_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="validation_split|subset"):
        split_indices(10, seed=0, **kwargs)


def test_train_windows_follow_random_resized_crop():
    rng = np.random.default_rng(0)
    h = rng.integers(50, 800, 5000)
    w = rng.integers(50, 800, 5000)
    anchor, shape, flip = crop_windows(h, w, np.random.default_rng(1))
    x, y = anchor[:, 0], anchor[:, 1]
    cw, ch = shape[:, 0], shape[:, 1]
    # Inside the image, whole pixels, non-empty.
    assert (x >= 0).all() and (y >= 0).all() and (x + cw <= w).all() and (y + ch <= h).all()
    assert (cw >= 1).all() and (ch >= 1).all()
    assert (anchor == np.round(anchor)).all() and (shape == np.round(shape)).all()
    # Area fraction and aspect ratio within range, up to rounding to whole pixels.
    frac = cw * ch / (h * w)
    ratio = cw / ch
    assert frac.max() <= 1.0 + 1e-9 and np.quantile(frac, 0.01) >= 0.08 * 0.9
    assert np.quantile(ratio, 0.01) > 0.7 and np.quantile(ratio, 0.99) < 1.4
    # Flips are fair coins.
    assert 0.45 < flip.mean() < 0.55
    # Same generator state, same windows.
    a2, s2, f2 = crop_windows(h, w, np.random.default_rng(1))
    assert (a2 == anchor).all() and (s2 == shape).all() and (f2 == flip).all()


def test_train_window_fallback_for_extreme_aspect_ratio():
    # 10 x 1000: no 3/4..4/3 window fits with area >= 8%; torchvision falls back
    # to the centre crop with the ratio clamped to 4/3.
    anchor, shape, _ = crop_windows(np.array([10]), np.array([1000]), np.random.default_rng(0))
    assert shape.tolist() == [[13.0, 10.0]]
    assert anchor.tolist() == [[(1000 - 13) // 2, 0.0]]


def test_eval_window_is_the_centre_crop_of_resize_then_crop():
    anchor, shape, flip = crop_windows(np.array([400, 333, 1]), np.array([600, 500, 1]), None)
    side = np.rint(np.array([400, 333]) * EVAL_CROP_FRACTION)
    assert shape[:2, 0].tolist() == side.tolist() and shape[:2, 1].tolist() == side.tolist()
    assert anchor[0].tolist() == [(600 - 350) // 2, (400 - 350) // 2]
    assert shape[2].tolist() == [1.0, 1.0] and anchor[2].tolist() == [0.0, 0.0]
    assert flip.tolist() == [0, 0, 0]


def test_rank_positions_equal_rank_share_of_a_range_without_the_range():
    from loader.load.sampler import rank_positions

    for n in (1, 5, 17, 64):
        for world in (1, 2, 3, 8):
            for bs in (1, 4):
                for drop in (True, False):
                    for rank in range(world):
                        got = rank_positions(n, rank, world, bs, drop)
                        assert got.dtype == np.int32
                        assert got.tolist() == rank_share(np.arange(n), rank, world, bs, drop).tolist()


@pytest.mark.parametrize("n,world", [(1, 1), (7, 2), (10, 3), (11, 4), (2, 3), (101, 8)])
def test_unpadded_shares_hold_every_record_exactly_once(n, world):
    """pad=False: the shares partition the epoch (a distributed sum counts each record once);
    they differ by at most one, the longer ones first; padded shares repeat records instead."""
    from loader.load.sampler import rank_positions

    order = epoch_order(n, seed=4, epoch=1, shuffle=True)
    shares = [rank_share(order, r, world, 3, drop_last=False, pad=False) for r in range(world)]
    assert np.concatenate(shares).tolist() == order.tolist()
    sizes = [len(s) for s in shares]
    assert sizes == [share_size(n, world, 3, False, pad=False, rank=r) for r in range(world)]
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= (n % world != 0)
    assert sum(sizes) == n
    for r in range(world):
        assert rank_positions(n, r, world, 3, False, pad=False).tolist() == \
            rank_share(np.arange(n), r, world, 3, False, pad=False).tolist()
    padded = sum(len(rank_share(order, r, world, 3, drop_last=False)) for r in range(world))
    assert padded == math.ceil(n / world) * world          # > n whenever n % world: the double count
