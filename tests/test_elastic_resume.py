"""Resume on another world size (issue 22, item 6): a state saved after k batches on R ranks, loaded
on R' ranks with the same global batch, reads exactly the rest of the epoch: no record twice, none
missed. The planning functions are pure numpy (loader.load.sampler), so every (R, R', k) of two small
epochs is checked in seconds; one end-to-end test runs real ImageLoaders 2 ranks -> 3 ranks."""

import json
from collections import Counter

import pytest

from loader import ImageLoader
from loader.errors import ArgumentError
from loader.load.sampler import epoch_order, num_batches, rank_positions, resumed_positions, share_size
from tests.conftest import pack_small_images

WORLDS = (1, 2, 3, 4, 6, 8)
GLOBAL = 24
SEED, EPOCH = 7, 3
# (drop_last, pad): the three ways an epoch is split (pad=False needs drop_last=False).
MODES = [(False, True), (False, False), (True, True)]


def read_before(order, n, world, batch, k, drop_last, pad, segments=()):
    """Records each rank of ``world`` read in its first ``k`` batches of the part after ``segments``."""
    return [int(order[p]) for r in range(world)
            for p in resumed_positions(n, segments, r, world, batch, drop_last, pad=pad)[: k * batch]]


def shares_after(order, n, segments, world, batch, drop_last, pad):
    """Each rank's records for the rest of the epoch on ``world`` ranks."""
    return [[int(order[p]) for p in resumed_positions(n, segments, r, world, batch, drop_last, pad=pad)]
            for r in range(world)]


def whole_epoch(order, n, world, batch, drop_last, pad):
    """The records an uninterrupted epoch on ``world`` ranks reads (with pad's repeats)."""
    return [int(order[p]) for r in range(world) for p in rank_positions(n, r, world, batch, drop_last, pad=pad)]


