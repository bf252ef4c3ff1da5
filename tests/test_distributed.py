"""Two real processes under torch.distributed (gloo): disjoint, equal-length rank streams."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import pack_small_images

WORKER = textwrap.dedent("""
    import json, sys, datetime
    import torch, torch.distributed as dist
    from loader import ImageLoader

    data, store, out, rank, world, train = sys.argv[1:7]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=int(rank),
                            world_size=int(world), timeout=datetime.timedelta(seconds=60))
    # rank/world_size come from torch.distributed: no arguments passed.
    ld = ImageLoader(data, batch_size=3, image_size=16, train=train == "1", with_indices=True)
    result = {"rank": ld.rank, "world": ld.world_size, "len": len(ld), "sampler": len(ld.sampler),
              "dataset": len(ld.dataset), "epochs": []}
    for epoch in range(2):
        ld.set_epoch(epoch)
        seen = []
        for images, labels, idx in ld:
            # A collective per batch, as DDP's gradient all-reduce: hangs if the
            # ranks disagree on the number of batches.
            t = torch.tensor([len(idx)])
            dist.all_reduce(t)
            seen += idx.tolist()
        result["epochs"].append(seen)
    dist.destroy_process_group()
    json.dump(result, open(out, "w"))
""")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    # 26 records: not a multiple of 2 * 3
    return pack_small_images(tmp_path_factory.mktemp("dist"), classes=2, per_class=13, base=(40, 30))


@pytest.mark.parametrize("train", [True, False])
def test_two_gloo_ranks_get_disjoint_equal_slices_of_the_epoch(packed, tmp_path, train):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, str(script), str(packed), str(store),
                               str(tmp_path / f"r{r}.json"), str(r), "2", "1" if train else "0"],
                              cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["len"] == r1["len"]
    # What imagenet/main.py reads of a DistributedSampler'd loader: records per rank, and the dataset's.
    assert r0["sampler"] == r1["sampler"] == (12 if train else 13) and r0["dataset"] == 26
    n = 26
    for e in range(2):
        a, b = r0["epochs"][e], r1["epochs"][e]
        if train:
            # drop_last: (26 // 2) // 3 * 3 = 12 per rank, never overlapping.
            assert len(a) == len(b) == 12 == r0["len"] * 3
            assert not set(a) & set(b)
            assert len(set(a)) == 12 and len(set(b)) == 12
        else:
            # Eval: every record exactly once over the ranks (26 divides by 2).
            assert len(a) == len(b) == 13
            assert sorted(a + b) == list(range(n))
    if train:
        assert r0["epochs"][0] != r0["epochs"][1]           # reshuffled by set_epoch
