"""Lightning DDP ``fit`` with ImageLoaders that decode on the Ray decode service; run by
tests/test_service_trainers.py (not collected by pytest).

    python lightning_service.py PACKED OUT_DIR RAY_ADDRESS DEVICES

The loaders are built before ``fit`` (in every rank: Lightning's launcher re-runs this script for
rank 1), each with its own ``RayService`` of one actor on the test cluster at RAY_ADDRESS. Each
rank writes OUT_DIR/rank<R>.json: the record indices it trained and validated on per epoch, and a
SHA-256 per batch of its images and labels (compared with the local loader's by the test).
"""

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch

import loader

PACKED, OUT, ADDRESS, DEVICES = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
KW = dict(batch_size=4, image_size=16, with_indices=True, device="cpu", num_threads=1, seed=11,
          validation_split=0.25)


def service():
    # Half a CPU per actor: 2 ranks x 2 loaders fit the 2-CPU test cluster.
    return loader.RayService(num_workers=1, address=ADDRESS, num_cpus=0.5, timeout=120)


def digest(x, y) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes() + y.numpy().tobytes()).hexdigest()


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 3)
        self.seen = {"train": {}, "val": {}}
        self.digests = {"train": {}, "val": {}}

    def _log(self, part, key, batch):
        x, y, idx = batch
        self.seen[part].setdefault(key, []).extend(idx.tolist())
        self.digests[part].setdefault(key, []).append(digest(x, y))

    def training_step(self, batch, _):
        self._log("train", str(self.current_epoch), batch)
        x, y, _idx = batch
        return torch.nn.functional.cross_entropy(self.net(x.mean((2, 3))), y)

    def validation_step(self, batch, _):
        self._log("val", "sanity" if self.trainer.sanity_checking else str(self.current_epoch), batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_fit_end(self):
        train = self.trainer.train_dataloader
        (OUT / f"rank{self.global_rank}.json").write_text(json.dumps({
            "rank": self.global_rank, "world": self.trainer.world_size, "len": len(train),
            "loader_rank": train.rank, "loader_world": train.world_size, "seen": self.seen,
            "digests": self.digests, "service_batches": train._service.stats["batches"]}))


train = loader.ImageLoader(PACKED, subset="training", service=service(), **KW)
val = loader.ImageLoader(PACKED, train=False, subset="validation", service=service(), **KW)
trainer = L.Trainer(accelerator="cpu", devices=DEVICES, strategy="ddp" if DEVICES > 1 else "auto", max_epochs=2,
                    num_sanity_val_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
trainer.fit(Model(), train, val)
train.close()
val.close()
