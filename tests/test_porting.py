"""PyTorch's imagenet/main.py ports without surprises: ``len(loader.sampler)``, ``len(loader.dataset)``,
and its validate() under DDP with ``pad=False`` counting every record exactly once."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loader import ImageLoader
from loader.errors import ArgumentError
from tests.conftest import pack_small_images

N = 15          # odd: two ranks cannot split it evenly, so padding would count a record twice
BATCH = 4


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return pack_small_images(tmp_path_factory.mktemp("porting"), classes=3, per_class=5, base=(36, 28))


def test_sampler_and_dataset_answer_len_as_a_distributed_samplers_would(ds):
    ld = ImageLoader(ds, batch_size=BATCH, image_size=16, train=False, device="cpu")
    assert len(ld.sampler) == ld.num_samples == N and len(ld.dataset) == N    # 0.3: TypeError on len(sampler)
    ld.sampler.set_epoch(2)
    assert ld.state_dict()["epoch"] == 2
    for rank in range(2):
        padded = ImageLoader(ds, batch_size=BATCH, image_size=16, train=False, device="cpu", rank=rank, world_size=2)
        even = ImageLoader(ds, batch_size=BATCH, image_size=16, train=False, device="cpu", rank=rank, world_size=2,
                           pad=False)
        assert len(padded.sampler) == padded.num_samples == math.ceil(N / 2)
        # pad=False: this rank's own count is num_samples; len(sampler) stays DistributedSampler's, the
        # longest share, so imagenet's "len(sampler) * world_size < len(dataset)" is false on every rank.
        assert even.num_samples == [8, 7][rank] and len(even.sampler) == 8
        assert len(even) == 2 and len(even.sampler) * 2 >= len(even.dataset)
        train = ImageLoader(ds, batch_size=BATCH, image_size=16, device="cpu", rank=rank, world_size=2)
        assert len(train.sampler) == train.num_samples == (N // 2) // BATCH * BATCH


def test_pad_false_gives_every_record_to_exactly_one_rank(ds):
    seen, sizes = [], []
    for rank in range(4):
        ld = ImageLoader(ds, batch_size=BATCH, image_size=16, train=False, device="cpu", rank=rank, world_size=4,
                         pad=False, with_indices=True)
        batches = [idx.tolist() for *_, idx in ld]
        sizes.append([len(b) for b in batches])
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(N))                 # padded: 16 records, one of them twice
    assert sizes == [[4], [4], [4], [3]]                   # 15 = 4 + 4 + 4 + 3: the last rank's batch is short


def test_pad_false_with_more_ranks_than_records_leaves_a_rank_empty(tmp_path):
    two = pack_small_images(tmp_path, classes=1, per_class=2, base=(30, 30))
    got = []
    for rank in range(3):
        ld = ImageLoader(two, batch_size=2, image_size=16, train=False, device="cpu", rank=rank, world_size=3,
                         pad=False, with_indices=True)
        got.append([i for *_, idx in ld for i in idx.tolist()])
        assert len(ld) == len(got[-1])
    assert got == [[0], [1], []]


def test_pad_false_with_drop_last_is_an_argument_error(ds):
    with pytest.raises(ArgumentError) as e:               # train=True: drop_last defaults to True
        ImageLoader(ds, batch_size=BATCH, image_size=16, device="cpu", pad=False)
    assert e.value.param == "pad" and "pad=False (every record exactly once over the ranks) needs " \
                                      "drop_last=False" in str(e.value)
    with pytest.raises(ArgumentError, match="needs drop_last=False"):
        ImageLoader(ds, batch_size=BATCH, image_size=16, device="cpu", train=False, drop_last=True, pad=False)


# imagenet/main.py's validate(), as a test: top-1 accumulated per rank, dist.all_reduce of the
# correct and total counts, then the "aux" pass over the records an even split leaves over
# (main.py runs it when len(val_loader.sampler) * world_size < len(val_loader.dataset)).
WORKER = textwrap.dedent("""
    import datetime, json, sys
    import torch, torch.distributed as dist
    from loader import ImageLoader

    data, store, out, rank, world, pad = sys.argv[1:7]
    rank, world = int(rank), int(world)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)       # the same weights on every rank and in the 1-rank run
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()

    def top1(loader):
        correct = total = 0
        with torch.no_grad():
            for images, target in loader:
                correct += int((model(images).argmax(1) == target).sum())
                total += len(target)
        return correct, total

    val = ImageLoader(data, batch_size=4, image_size=16, train=False, device="cpu", pad=pad == "1")
    correct, total = top1(val)
    if world > 1:
        t = torch.tensor([correct, total])
        dist.all_reduce(t)
        correct, total = t.tolist()
    aux = len(val.sampler) * world < len(val.dataset)
    if aux:                    # main.py: a DataLoader over Subset(dataset, range(len(sampler) * world, n))
        tail = range(len(val.sampler) * world, len(val.dataset))
        alone = ImageLoader(data, batch_size=4, image_size=16, train=False, device="cpu", rank=0, world_size=1,
                            with_indices=True)
        with torch.no_grad():
            for images, target, idx in alone:
                keep = torch.tensor([i in tail for i in idx.tolist()])
                correct += int((model(images[keep]).argmax(1) == target[keep]).sum())
                total += int(keep.sum())
    if world > 1:
        dist.destroy_process_group()
    json.dump({"correct": correct, "total": total, "aux": aux, "sampler": len(val.sampler)}, open(out, "w"))
""")


def run_validate(data: Path, tmp: Path, world: int, pad: bool) -> list[dict]:
    script = tmp / "validate.py"
    script.write_text(WORKER)
    store = tmp / f"store-{world}-{pad}"
    outs = [tmp / f"out-{world}-{pad}-{r}.json" for r in range(world)]
    procs = [subprocess.Popen([sys.executable, str(script), str(data), str(store), str(outs[r]), str(r),
                               str(world), "1" if pad else "0"],
                              cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    return [json.loads(o.read_text()) for o in outs]


def test_imagenet_validate_on_two_gloo_ranks_equals_one_rank_with_pad_false(ds, tmp_path):
    (alone,) = run_validate(ds, tmp_path, world=1, pad=False)
    assert alone["total"] == N and not alone["aux"]
    even = run_validate(ds, tmp_path, world=2, pad=False)
    for r in even:                  # every rank reports the 1-rank top-1: each record counted once
        assert (r["correct"], r["total"], r["aux"]) == (alone["correct"], N, False)
    padded = run_validate(ds, tmp_path, world=2, pad=True)
    for r in padded:                # the default repeats a record to even the shares: counted twice
        assert r["total"] == N + 1 and not r["aux"]

