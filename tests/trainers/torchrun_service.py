"""A plain torchrun training loop (2 ranks, gloo) with ImageLoaders that decode on the Ray decode
service; run by tests/test_service_trainers.py (not collected by pytest).

    torchrun --standalone --nproc-per-node 2 torchrun_service.py PACKED OUT_DIR RAY_ADDRESS

Each rank builds its loaders before the process group (the rank is read when an epoch starts),
each with its own ``RayService`` of one actor on the test cluster at RAY_ADDRESS. Two epochs, a
validation pass after each, a gloo all-reduce per training batch (as DDP's gradients: it hangs if
the ranks disagree on the batch count). Each rank writes OUT_DIR/rank<R>.json: the record indices
per epoch and a SHA-256 per batch of its images and labels.
"""

import datetime
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import loader

PACKED, OUT, ADDRESS = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
KW = dict(batch_size=4, image_size=16, with_indices=True, device="cpu", num_threads=1, seed=11,
          validation_split=0.25)


def service():
    # Half a CPU per actor: 2 ranks x 2 loaders fit the 2-CPU test cluster.
    return loader.RayService(num_workers=1, address=ADDRESS, num_cpus=0.5, timeout=120)


def digest(x, y) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes() + y.numpy().tobytes()).hexdigest()


def main():
    train = loader.ImageLoader(PACKED, subset="training", service=service(), **KW)
    val = loader.ImageLoader(PACKED, train=False, subset="validation", service=service(), **KW)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    seen = {"train": {}, "val": {}}
    digests = {"train": {}, "val": {}}
    for epoch in range(2):
        train.set_epoch(epoch)
        for x, y, idx in train:
            t = torch.tensor([len(idx)])
            dist.all_reduce(t)
            seen["train"].setdefault(str(epoch), []).extend(idx.tolist())
            digests["train"].setdefault(str(epoch), []).append(digest(x, y))
        for x, y, idx in val:
            seen["val"].setdefault(str(epoch), []).extend(idx.tolist())
            digests["val"].setdefault(str(epoch), []).append(digest(x, y))
    rank, world = dist.get_rank(), dist.get_world_size()
    (OUT / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "len": len(train), "loader_rank": train.rank,
        "loader_world": train.world_size, "seen": seen, "digests": digests,
        "service_batches": train._service.stats["batches"]}))
    train.close()
    val.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
