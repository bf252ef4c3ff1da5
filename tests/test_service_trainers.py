"""The decode service (``ImageLoader(service=RayService(...))``) under trainers, and an actor that hangs.

Lightning (2 CPU DDP processes) and a plain torchrun loop (2 ranks, gloo) run in subprocesses against the
2-node local cluster of tests/raycluster.py, each rank with its own one-actor services for a training and
a validation loader. As tests/test_trainers.py checks for the local loader: per rank and epoch, exactly the
records ``epoch_plan()`` gives that rank, the ranks disjoint, every validation record each epoch; and here
also each batch's bytes (a SHA-256 of images and labels) equal to the local loader's for that rank.

A hung actor (alive, never answering: its process SIGSTOPped) is killed after ``batch_timeout`` and replaced
like a dead one, with the epoch's batches still byte-identical and in order; past ``max_replacements`` it
is one ServiceError line naming the batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import loader
from loader.augment.settings import Augment
from loader.errors import ServiceError
from tests.conftest import pack_jpeg_classes

pytest_plugins = ["raycluster"]     # ray_cluster, ray_connected: one 2-node cluster for the whole session

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
B, WORLD = 4, 2
# What the scripts in tests/trainers/ pass (with_indices=True, num_threads=1 aside).
KW = dict(batch_size=B, image_size=16, seed=11, validation_split=0.25, device="cpu")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    # 45 records: 34 training (16 per rank, 4 batches), 11 validation
    return pack_jpeg_classes(tmp_path_factory.mktemp("svctrainers"), classes=3, per_class=15, shards=2,
                             seed_step=100, size=(32, 24))


def _run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RAY_ADDRESS"):
        env.pop(k, None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])


def _digests(ld, epoch: int) -> list[str]:
    """The scripts' per-batch SHA-256 of ``ld``'s batches in ``epoch`` (the local loader)."""
    ld.set_epoch(epoch)
    return [hashlib.sha256(x.contiguous().numpy().tobytes() + y.numpy().tobytes()).hexdigest() for x, y, _ in ld]


def _check(packed: Path, out: Path) -> None:
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    train_set = set(loader.ImageLoader(packed, subset="training", **KW)._subset.tolist())
    val_set = set(loader.ImageLoader(packed, subset="validation", train=False, **KW)._subset.tolist())
    share = (len(train_set) // WORLD) // B * B
    for r, got in enumerate(ranks):
        assert (got["rank"], got["world"], got["loader_rank"], got["loader_world"]) == (r, WORLD, r, WORLD)
        assert got["len"] == share // B
        assert got["service_batches"] == 2 * share // B          # the actors made every training batch
    for e in range(2):
        union: set[int] = set()
        for r, got in enumerate(ranks):
            seen = got["seen"]["train"][str(e)]
            kw = dict(KW, rank=r, world_size=WORLD, with_indices=True, num_threads=1)
            train = loader.ImageLoader(packed, subset="training", **kw)
            assert seen == train.epoch_plan(e).records.tolist(), (r, e)   # exactly the plan
            assert not union & set(seen)
            union |= set(seen)
            assert got["digests"]["train"][str(e)] == _digests(train, e), (r, e)    # the local loader's bytes
            val = loader.ImageLoader(packed, subset="validation", train=False, **kw)
            assert got["digests"]["val"][str(e)] == _digests(val, e), (r, e)
        assert union <= train_set and len(union) == WORLD * share
        assert set(i for got in ranks for i in got["seen"]["val"][str(e)]) == val_set
    for got in ranks:
        assert got["seen"]["train"]["0"] != got["seen"]["train"]["1"]   # reshuffled


def test_lightning_ddp_two_ranks_on_the_service(packed, tmp_path, ray_cluster):  # noqa: F811
    _run([sys.executable, str(HERE / "trainers" / "lightning_service.py"), str(packed), str(tmp_path),
          ray_cluster.address, str(WORLD)], cwd=tmp_path)
    _check(packed, tmp_path)
    for r in range(WORLD):                  # the sanity check's 2 batches (an eval epoch left mid-way) are
        seen = json.loads((tmp_path / f"rank{r}.json").read_text())["seen"]["val"]   # the head of every pass
        assert seen["sanity"] == seen["0"][:2 * B] == seen["1"][:2 * B] and len(seen["sanity"]) == 6   # 11 -> 6 + 6


def test_torchrun_two_gloo_ranks_on_the_service(packed, tmp_path, ray_cluster):  # noqa: F811
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
          str(HERE / "trainers" / "torchrun_service.py"), str(packed), str(tmp_path), ray_cluster.address],
         cwd=tmp_path)
    _check(packed, tmp_path)


# -- a hung actor ------------------------------------------------------------------------------------------

# 32 records, batches of 4: 8 an epoch. Measured on 2 cores: a batch ~10 ms, starting 2 actors 4.3 s; a
# deadline of 10 s leaves room for the replacement's start without a second, spurious replacement.
HANG_KW = dict(image_size=32, device="cpu", num_threads=1, train=True, batch_size=4, with_indices=True,
               augment=Augment(color_jitter=0.4), seed=3)
BATCH_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return pack_jpeg_classes(tmp_path_factory.mktemp("svchang"), classes=2, per_class=16, shards=2, seed_step=100,
                             size=(48, 40))


def _gone(pid: int, seconds: float = 30.0) -> bool:
    """Whether process ``pid`` exits within ``seconds`` (Ray SIGKILLs a worker that ignores its kill after 5 s)."""
    for _ in range(int(seconds / 0.1)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _within(seconds: float, fn):
    """``fn()``, run in a thread: a failure, not a hang, if it has not returned after ``seconds`` (without the
    deadline a hung actor blocks the trainer forever; the test's ``close()`` then unblocks the thread)."""
    box: dict = {}

    def run():
        try:
            box["out"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"still waiting after {seconds} s: the hung actor blocked the trainer")
    if "err" in box:
        raise box["err"]
    return box["out"]


def _stop(ld, slot: int) -> int:
    """SIGSTOP actor ``slot`` of ``ld``'s service: alive for Ray, never answering. Returns its pid."""
    import ray

    pid = ray.get(ld._service.actors[slot].pid.remote(), timeout=60)
    os.kill(pid, signal.SIGSTOP)
    return pid


def _assert_same(got, want):
    assert len(got) == len(want)
    for k, (x, y) in enumerate(zip(got, want)):
        assert len(x) == len(y) == 3
        for t, u in zip(x, y):
            assert t.dtype == u.dtype and t.shape == u.shape, k
            assert torch.equal(t.contiguous().view(torch.uint8), u.contiguous().view(torch.uint8)), k


def test_a_hung_actor_is_killed_after_batch_timeout_and_replaced(photos, ray_connected):  # noqa: F811
    local = loader.ImageLoader(photos, **HANG_KW)
    want = [list(local) for _ in range(3)]
    # Half a CPU each: the replacement is placed at once, not after Ray frees the hung actor's CPU.
    remote = loader.ImageLoader(photos, **HANG_KW, service=loader.RayService(
        num_workers=2, num_cpus=0.5, timeout=60, batch_timeout=BATCH_TIMEOUT))
    pid = None
    try:
        got = [list(remote)]                            # epoch 0 as usual
        victim = remote._service.actors[1]
        pid = _stop(remote, 1)                          # actor 1 owns batches 1, 3, 5, 7 of epoch 1
        got.append(_within(120, lambda: list(remote)))
        assert remote._service.stats["replaced_actors"] == 1 and remote._service.actors[1] is not victim
        assert _gone(pid)                               # the hung actor was killed
        got.append(list(remote))                        # and epoch 2 as usual on the new pool
        for e in range(3):
            _assert_same(got[e], want[e])
        assert [i for b in got[1] for i in b[2].tolist()] == local.epoch_plan(1).records.tolist()
    finally:
        remote.close()
        if pid is not None and not _gone(pid, 10):
            os.kill(pid, signal.SIGKILL)


def test_a_hang_past_max_replacements_is_one_line_naming_the_batch(photos, ray_connected):  # noqa: F811
    remote = loader.ImageLoader(photos, **HANG_KW, service=loader.RayService(
        num_workers=2, num_cpus=0.5, timeout=60, batch_timeout=2, max_replacements=0))
    pid = None
    try:
        pid = _stop(remote, 0)                          # actor 0 owns batch 0
        with pytest.raises(ServiceError) as info:
            _within(120, lambda: next(iter(remote)))
        assert str(info.value) == (f"1 decode actors died or hung producing batch 0 of epoch 0 of {photos} "
                                   f"(max_replacements=0); the last: no batch within batch_timeout=2 s (the "
                                   f"actor hung; it was killed)")
    finally:
        remote.close()
        if pid is not None and not _gone(pid, 10):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5", True, None])
def test_batch_timeout_is_checked_naming_it(bad):
    from loader.errors import ArgumentError

    with pytest.raises(ArgumentError) as info:
        loader.RayService(num_workers=1, batch_timeout=bad)
    assert info.value.param == "batch_timeout" and str(info.value) == (
        f"batch_timeout must be a number of seconds > 0, got {bad!r}")
    assert loader.RayService(num_workers=1).batch_timeout == 300.0
    assert loader.RayService(num_workers=1, batch_timeout=2).batch_timeout == 2
