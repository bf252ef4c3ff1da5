"""The decode service (loader.service) on a real 2-node local Ray cluster (tests/raycluster.py): its batches
are the local loader's byte for byte (train and eval, 2 seeds, 2 epochs, 1 and 2 trainer ranks), a
mid-epoch state resumes exactly, an actor killed mid-epoch is replaced with no batch lost or repeated,
on_error behaves as without a service, and an unreachable or too small pool is one line at construction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch

import loader
from loader.augment.settings import Augment
from loader.errors import ArgumentError, DecodeError, ServiceError
from tests.conftest import REPO, pack_jpeg_classes, replace_records

pytest_plugins = ["raycluster"]     # ray_cluster, ray_connected: one 2-node cluster for the whole session

KW = dict(image_size=32, device="cpu", num_threads=1)
# 32 records; eval's batch of 5 leaves a partial last batch (7 per epoch on one rank, 4 on each of two).
CONFIGS = {"train": dict(train=True, batch_size=4, with_indices=True, augment=Augment(color_jitter=0.4)),
           "eval": dict(train=False, batch_size=5, with_indices=True, augment=Augment(eval_mode="torchvision"))}
# Each seed also changes the output format, so both finishing paths of the trainer are compared.
SEEDS = {0: dict(), 7: dict(dtype=torch.float16, channels_last=True)}


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return pack_jpeg_classes(tmp_path_factory.mktemp("service"), classes=2, per_class=16, shards=2, seed_step=100,
                             size=(48, 40))


def epochs(ld, n=2):
    """``n`` epochs of ``ld`` as lists of batches (tuples of tensors)."""
    return [list(ld) for _ in range(n)]


def assert_same(got, want):
    assert len(got) == len(want)
    for e, (a, b) in enumerate(zip(got, want)):
        assert len(a) == len(b), e
        for k, (x, y) in enumerate(zip(a, b)):
            assert len(x) == len(y)
            for t, u in zip(x, y):
                assert t.dtype == u.dtype and t.shape == u.shape and t.stride() == u.stride(), (e, k)
                assert torch.equal(t.contiguous().view(torch.uint8), u.contiguous().view(torch.uint8)), (e, k)


def service_loader(path, workers, **kw):
    return loader.ImageLoader(path, service=loader.RayService(num_workers=workers, timeout=60), **kw)


def actors_alive(ld) -> list[bool]:
    import ray

    alive = []
    for a in list(ld._service.actors):
        try:
            ray.get(a.pid.remote(), timeout=30)
            alive.append(True)
        except ray.exceptions.RayActorError:
            alive.append(False)
    return alive


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_service_batches_are_the_local_loaders_bytes(packed, ray_connected, mode):  # noqa: F811
    """2 seeds x 2 epochs x (one trainer with 2 actors, two trainer ranks with 1 actor each)."""
    for seed, fmt in SEEDS.items():
        for world, workers in ((1, 2), (2, 1)):
            for rank in range(world):
                kw = dict(KW, **CONFIGS[mode], **fmt, seed=seed, rank=rank, world_size=world)
                local = loader.ImageLoader(packed, **kw)
                with service_loader(packed, workers, **kw) as remote:
                    assert len(remote) == len(local) > 0
                    got = epochs(remote)
                    assert remote._service.stats["batches"] == 2 * len(local)
                assert_same(got, epochs(local))
    whole = [i for r in range(2) for b in list(loader.ImageLoader(packed, **dict(KW, **CONFIGS[mode], rank=r,
                                                                                    world_size=2))) for i in b[2]]
    assert sorted(int(i) for i in whole) == list(range(32))     # (the two ranks split the records)


def test_set_epoch_and_a_mid_epoch_state_resume_exactly_and_close_kills_the_actors(packed, ray_connected):  # noqa: F811
    kw = dict(KW, **CONFIGS["train"], seed=5)
    local = loader.ImageLoader(packed, **kw)
    local.set_epoch(1)
    want = list(local)
    first = service_loader(packed, 2, **kw)
    first.set_epoch(1)
    it = iter(first)
    head = [next(it) for _ in range(3)]                  # an early stop: the rest of the epoch is in flight
    state = json.loads(json.dumps(first.state_dict()))
    assert state["epoch"] == 1 and state["batches_done"] == 3
    first.close()
    assert actors_alive(first) == [] and first._service.actors == []
    second = service_loader(packed, 2, **kw)
    second.load_state_dict(state)
    second.set_epoch(1)                                  # the usual call at the loop's top keeps the position
    rest = list(second)
    assert_same([head + rest], [want])
    local.set_epoch(2)
    assert_same(epochs(second, 1), epochs(local, 1))     # and the next epoch as usual
    actors = list(second._service.actors)
    del second, it
    import gc

    gc.collect()
    import ray

    for a in actors:                                     # garbage collection kills them too
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(a.pid.remote(), timeout=30)


def test_an_actor_killed_mid_epoch_is_replaced_and_no_batch_is_lost_or_repeated(packed, ray_connected):  # noqa: F811
    import ray

    kw = dict(KW, **CONFIGS["train"], seed=3)
    local = loader.ImageLoader(packed, **kw)
    want = epochs(local)
    remote = service_loader(packed, 2, **kw)
    try:
        victim = remote._service.actors[0]
        pid = ray.get(victim.pid.remote())              # asked now: later it would queue behind its batches
        got = []
        for e in range(2):
            batches = []
            for k, b in enumerate(remote):
                batches.append(b)
                if e == 0 and k == 1:                   # batches 2..5 are requested: actor 0 owns 2 and 4
                    os.kill(pid, signal.SIGKILL)
            got.append(batches)
        assert remote._service.stats["replaced_actors"] == 1
        assert remote._service.actors[0] is not victim
        assert_same(got, want)
        assert [i for b in got[0] for i in b[2].tolist()] == local.epoch_plan(0).records.tolist()
        it = iter(remote)
        next(it)                                        # epoch 2 left after one batch, the rest in flight
        del it
        local.set_epoch(3)
        assert_same(epochs(remote, 1), epochs(local, 1))  # epoch 3 as usual (the requests left were cancelled)
    finally:
        remote.close()


def test_on_error_replace_and_raise_as_without_a_service(packed, tmp_path, ray_connected):  # noqa: F811
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(packed, copy)
    ds = loader.open_dataset(copy)
    bad = {5: ds.read(5)[:100], 20: ds.read(20)[:100]}          # truncated: the checksum no longer matches
    ds.close()
    replace_records(copy, bad)
    kw = dict(KW, **CONFIGS["eval"], seed=1)                   # eval reads every record
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        local = loader.ImageLoader(copy, on_error="replace", **kw)
        want = epochs(local)
        with service_loader(copy, 2, on_error="replace", **kw) as remote:
            got = epochs(remote)
            assert remote.bad_records == local.bad_records == [5, 20]
    assert_same(got, want)
    damaged = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(damaged) == 4 and all("is damaged" in m for m in damaged)     # each record once per loader
    with pytest.raises(DecodeError) as here:
        epochs(loader.ImageLoader(copy, **kw), 1)
    with service_loader(copy, 2, **kw) as remote:               # on_error="raise", the default
        with pytest.raises(DecodeError) as there:
            epochs(remote, 1)
    assert str(there.value) == str(here.value)
    assert str(here.value).startswith("record 5 (shard ") and "its stored bytes do not match" in str(here.value)


def test_a_pool_that_cannot_be_placed_is_one_line(packed, ray_connected):  # noqa: F811
    import ray

    before = ray.available_resources().get("CPU", 0)
    with pytest.raises(ServiceError, match=r"^3 decode actors of num_cpus=1.0 were not ready within timeout=3 s "
                                           r"\([\d.]+ CPUs free in the Ray cluster now\): lower num_workers") as info:
        loader.ImageLoader(packed, batch_size=4, **KW, service=loader.RayService(num_workers=3, timeout=3))
    assert "\n" not in str(info.value)
    for _ in range(100):                                          # its actors were killed: the CPUs come back
        if ray.available_resources().get("CPU", 0) >= before:
            break
        import time

        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) >= before


UNREACHABLE = """
import sys, loader
try:
    loader.ImageLoader(sys.argv[1], batch_size=4, device="cpu",
                       service=loader.RayService(num_workers=1, address="127.0.0.1:1"))
