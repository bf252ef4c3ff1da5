"""Resume is exactly as strict as it must be (loader.load.state): an epoch-boundary state loads into
any loader of the dataset, a mid-epoch one names what differs, another dataset or a tampered state
is one ArgumentError, a seed=None loader resumes exactly, one loader runs one epoch at a time."""

import json

import pytest
import torch

from loader import ImageLoader
from loader.errors import ArgumentError, ConcurrentEpochError
from loader.load.state import dataset_fingerprint
from tests.conftest import pack_small_images

KW = dict(image_size=16, with_indices=True, device="cpu")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """27 records (odd: 2 ranks split it unevenly)."""
    return pack_small_images(tmp_path_factory.mktemp("resume"), classes=3, per_class=9, base=(40, 30))


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """Another dataset with the same record count, classes and image sizes: only the pixels differ."""
    from PIL import Image

    import loader

    root = tmp_path_factory.mktemp("twin")
    for c in range(3):
        d = root / "src" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(9):
            Image.new("RGB", (40 + i, 30 + c), (200 - 15 * i, 40 * c, 10)).save(d / f"{i}.jpg")
    loader.pack(root / "src", root / "packed", workers=1, progress=False)
    return root / "packed"


def indices(ld):
    return [i for *_, idx in ld for i in idx.tolist()]


def stop_after(ld, k):
    """A state saved inside the loop after ``k`` batches of the loader's next epoch (through JSON, as a checkpoint)."""
    it = iter(ld)
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(ld.state_dict()))
    del it
    return state


# -- 14: an epoch boundary loads anywhere; mid-epoch names what differs ---------------------------

@pytest.mark.parametrize("where", ["end", "start"])
def test_an_epoch_boundary_state_loads_into_any_loader_of_the_dataset(ds, where):
    saver = ImageLoader(ds, batch_size=5, seed=2, **KW)
    saver.set_epoch(3)
    state = stop_after(saver, len(saver)) if where == "end" else saver.state_dict()
    assert state["batches_done"] == (len(saver) if where == "end" else 0)
    nxt = 4 if where == "end" else 3                     # "start epoch e + 1" / "start epoch e"
    other = dict(batch_size=4, seed=9, shuffle=False, rank=1, world_size=2)
    ref = ImageLoader(ds, **other, **KW)
    ref.set_epoch(nxt)
    expected = indices(ref)
    resumed = ImageLoader(ds, **other, **KW)
    resumed.load_state_dict(state)                       # 0.3: ValueError (seed, batch_size, num_samples ...)
    assert resumed.state_dict()["epoch"] == nxt and resumed.seed == 9     # a given seed is kept
    assert indices(resumed) == expected


@pytest.mark.parametrize("change,saved,now", [
    (dict(seed=3), "seed=2", "seed=3"),
    (dict(shuffle=False), "shuffle=True", "shuffle=False"),
])
def test_a_mid_epoch_state_names_the_parameter_that_differs(ds, change, saved, now):
    state = stop_after(ImageLoader(ds, batch_size=5, seed=2, **KW), 2)
    kw = dict(dict(batch_size=5, seed=2, **KW), **change)
    with pytest.raises(ArgumentError) as e:
        ImageLoader(ds, **kw).load_state_dict(state)
    msg = str(e.value)
    # 0.3 said "num_samples=13, loader has 6" for a changed world size.
    assert f"saved in the middle of epoch 0 (after batch 2 of 5) with {saved}, but this loader has {now}" in msg
    assert "num_samples" not in msg and e.value.param == "state_dict" and "\n" not in msg


@pytest.mark.parametrize("change,now,fix", [
    (dict(world_size=2, rank=0), "10 (batch_size=5 x world_size=2)",
     "no batch_size gives 5 on world_size=2: run on a world size that divides 5"),
    (dict(batch_size=4), "4 (batch_size=4 x world_size=1)", "build it with batch_size=5"),
])
def test_a_mid_epoch_state_on_another_global_batch_names_batch_size(ds, change, now, fix):
    """The world size may change mid-epoch (tests/test_elastic_resume.py), the global batch may not."""
    state = stop_after(ImageLoader(ds, batch_size=5, seed=2, **KW), 2)
    with pytest.raises(ArgumentError) as e:
        ImageLoader(ds, **dict(dict(batch_size=5, seed=2, **KW), **change)).load_state_dict(state)
    msg = str(e.value)
    assert (f"saved in the middle of epoch 0 (after batch 2 of 5) with a global batch of 5 (batch_size=5 x "
            f"world_size=1), but this loader's is {now}: the global batch must match to resume mid-epoch; "
            f"{fix}, or resume from a state saved at an epoch's end") in msg
    assert e.value.param == "batch_size" and "\n" not in msg


