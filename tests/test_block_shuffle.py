"""``shuffle="block"``: shards permuted per epoch, records shuffled within windows of consecutive
shards, windows dealt to nodes; a pure function of (seed, epoch, shard boundaries, window, ranks),
so every rank agrees, every record is read once, and a mid-epoch resume is exact."""

import numpy as np
import pytest

from loader import ImageLoader
from loader.errors import ArgumentError
from loader.load.sampler import block_order, block_window, block_windows, epoch_order, rank_positions

SHARDS, PER_SHARD = 24, 50          # 1200 records in 24 equal shards
SHARD_OF = np.repeat(np.arange(SHARDS), PER_SHARD)


def plan(world, local, *, window=3, epoch=0, seed=7, batch=8, drop_last=False, pad=False, shard_of=SHARD_OF):
    """Each rank's records (epoch positions) of one block-shuffled epoch."""
    order = block_order(shard_of, int(shard_of.max()) + 1, seed, epoch, window, world_size=world,
                        local_world_size=local, batch_size=batch, drop_last=drop_last, pad=pad)
    n = len(shard_of)
    return order, [order[rank_positions(n, r, world, batch, drop_last, pad=pad).astype(np.int64)]
                   for r in range(world)]


def test_deterministic_from_seed_and_epoch():
    a, _ = plan(2, 2)
    b, _ = plan(2, 2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, plan(2, 2, epoch=1)[0])
    assert not np.array_equal(a, plan(2, 2, seed=8)[0])
    # the shard order changes with the epoch too
    assert not np.array_equal(block_windows(SHARDS, 7, 0, 3), block_windows(SHARDS, 7, 1, 3))


@pytest.mark.parametrize("world,local", [(1, 1), (2, 1), (2, 2), (4, 2), (4, 4)])
def test_every_record_exactly_once(world, local):
    # unequal shards, and a record count no world size divides
    shard_of = np.repeat(np.arange(7), [30, 41, 7, 55, 12, 38, 20])
    order, shares = plan(world, local, shard_of=shard_of, window=2)
    assert sorted(order.tolist()) == list(range(len(shard_of)))
    read = np.concatenate(shares)
    assert len(read) == len(shard_of) and len(np.unique(read)) == len(shard_of)


def test_equal_ddp_slices_as_a_global_shuffle():
    """pad / drop_last shares are the same lengths as the global shuffle's (the same rank split)."""
    for drop_last, pad in ((True, True), (False, True)):
        _, shares = plan(4, 2, drop_last=drop_last, pad=pad, batch=16)
        g = epoch_order(len(SHARD_OF), 7, 0, True)
        assert [len(s) for s in shares] == [
            len(g[rank_positions(len(g), r, 4, 16, drop_last, pad=pad)]) for r in range(4)]
        assert len({len(s) for s in shares}) == 1


def test_window_locality():
    """A rank reads window after window: within one window at most W shards; a batch touches at most
    W shards unless it straddles two windows (2W); the global shuffle's batch touches ~all."""
    window, batch = 3, 16
    wins = block_windows(SHARDS, 7, 0, window)
    _, shares = plan(2, 1, window=window, batch=batch)
    for share in shares:
        shard = SHARD_OF[share]
        w = wins[shard]
        changes = int((np.diff(w) != 0).sum())
        assert changes <= SHARDS // window          # each window is read in one run, never revisited
        assert len(np.unique(w)) == changes + 1
        for k in np.unique(w):
            assert len(np.unique(shard[w == k])) <= window
        touched = [len(np.unique(shard[i:i + batch])) for i in range(0, len(shard), batch)]
        assert max(touched) <= 2 * window
        assert sum(t <= window for t in touched) >= len(touched) - changes
    g = epoch_order(len(SHARD_OF), 7, 0, True)
    assert np.mean([len(np.unique(SHARD_OF[g[i:i + batch]])) for i in range(0, 600, batch)]) > 10


