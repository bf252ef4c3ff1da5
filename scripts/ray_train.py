"""ImageLoader under Ray Train: TorchTrainer workers, the loader's state_dict() in Ray's checkpoints,
the exact rest of the epoch after a worker failure.

    python scripts/ray_train.py                      # local Ray, 2 CPU workers, a generated dataset
    python scripts/ray_train.py --kill-after-step 3  # the last rank SIGKILLs itself once after step 3:
                                                     # Ray restarts the workers from the last checkpoint
    python scripts/ray_train.py --address auto --data photos.packed --workers 8 --gpu --batch-size 64

Each worker builds its own ``ImageLoader`` with no ``rank=`` / ``world_size=``: it takes them from the
process group Ray Train set up (gloo on CPUs, NCCL with ``--gpu``). Every ``--checkpoint-every`` steps
and at each epoch's end, rank 0 saves the model, the optimizer and ``loader.state_dict()`` into the
checkpoint it passes to ``ray.train.report`` (the other ranks report without one). On a restart,
``ray.train.get_checkpoint()`` hands that checkpoint to every worker, each loads rank 0's loader state,
and the loop continues in the saved epoch after its last checkpointed batch.
Without ``--data`` the dataset is generated once under .cache/ray-train/ and packed next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:   # run as a script: make `loader` importable from a checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

RAY_MISSING = "scripts/ray_train.py needs Ray Train: pip install 'loader[ray]' 'ray[train]'"
STATE_FILE = "state.pt"


def tiny_cnn(num_classes: int) -> nn.Module:
    """Two strided convolutions and a linear head: the model is not the point here."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def model_for(train) -> nn.Module:
    """The model for ``train``'s classes. Its own function: cloudpickle, sending the worker loop by
    value, pickles ``torch.X`` for every attribute name X the loop uses next to the global ``torch``,
    and ``torch.classes`` cannot be pickled ("cannot pickle '_Classes' object")."""
    return tiny_cnn(len(train.dataset.classes))


def process_group() -> str | None:
    """The backend of this process's ``torch.distributed`` process group ("gloo", "nccl"), None without one."""
    dist = torch.distributed
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: ``config`` holds packed, epochs, batch_size, image_size, seed, lr, threads,
    checkpoint_every, and optionally log_dir (each step's record indices, one JSON line per step in
    ``log_dir/rank{R}.jsonl``), kill_after_step and marker (the fault injection, see ``--kill-after-step``)."""
    import ray.train
    import ray.train.torch

    import loader

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # No rank= / world_size=: the loader reads them from the process group Ray Train started.
    train = loader.ImageLoader(config["packed"], batch_size=config["batch_size"], image_size=config["image_size"],
                               seed=config["seed"], device=str(device), num_threads=config["threads"],
                               with_indices=True)
    model = model_for(train)
    step, resumed_from, saved = 0, None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:       # a restart: every rank loads rank 0's checkpoint
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        train.load_state_dict(saved["loader"])
        step = resumed_from = saved["step"]
    # The epoch the loader runs next: 0, or the restored one (the next, if saved after an epoch's last batch).
    start_epoch = train.state_dict()["epoch"]
    model = ray.train.torch.prepare_model(model)        # DDP: the ranks step in lockstep
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    if saved is not None:
        opt.load_state_dict(saved["optimizer"])
    log = None
    if config.get("log_dir"):
        log = open(Path(config["log_dir"]) / f"rank{rank}.jsonl", "a")  # noqa: SIM115 - closed below

    def report(epoch: int, loss: float) -> None:
        metrics = {"epoch": epoch, "step": step, "loss": loss}
        if rank != 0:                # every rank reports (Ray waits for all); rank 0's checkpoint is the one
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": model.module.state_dict(), "optimizer": opt.state_dict(),
                        "loader": train.state_dict(), "step": step}, Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    try:
        for epoch in range(start_epoch, config["epochs"]):
            train.set_epoch(epoch)   # after a restore, the restored epoch: its position is kept
            loss = float("nan")
            for images, labels, idx in train:
                loss_t = nn.functional.cross_entropy(model(images), labels)
                opt.zero_grad(set_to_none=True)
                loss_t.backward()
                opt.step()
                loss, step = loss_t.item(), step + 1
                if log is not None:
                    log.write(json.dumps({"rank": rank, "world": world, "loader_rank": train.rank,
                                          "loader_world": train.world_size, "backend": process_group(),
                                          "epoch": epoch, "step": step,
                                          "resumed_from": resumed_from, "records": idx.tolist()}) + "\n")
                    log.flush()      # survives the SIGKILL below
                if step % config["checkpoint_every"] == 0:
                    report(epoch, loss)
                if step == config.get("kill_after_step") and rank == world - 1 and not Path(config["marker"]).exists():
                    # Wait until the controller has registered every checkpoint reported so far, so the
                    # restart resumes from the last one for certain, then die as a crashed worker does.
                    ray.train.get_all_reported_checkpoints(timeout_s=60)
                    Path(config["marker"]).touch()
                    os.kill(os.getpid(), signal.SIGKILL)
            if step % config["checkpoint_every"]:
                report(epoch, loss)  # every epoch's end is a checkpoint too
    finally:
        if log is not None:
            log.close()
        train.close()


def make_trainer(config: dict[str, Any], *, storage_path: str | os.PathLike, name: str, num_workers: int = 2,
                 use_gpu: bool = False, cpus_per_worker: float = 1.0, max_failures: int = 1, keep: int = 2):
    """A ``TorchTrainer`` running :func:`train_loop_per_worker` with ``config`` on ``num_workers`` workers,
    its run under ``storage_path/name`` (shared by all nodes), restarted at most ``max_failures`` times
    from its last checkpoint, keeping the last ``keep`` checkpoints."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop_per_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(storage_path),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep)))