def test_a_0_3_state_mid_epoch_resumes_only_on_its_world_size(ds):
    """0.3 states hold this rank's share, not the records per epoch: nothing to re-split from."""
    state = stop_after(ImageLoader(ds, batch_size=4, seed=5, **KW), 1)
    state = {k: state[k] for k in ("epoch", "batches_done", "seed", "batch_size", "num_samples",
                                   "world_size", "rank", "shuffle", "num_records")}
    with pytest.raises(ArgumentError) as e:
        ImageLoader(ds, batch_size=2, seed=5, rank=0, world_size=2, **KW).load_state_dict(state)
    assert "with world_size=1 by an older loader (its state has no 'subset_records'), but this loader has " \
        "world_size=2: resume it on world_size=1" in str(e.value) and e.value.param == "state_dict"


def test_a_mid_epoch_state_resumes_exactly_and_a_0_3_state_still_loads(ds):
    full = ImageLoader(ds, batch_size=4, seed=5, **KW)
    expected = indices(full)
    for keep_new_keys in (True, False):
        state = stop_after(ImageLoader(ds, batch_size=4, seed=5, **KW), 3)
        if not keep_new_keys:            # what loader 0.2/0.3 saved
            state = {k: state[k] for k in ("epoch", "batches_done", "seed", "batch_size", "num_samples",
                                           "world_size", "rank", "shuffle", "num_records")}
        resumed = ImageLoader(ds, batch_size=4, seed=5, **KW)
        resumed.load_state_dict(state)
        assert indices(resumed) == expected[12:]


# -- 10: another dataset of the same size ----------------------------------------------------------

def test_a_state_of_another_dataset_with_as_many_records_is_refused(ds, twin):
    assert dataset_fingerprint(ImageLoader(ds, batch_size=5, **KW).dataset) != \
        dataset_fingerprint(ImageLoader(twin, batch_size=5, **KW).dataset)
    state = stop_after(ImageLoader(ds, batch_size=5, **KW), 1)
    other = ImageLoader(twin, batch_size=5, **KW)
    assert other.state_dict()["num_records"] == state["num_records"] == 27
    with pytest.raises(ArgumentError, match=rf"state_dict was saved from another dataset than {twin} "
                                            r"\(fingerprint [0-9a-f]{16}, this one [0-9a-f]{16}\)"):
        other.load_state_dict(state)                     # 0.3: accepted, then other records
    del state["dataset"]                                 # a 0.3 state has no fingerprint: it loads
    other.load_state_dict(state)
    assert other.state_dict()["batches_done"] == 1


def test_the_fingerprint_is_the_same_for_a_reopened_dataset(ds):
    a, b = ImageLoader(ds, batch_size=5, **KW), ImageLoader(ds, batch_size=7, seed=4, **KW)
    assert a.state_dict()["dataset"] == b.state_dict()["dataset"] == dataset_fingerprint(a.dataset)


# -- 11: a tampered state is one ArgumentError naming the key --------------------------------------

@pytest.mark.parametrize("tamper,key", [
    (lambda s: s.update(epoch=-5), "'epoch'"),
    (lambda s: s.update(epoch="abc"), "'epoch'"),
    (lambda s: s.pop("seed"), "'seed'"),
    (lambda s: s.update(batches_done=99), "'batches_done'"),
    (lambda s: s.update(batches_done=-1), "'batches_done'"),
    (lambda s: s.update(batch_size=True), "'batch_size'"),
    (lambda s: s.update(shuffle=1), "'shuffle'"),
    (lambda s: s.update(world_size=0), "'world_size'"),
    (lambda s: s.update(seed=2**64), "'seed'"),
    (lambda s: s.update(dataset=7), "'dataset'"),
])
def test_a_tampered_state_is_one_argument_error_naming_the_key(ds, tamper, key):
    ld = ImageLoader(ds, batch_size=5, **KW)
    state = stop_after(ImageLoader(ds, batch_size=5, **KW), 2)
    tamper(state)
    with pytest.raises(ArgumentError) as e:
        ld.load_state_dict(state)
    assert e.value.param == "state_dict" and key in str(e.value) and "\n" not in str(e.value)
    assert ld.state_dict()["epoch"] == 0 and ld.state_dict()["batches_done"] == 0     # untouched