def test_node_aware_two_nodes_of_two_ranks():
    """2 nodes x 2 local ranks: each node's shards are about half, the two sets (nearly) disjoint, and a
    node's two ranks read the same window at the same time."""
    window = 3
    _, shares = plan(4, 2, window=window)
    node = [set(SHARD_OF[np.concatenate(shares[2 * i:2 * i + 2])].tolist()) for i in range(2)]
    assert len(node[0] & node[1]) <= window                # at most one spilled window
    assert SHARDS // 2 - window <= len(node[0]) <= SHARDS // 2 + window
    assert node[0] | node[1] == set(range(SHARDS))
    wins = block_windows(SHARDS, 7, 0, window)
    for i in range(2):
        a, b = (wins[SHARD_OF[s]] for s in shares[2 * i:2 * i + 2])
        m = min(len(a), len(b))
        assert np.mean(a[:m] == b[:m]) > 0.95               # same window, step by step


def test_window_from_cache_limit():
    assert block_window(100, 1, block_shards=None, cache_limit=12 * 64, largest_shard=64) == 6
    assert block_window(100, 1, block_shards=None, cache_limit=3 * 64, largest_shard=64) == 1
    assert block_window(100, 4, block_shards=None, cache_limit=None, largest_shard=64) == 25
    assert block_window(6, 1, block_shards=10, cache_limit=None, largest_shard=64) == 6


@pytest.fixture(scope="module")
def six_shards(tmp_path_factory):
    """36 small JPEGs packed into 6 shards."""
    from PIL import Image

    import loader

    root = tmp_path_factory.mktemp("block")
    for c in range(3):
        d = root / "src" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (24 + i, 20 + c), (20 * i % 256, 80 * c, 90)).save(d / f"{i}.jpg")
    loader.pack(root / "src", root / "packed", shards=6, workers=1, progress=False)
    return root / "packed"


def _indices(ld, batches=None):
    if batches is None:
        return [idx.tolist() for _, _, idx in ld]
    it = iter(ld)
    return [next(it)[2].tolist() for _ in range(batches)]


def test_imageloader_block_resume_mid_epoch_is_exact(six_shards, monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    kw = dict(batch_size=4, image_size=16, device="cpu", shuffle="block", block_shards=2, with_indices=True,
              seed=3, drop_last=False)
    full = ImageLoader(six_shards, **kw)
    ds = full.dataset
    shard_of = np.searchsorted([s.first for s in ds.manifest.shards], np.arange(len(ds)), side="right") - 1
    whole = _indices(full)
    flat = sum(whole, [])
    assert sorted(flat) == list(range(36))
    # windows of 2 shards: the first 12 records (one window) come from 2 shards
    assert len(set(shard_of[flat[:12]].tolist())) == 2
    part = ImageLoader(six_shards, **kw)
    first = _indices(part, batches=3)
    state = part.state_dict()
    assert (state["shuffle_mode"], state["block_shards"], state["batches_done"]) == ("block", 2, 3)
    again = ImageLoader(six_shards, **kw)
    again.load_state_dict(state)
    assert first + _indices(again) == whole
    glob = ImageLoader(six_shards, **{**kw, "shuffle": "global", "block_shards": None})
    with pytest.raises(ArgumentError, match="shuffle='block'") as info:
        glob.load_state_dict(state)
    assert info.value.param == "shuffle"
    other = ImageLoader(six_shards, **{**kw, "block_shards": 3})
    with pytest.raises(ArgumentError, match="block_shards=2") as info:
        other.load_state_dict(state)
    assert info.value.param == "block_shards"


def test_default_shuffle_is_unchanged(six_shards):
    """shuffle=True and shuffle="global" are today's order, batch for batch."""
    kw = dict(batch_size=6, image_size=16, device="cpu", with_indices=True, seed=3)
    a = _indices(ImageLoader(six_shards, **kw))
    assert a == _indices(ImageLoader(six_shards, shuffle="global", **kw))
    assert sum(a, []) == epoch_order(36, 3, 0, True).tolist()


@pytest.mark.parametrize("kwargs,param", [
    (dict(shuffle="blocks"), "shuffle"), (dict(shuffle=1), "shuffle"),
    (dict(shuffle="block", block_shards=0), "block_shards"),
    (dict(shuffle="block", block_shards="2"), "block_shards"),
    (dict(shuffle="global", block_shards=2), "block_shards"),
])
def test_bad_values_refused(six_shards, kwargs, param):
    with pytest.raises(ArgumentError) as info:
        ImageLoader(six_shards, batch_size=4, device="cpu", **kwargs)
    assert info.value.param == param and param in str(info.value)
