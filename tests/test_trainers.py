"""ImageLoader under the trainers people use: Lightning (DDP, loaders built before fit or in hooks),
accelerate (under torchrun), 2 CPU processes over gloo, each run in a subprocess with a timeout.

Every run checks, per rank and epoch, exactly the records :meth:`ImageLoader.epoch_plan` says
that rank trains on in that epoch: so the batch counts are right, the ranks' samples are disjoint
and together cover the training subset, the two epochs differ, and neither the sanity check
nor a validation pass between epochs shifts the training order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import loader
from tests.conftest import pack_small_images

# Lightning and accelerate are test tools (scripts/setup.sh installs them), not dependencies.
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
B = 4


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    # 45 records: 34 training, 11 validation
    return pack_small_images(tmp_path_factory.mktemp("trainers"), classes=3, per_class=15, base=(24, 20))


def _run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])


def _check(packed: Path, out: Path, *, world: int, epochs: int = 2, sanity: bool = False) -> None:
    kw = dict(batch_size=B, image_size=16, seed=11, validation_split=0.25, device="cpu")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    train_set = set(loader.ImageLoader(packed, subset="training", **kw)._subset.tolist())
    val_set = set(loader.ImageLoader(packed, subset="validation", train=False, **kw)._subset.tolist())
    share = (len(train_set) // world) // B * B
    for r, got in enumerate(ranks):
        assert (got["rank"], got["world"], got["loader_rank"], got["loader_world"]) == (r, world, r, world)
        assert got["len"] == share // B
    for e in range(epochs):
        union: set[int] = set()
        for r, got in enumerate(ranks):
            seen = got["seen"]["train"][str(e)]
            want = loader.ImageLoader(packed, subset="training", rank=r, world_size=world, **kw).epoch_plan(e)
            assert seen == want.records.tolist(), (r, e)       # exactly the plan: nothing shifted it
            assert len(seen) == share and not union & set(seen)
            union |= set(seen)
        assert union <= train_set and len(union) == world * share   # all but the drop_last remainder
        val = [i for got in ranks for i in got["seen"]["val"][str(e)]]
        assert set(val) == val_set                              # every validation record, each epoch
    for got in ranks:
        assert got["seen"]["train"]["0"] != got["seen"]["train"]["1"]   # reshuffled
        if sanity:
            per_rank = -(-len(val_set) // world)               # eval pads each rank's share to equal length
            assert len(got["seen"]["val"]["sanity"]) == min(2 * B, per_rank)  # num_sanity_val_steps=2


@pytest.mark.parametrize("mode", ["before", "hooks"])
def test_lightning_ddp_two_ranks(packed, tmp_path, mode):
    _run([sys.executable, str(HERE / "trainers" / "lightning_fit.py"), str(packed), str(tmp_path), mode, "2"],
         cwd=tmp_path)
    _check(packed, tmp_path, world=2, sanity=True)


def test_lightning_single_process(packed, tmp_path):
    _run([sys.executable, str(HERE / "trainers" / "lightning_fit.py"), str(packed), str(tmp_path), "before", "1"],
         cwd=tmp_path)
    _check(packed, tmp_path, world=1, sanity=True)


@pytest.mark.parametrize("launcher", ["torchrun", "debug_launcher"])
def test_accelerate_two_ranks(packed, tmp_path, launcher):
    script = str(HERE / "trainers" / "accelerate_loop.py")
    if launcher == "torchrun":   # what `accelerate launch` runs for multi-GPU jobs
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script]
        _run([*cmd, str(packed), str(tmp_path)], cwd=tmp_path)
    else:                        # accelerate's own multi-process CPU launcher
        _run([sys.executable, script, str(packed), str(tmp_path), "debug_launcher"], cwd=tmp_path)
    _check(packed, tmp_path, world=2)
    for r in range(2):
        assert json.loads((tmp_path / f"rank{r}.json").read_text())["returned_as_is"] is True


def test_lightning_resumes_mid_epoch_from_its_checkpoint(packed, tmp_path):
    """Lightning saves ``state_dict()`` in its checkpoints and restores it: a run crashed after
    step 8 and resumed from the step-5 checkpoint trains exactly batches 5.. of epoch 0, then epoch 1."""
    script = str(HERE / "trainers" / "lightning_resume.py")
    _run([sys.executable, script, str(packed), str(tmp_path), "first"], cwd=tmp_path)
    _run([sys.executable, script, str(packed), str(tmp_path), "resume"], cwd=tmp_path)
    first = json.loads((tmp_path / "first.json").read_text())
    resumed = json.loads((tmp_path / "resume.json").read_text())
    plan = [loader.ImageLoader(packed, batch_size=B, image_size=16, seed=11, device="cpu").epoch_plan(e)
            .records.tolist() for e in range(2)]
    assert first["seen"]["0"] == plan[0][:8 * B]                   # trained until the crash
    assert resumed["seen"] == {"0": plan[0][5 * B:], "1": plan[1]}  # the rest of epoch 0, then epoch 1