def test_batches_done_past_the_epoch_of_an_old_state_is_named(ds):
    state = stop_after(ImageLoader(ds, batch_size=5, **KW), 2)
    state = {k: v for k, v in state.items() if k != "num_batches"}     # 0.3: len(loader) was not saved
    state["batches_done"] = 6
    with pytest.raises(ArgumentError, match=r"state_dict\['batches_done'\] must be an int in \[0, 5\]"):
        ImageLoader(ds, batch_size=5, **KW).load_state_dict(state)


@pytest.mark.parametrize("state", [[("epoch", 0)], None, "epoch=0"])
def test_a_state_that_is_not_a_dict_is_named(ds, state):
    with pytest.raises(ArgumentError, match="state_dict must be the dict ImageLoader.state_dict"):
        ImageLoader(ds, batch_size=5, **KW).load_state_dict(state)


# -- 13: seed=None resumes exactly ------------------------------------------------------------------

def test_a_seed_none_loader_resumes_exactly(ds):
    run = ImageLoader(ds, batch_size=4, seed=None, **KW)            # draws a seed
    list(run)                                                       # epoch 0
    state = stop_after(run, 2)                                      # 2 batches into epoch 1
    assert state["seed"] == run.seed and 0 <= state["seed"] < 2**63

    ref = ImageLoader(ds, batch_size=4, seed=run.seed, **KW)        # the uninterrupted run
    list(ref)
    expected = [(x.clone(), i.tolist()) for x, _, i in ref]         # epoch 1 (crops follow the seed)
    after = indices(ref)                                            # epoch 2

    resumed = ImageLoader(ds, batch_size=4, seed=None, **KW)       # draws its own seed ...
    assert resumed.seed != run.seed
    list(resumed)                                                   # ... and builds its pipeline with it
    resumed.load_state_dict(state)                                  # mid-epoch: adopts the saved seed
    assert resumed.seed == run.seed
    got = [(x, i.tolist()) for x, _, i in resumed]
    assert [i for _, i in got] == [i for _, i in expected[2:]]
    for (x, _), (xe, _) in zip(got, expected[2:]):
        assert torch.equal(x, xe)
    assert indices(resumed) == after


def test_a_seed_none_loader_adopts_the_seed_of_a_boundary_state(ds):
    saver = ImageLoader(ds, batch_size=4, seed=11, **KW)
    state = stop_after(saver, len(saver))                           # end of epoch 0
    expected = indices(saver)                                       # epoch 1 with seed 11
    resumed = ImageLoader(ds, batch_size=4, seed=None, **KW)
    resumed.load_state_dict(state)
    assert resumed.seed == 11 and indices(resumed) == expected


# -- 11: one loader, one epoch at a time -------------------------------------------------------------

def test_two_iterators_of_one_loader_at_once_are_refused(ds):
    ld = ImageLoader(ds, batch_size=4, **KW)
    with pytest.raises(ConcurrentEpochError) as e:                 # 0.3: "DALI ended the epoch early"
        for _ in zip(ld, ld):
            pass
    msg = str(e.value)
    assert "one ImageLoader runs one epoch at a time; build a second ImageLoader" in msg and "\n" not in msg
    assert isinstance(e.value, RuntimeError)


def test_an_abandoned_iterator_does_not_stop_the_next_epoch(ds):
    """Lightning abandons an epoch's iterator and calls iter() again: that still works; only a later
    next() on the abandoned iterator is refused."""
    ref = ImageLoader(ds, batch_size=4, seed=1, **KW)
    epochs = [indices(ref) for _ in range(2)]
    ld = ImageLoader(ds, batch_size=4, seed=1, **KW)
    held = iter(ld)
    next(held)
    assert indices(ld) == epochs[1]                                 # a new epoch runs whole
    with pytest.raises(ConcurrentEpochError, match="epoch 0 .* was abandoned"):
        next(held)
    for k, _ in enumerate(ld):                                      # break out, then iterate again
        if k == 1:
            break
    ld.set_epoch(1)
    assert indices(ld) == epochs[1]


def test_rank_0s_state_resumes_every_rank_with_pad_false(ds):
    """Uneven shares (pad=False) differ per rank: the state compares the records per epoch, not
    rank 0's share, so one checkpoint still resumes all ranks."""
    kw = dict(batch_size=4, train=False, pad=False, world_size=2, **KW)
    state = stop_after(ImageLoader(ds, rank=0, **kw), 2)
    assert state["num_samples"] == 14                                # 27 = 14 + 13
    full = indices(ImageLoader(ds, rank=1, **kw))
    resumed = ImageLoader(ds, rank=1, **kw)
    resumed.load_state_dict(state)
    assert len(full) == 13 and indices(resumed) == full[8:]
