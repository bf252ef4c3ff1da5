"""ImageLoader inside Ray Train's ``TorchTrainer``: scripts/ray_train.py, run against the 2-node local cluster
of tests/raycluster.py in a subprocess with a timeout. 2 CPU workers over gloo, no sampler, no rank= /
world_size=: the loader takes them from the process group Ray Train set up.

The last rank SIGKILLs itself after step 3 of epoch 0 (once: a marker file); ``FailureConfig(max_failures=1)``
restarts both workers from the last checkpoint (step 2), whose ``loader.state_dict()`` every worker loads.
Each worker logs the records of every step it trained. The steps the dead attempt ran past that
checkpoint are dropped (their model updates died with it); what is left, for every rank and epoch, is
exactly ``epoch_plan(epoch)`` of that rank, so over the ranks every record of each epoch once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import loader
from tests.conftest import pack_jpeg_classes

pytest_plugins = ["raycluster"]     # ray_cluster: one 2-node cluster for the whole session

REPO = Path(__file__).resolve().parents[1]
B, WORLD, EPOCHS, KILL_AFTER, EVERY, SEED = 4, 2, 2, 3, 2, 11
LAST_CKPT = KILL_AFTER // EVERY * EVERY      # the checkpoint the restart resumes from


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    # 48 records: 24 per rank, 6 batches of 4 per rank and epoch
    return pack_jpeg_classes(tmp_path_factory.mktemp("raytrain"), classes=2, per_class=24, shards=2, seed_step=100,
                             size=(32, 24))


def _steps(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_ray_train_resumes_the_rest_of_the_epoch_after_a_worker_is_killed(packed, tmp_path, ray_cluster):  # noqa: F811
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", OMP_NUM_THREADS="1",
               # Ray Train takes a report off a worker at each health check (2 s by default), and a worker's
               # next report waits for that: 0.2 s saves ~10 s here. Passed on to the workers by Ray Train.
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    logs = tmp_path / "log"
    cmd = [sys.executable, str(REPO / "scripts" / "ray_train.py"), "--address", ray_cluster.address,
           "--data", str(packed), "--storage", str(tmp_path / "runs"), "--name", "run", "--log-dir", str(logs),
           "--workers", str(WORLD), "--epochs", str(EPOCHS), "--batch-size", str(B), "--image-size", "16",
           "--seed", str(SEED), "--checkpoint-every", str(EVERY), "--kill-after-step", str(KILL_AFTER)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    assert (tmp_path / "runs" / "run" / "killed-once").exists()       # the last rank did die once

    kw = dict(batch_size=B, image_size=16, seed=SEED, device="cpu")
    plan = [[loader.ImageLoader(packed, rank=r, world_size=WORLD, **kw).epoch_plan(e).records.tolist()
             for e in range(EPOCHS)] for r in range(WORLD)]
    per_epoch = len(plan[0][0]) // B
    for r in range(WORLD):
        steps = _steps(logs / f"rank{r}.jsonl")
        # The loader's rank and world size are Ray's, read from the gloo process group Ray Train started.
        assert ({(s["rank"], s["world"], s["loader_rank"], s["loader_world"], s["backend"]) for s in steps} ==
                {(r, WORLD, r, WORLD, "gloo")})
        first = [s for s in steps if s["resumed_from"] is None]
        resumed = [s for s in steps if s["resumed_from"] is not None]
        assert [s["step"] for s in first] == list(range(1, KILL_AFTER + 1))   # both trained step 3, then died
        assert {s["resumed_from"] for s in resumed} == {LAST_CKPT}
        kept = [s for s in first if s["step"] <= LAST_CKPT] + resumed
        assert [s["step"] for s in kept] == list(range(1, EPOCHS * per_epoch + 1))   # no step twice, none missed
        for e in range(EPOCHS):
            trained = [i for s in kept if s["epoch"] == e for i in s["records"]]
            assert trained == plan[r][e], (r, e)               # exactly the plan, in order
    for e in range(EPOCHS):
        assert sorted(plan[0][e] + plan[1][e]) == list(range(48))   # each record of the epoch once over the ranks
    assert plan[0][0] != plan[0][1]

    last = re.search(r"last checkpoint: (\S+)", proc.stdout).group(1)   # the end of training
    final = torch.load(Path(last) / "state.pt", weights_only=True)
    assert final["step"] == EPOCHS * per_epoch
    assert final["loader"]["epoch"] == EPOCHS - 1 and final["loader"]["batches_done"] == per_epoch