except loader.ServiceError as e:
    print("ServiceError:", e)
"""


def test_an_unreachable_cluster_is_one_line_and_import_loader_imports_no_ray(packed):
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    r = subprocess.run([sys.executable, "-c", UNREACHABLE, str(packed)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ServiceError: no Ray cluster answers at 127.0.0.1:1 (") and r.stdout.count("\n") == 1
    assert "`ray start --head`" in r.stdout
    code = ("import sys, loader, loader.service.client, loader.load.imageloader; "
            "loader.RayService(num_workers=2); print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.stdout.strip() == "False", r.stderr[-2000:]


@pytest.mark.parametrize("kwargs, param", [
    (dict(num_workers=0), "num_workers"), (dict(num_workers=True), "num_workers"),
    (dict(num_workers="2"), "num_workers"),
    (dict(num_workers=1, address=3), "address"), (dict(num_workers=1, address=" "), "address"),
    (dict(num_workers=1, num_cpus=0), "num_cpus"), (dict(num_workers=1, num_cpus=float("nan")), "num_cpus"),
    (dict(num_workers=1, num_threads=0), "num_threads"), (dict(num_workers=1, in_flight=1.5), "in_flight"),
    (dict(num_workers=1, timeout=0), "timeout"), (dict(num_workers=1, timeout=float("inf")), "timeout"),
    (dict(num_workers=1, max_replacements=-1), "max_replacements")])
def test_ray_service_settings_are_checked_naming_the_parameter(kwargs, param):
    with pytest.raises(ArgumentError) as info:
        loader.RayService(**kwargs)
    assert info.value.param == param and param in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TypeError):
        loader.RayService(2)                                        # keyword-only
    s = loader.RayService(num_workers=3, num_cpus=2)
    assert (s.num_threads, s.in_flight) == (2, 6)


def test_bench_service_rows_report_bytes_per_image_and_the_wait(packed, ray_connected):  # noqa: F811
    from loader.bench import BenchSettings, bench, format_table

    settings = BenchSettings(pipelines=("loader", "service"), service_workers=(1, 2), batch_sizes=(8,),
                             image_sizes=(32,), batches=3, repeats=1, warmup=1, threads=1, device="cpu",
                             settle=False)
    rows = bench(packed, settings, progress=False)
    assert [r.pipeline for r in rows] == ["loader", "service (1 actor)", "service (2 actors)"]
    assert [r.service_workers for r in rows] == [None, 1, 2]
    for r in rows[1:]:
        assert r.images == 24 and r.images_per_sec > 0
        assert r.bytes_per_image == 32 * 32 * 3 + 8          # uint8 pixels and the int64 record index
        assert 0 <= r.wait_share <= 1 and r.trainer_ms_per_batch > 0
    assert "service (2 actors)" in format_table(rows)
    import ray

    assert ray.is_initialized()                             # a connected process's Ray is left as it was
    with pytest.raises(ArgumentError) as info:
        BenchSettings(pipelines=("service",), service_workers=(0,))
    assert info.value.param == "service_workers"