def check_rest(order, n, world, batch, before, shares, drop_last, pad):
    """``shares`` (the new ranks' reads) are exactly what ``before`` left of the epoch."""
    after = [i for s in shares for i in s]
    if pad and not drop_last:
        # Every record once over before + after; the new ranks' shares are equal, padded by
        # wrapping around the rest: fewer repeats than ranks, all of them records of the rest.
        assert not set(before) & set(after)
        assert set(before) | set(after) == set(range(n))
        rest = len(set(after))
        assert {len(s) for s in shares} == {-(-rest // len(shares))}
        assert len(after) - rest < len(shares)
    else:
        # Multiset equality: a duplicate or a missing record fails.
        expected = Counter(range(n)) if not drop_last else Counter(whole_epoch(order, n, world, batch, True, True))
        assert Counter(before) + Counter(after) == expected
        if drop_last:           # equal whole batches on every new rank: nothing more dropped
            assert len({len(s) for s in shares}) == 1


@pytest.mark.parametrize("n", [97, 96])
@pytest.mark.parametrize("drop_last,pad", MODES)
def test_every_cut_on_every_world_size_leaves_exactly_the_rest(n, drop_last, pad):
    order = epoch_order(n, SEED, EPOCH, shuffle=True)
    cases = 0
    for world in WORLDS:
        batch = GLOBAL // world
        nb = num_batches(share_size(n, world, batch, drop_last, pad=pad), batch, drop_last)
        for k in range(1, nb):          # every mid-epoch cut (0 and nb are epoch boundaries)
            before = read_before(order, n, world, batch, k, drop_last, pad)
            for new in WORLDS:
                shares = shares_after(order, n, [(world, batch, k)], new, GLOBAL // new, drop_last, pad)
                check_rest(order, n, world, batch, before, shares, drop_last, pad)
                cases += 1
    assert cases > 100


@pytest.mark.parametrize("drop_last,pad", MODES)
def test_two_world_size_changes_in_one_epoch_still_read_each_record_once(drop_last, pad):
    """8 ranks -> 3 ranks -> 2 ranks: the state lists the parts, each splits what the last left."""
    n = 97
    order = epoch_order(n, SEED, EPOCH, shuffle=True)
    first = (8, 3, 2)
    before = read_before(order, n, 8, 3, 2, drop_last, pad)
    before += read_before(order, n, 3, 8, 1, drop_last, pad, segments=[first])
    shares = shares_after(order, n, [first, (3, 8, 1)], 2, 12, drop_last, pad)
    check_rest(order, n, 8, 3, before, shares, drop_last, pad)


def test_without_segments_the_plan_is_todays():
    """Same world size: the split is rank_positions', position for position (bit-identical resumes)."""
    for n, world, batch, drop_last, pad in [(97, 3, 8, False, True), (97, 4, 6, False, False), (96, 6, 4, True, True)]:
        for r in range(world):
            got = resumed_positions(n, (), r, world, batch, drop_last, pad=pad)
            want = rank_positions(n, r, world, batch, drop_last, pad=pad)
            assert got.dtype == want.dtype and got.tolist() == want.tolist()


# -- end to end: real ImageLoaders, 2 ranks -> 3 ranks --------------------------------------------

KW = dict(image_size=16, with_indices=True, device="cpu", seed=4)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """27 records: 2 ranks split it unevenly, so pad=True repeats one."""
    return pack_small_images(tmp_path_factory.mktemp("elastic"), classes=3, per_class=9, base=(40, 30))


def indices(batches):
    return [i for *_, idx in batches for i in idx.tolist()]


@pytest.mark.parametrize("pad", [True, False])
def test_a_state_saved_on_2_ranks_resumes_on_3_with_exactly_the_rest(ds, pad):
    kw = dict(KW, train=pad, drop_last=False, pad=pad)
    old = [ImageLoader(ds, batch_size=6, rank=r, world_size=2, **kw) for r in range(2)]
    whole = [indices(ld) for ld in old]                # the uninterrupted epoch 0 on 2 ranks
    for ld in old:
        ld.set_epoch(0)
    before, state = first_batches(old, 2)              # 2 batches on each rank, then a checkpoint
    assert state["batches_done"] == 2 and state["world_size"] == 2 and state["segments"] == []
    assert before == whole[0][:12] + whole[1][:12]

    new = [ImageLoader(ds, batch_size=4, rank=r, world_size=3, **kw) for r in range(3)]
    shares = []
    for ld in new:
        ld.load_state_dict(state)
        assert ld.state_dict()["segments"] == [[2, 6, 2]] and ld.state_dict()["batches_done"] == 0
        plan = ld.epoch_plan(0).records.tolist()        # what the loader says it will read ...
        shares.append(indices(ld))
        assert shares[-1] == plan                       # ... is what it reads
    after = [i for s in shares for i in s]
    rest = sorted(set(range(27)) - set(before))
    assert len(rest) == 3                             # 27 - 24: the saved run's last batch on each rank
    if pad:
        assert sorted(set(after)) == rest and [len(s) for s in shares] == [1, 1, 1]
    else:
        assert sorted(after) == rest
    # The next epoch is whole again, as a fresh loader on 3 ranks reads it.
    nxt = [ImageLoader(ds, batch_size=4, rank=r, world_size=3, **kw) for r in range(3)]
    for r in range(3):
        nxt[r].set_epoch(1)
        assert indices(new[r]) == indices(nxt[r])


def first_batches(loaders, k):
    """Records every rank reads in its next epoch's first ``k`` batches, and rank 0's state after them."""
    read, state = [], None
    for r, ld in enumerate(loaders):
        it = iter(ld)
        read += indices(next(it) for _ in range(k))
        if r == 0:
            state = json.loads(json.dumps(ld.state_dict()))     # through JSON, as a checkpoint
        del it
    return read, state


def test_a_state_saved_mid_resumed_part_resumes_again(ds):
    """2 ranks x 3 -> 3 ranks x 2, one batch, checkpoint -> 1 rank x 6: each record once overall."""
    kw = dict(KW, train=False, drop_last=False, pad=False)
    read, state = first_batches([ImageLoader(ds, batch_size=3, rank=r, world_size=2, **kw) for r in range(2)], 1)
    second = [ImageLoader(ds, batch_size=2, rank=r, world_size=3, **kw) for r in range(3)]
    for ld in second:
        ld.load_state_dict(state)
    more, mid = first_batches(second, 1)
    assert mid["segments"] == [[2, 3, 1]] and mid["batches_done"] == 1 and mid["world_size"] == 3
    last = ImageLoader(ds, batch_size=6, **kw)
    last.load_state_dict(mid)
    rest = indices(last)
    assert last.state_dict()["epoch"] == 1
    assert len(read) == 6 and len(more) == 6 and len(rest) == 15
    assert sorted(read + more + rest) == list(range(27))


# -- the global batch must match -----------------------------------------------------------------

@pytest.mark.parametrize("now,fix", [
    (dict(batch_size=4, world_size=2), "build it with batch_size=6"),
    (dict(batch_size=6, world_size=3), "build it with batch_size=4"),
    (dict(batch_size=2, world_size=5), "no batch_size gives 12 on world_size=5: run on a world size that "
                                       "divides 12"),
])
def test_another_global_batch_mid_epoch_names_batch_size_and_both_values(ds, now, fix):
    saver = ImageLoader(ds, batch_size=6, rank=0, world_size=2, **KW)
    it = iter(saver)
    next(it)
    state = saver.state_dict()
    del it
    with pytest.raises(ArgumentError) as e:
        ImageLoader(ds, rank=0, **now, **KW).load_state_dict(state)
    msg = str(e.value)
    assert e.value.param == "batch_size" and "\n" not in msg
    assert ("state_dict was saved in the middle of epoch 0 (after batch 1 of 2) with a global batch of 12 "
            "(batch_size=6 x world_size=2), but this loader's is "
            f"{now['batch_size'] * now['world_size']} (batch_size={now['batch_size']} x "
            f"world_size={now['world_size']}): the global batch must match to resume mid-epoch; {fix}, or "
            "resume from a state saved at an epoch's end") in msg


@pytest.mark.parametrize("segments", [[[2, 5, 1]], [[2, 6, 0]], [[2, 6]], "2x6", [[2, 6, True]]])
def test_tampered_segments_are_one_error_naming_the_key(ds, segments):
    saver = ImageLoader(ds, batch_size=6, rank=0, world_size=2, **KW)
    state = dict(saver.state_dict(), batches_done=1, segments=segments)
    with pytest.raises(ArgumentError) as e:
        ImageLoader(ds, batch_size=4, rank=0, world_size=3, **KW).load_state_dict(state)
    assert e.value.param == "state_dict" and "state_dict['segments'] must be a list of [world_size, " \
        "batch_size, batches_done] lists with batch_size x world_size = 12" in str(e.value)