def prepare_data(classes: int, per_class: int, seed: int) -> Path:
    """The generated dataset under .cache/ray-train/, packed (both made once)."""
    import loader
    from loader.format.manifest import MANIFEST_NAME
    from loader.synthetic import make_dataset

    src = ROOT / ".cache" / "ray-train" / f"photos-{classes}x{per_class}"
    packed = src.with_name(src.name + ".packed")
    if not (packed / MANIFEST_NAME).is_file():
        print(f"generating and packing {classes} x {per_class} images into {packed} ...", flush=True)
        make_dataset(src, classes=classes, per_class=per_class, seed=seed)
        loader.pack(src, packed, progress=False)
    return packed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="a packed dataset (default: generate and pack one under .cache/ray-train/)")
    ap.add_argument("--classes", type=int, default=4, help="classes of the generated dataset (default 4)")
    ap.add_argument("--per-class", type=int, default=48, help="images per class when generating (default 48)")
    ap.add_argument("--address", help="a running Ray cluster ('auto', or host:port); default: start a local "
                    "one on 127.0.0.1 with --workers x --cpus-per-worker CPUs")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers, one rank each (default 2)")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker reserves (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="DALI threads per worker (default 1)")
    ap.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL; batches decoded on it)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    ap.add_argument("--batch-size", type=int, default=16, help="batch size per worker (default 16)")
    ap.add_argument("--image-size", type=int, default=64, help="training resolution (default 64)")
    ap.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    ap.add_argument("--seed", type=int, default=0, help="the loader's seed, the same on every rank (default 0)")
    ap.add_argument("--checkpoint-every", type=int, default=2,
                    help="report a checkpoint every N steps, and at every epoch's end (default 2)")
    ap.add_argument("--max-failures", type=int, default=1, help="worker-group restarts allowed (default 1)")
    ap.add_argument("--kill-after-step", type=int, default=None,
                    help="fault-injection demo: the last rank SIGKILLs itself after this step, once per run "
                    "(a marker file in the run folder stops the restarted workers from doing it again)")
    ap.add_argument("--storage", default=str(ROOT / ".cache" / "ray-train" / "runs"),
                    help="Ray Train's storage_path: checkpoints and results, visible to every node "
                    "(default .cache/ray-train/runs)")
    ap.add_argument("--name", help="the run's folder under --storage (default: ray-train-DATE-TIME, a new run); "
                    "an existing run's name continues it from its last checkpoint (Ray Train restores it)")
    ap.add_argument("--log-dir", help="append each step's record indices per rank to DIR/rank{R}.jsonl")
    args = ap.parse_args(argv)
    for flag in ("workers", "epochs", "batch_size", "image_size", "checkpoint_every", "threads"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1")

    packed = Path(args.data) if args.data else prepare_data(args.classes, args.per_class, args.seed)
    name = args.name or time.strftime("ray-train-%Y%m%d-%H%M%S")
    run_dir = Path(args.storage) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.log_dir:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    config = {"packed": str(Path(packed).resolve()), "epochs": args.epochs, "batch_size": args.batch_size,
              "image_size": args.image_size, "seed": args.seed, "lr": args.lr, "threads": args.threads,
              "checkpoint_every": args.checkpoint_every, "kill_after_step": args.kill_after_step,
              "marker": str(run_dir / "killed-once"),
              "log_dir": str(Path(args.log_dir).resolve()) if args.log_dir else None}
    if args.address is None:
        # A local demo: bind Ray to loopback. Read when ray is first imported; without it Ray asks the
        # network for this machine's address, which hangs on a machine with no route out.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.train.torch  # noqa: F401 - checks the train extra now, not in the workers
    except ImportError:
        print(f"error: {RAY_MISSING}", file=sys.stderr)
        return 2
    if args.address is None:
        # "local": start a new Ray; a bare ray.init() would join any cluster already running on this machine.
        ray.init(address="local", num_cpus=math.ceil(args.workers * args.cpus_per_worker))
    else:
        ray.init(address=args.address)
    try:
        trainer = make_trainer(config, storage_path=args.storage, name=name, num_workers=args.workers,
                               use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
                               max_failures=args.max_failures)
        result = trainer.fit()
    finally:
        ray.shutdown()
    print(f"done: {result.metrics}; last checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
