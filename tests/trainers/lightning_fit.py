"""Lightning ``fit`` with ImageLoaders on CPU/gloo; run by tests/test_trainers.py (not collected by pytest).

    python lightning_fit.py PACKED OUT_DIR before|hooks DEVICES

``before``: the loaders are built before ``fit`` and passed to it (the pattern Lightning's
docs show for DataLoaders); ``hooks``: built in ``train_dataloader()`` / ``val_dataloader()``.
Each rank writes OUT_DIR/rank<R>.json: the record indices it trained and validated on, per epoch.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

import loader

PACKED, OUT, MODE, DEVICES = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
KW = dict(batch_size=4, image_size=16, with_indices=True, device="cpu", num_threads=1)


def train_loader():
    return loader.ImageLoader(PACKED, seed=11, validation_split=0.25, subset="training", **KW)


def val_loader():
    return loader.ImageLoader(PACKED, train=False, seed=11, validation_split=0.25, subset="validation", **KW)


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 3)
        self.seen = {"train": {}, "val": {}}

    def training_step(self, batch, _):
        x, y, idx = batch
        self.seen["train"].setdefault(str(self.current_epoch), []).extend(idx.tolist())
        return torch.nn.functional.cross_entropy(self.net(x.mean((2, 3))), y)

    def validation_step(self, batch, _):
        x, y, idx = batch
        key = "sanity" if self.trainer.sanity_checking else str(self.current_epoch)
        self.seen["val"].setdefault(key, []).extend(idx.tolist())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_fit_end(self):
        train = self.trainer.train_dataloader
        (OUT / f"rank{self.global_rank}.json").write_text(json.dumps({
            "rank": self.global_rank, "world": self.trainer.world_size, "len": len(train),
            "loader_rank": train.rank, "loader_world": train.world_size, "seen": self.seen}))


class HookModel(Model):
    def train_dataloader(self):
        return train_loader()

    def val_dataloader(self):
        return val_loader()


trainer = L.Trainer(accelerator="cpu", devices=DEVICES, strategy="ddp" if DEVICES > 1 else "auto", max_epochs=2,
                    num_sanity_val_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
if MODE == "before":
    trainer.fit(Model(), train_loader(), val_loader())
else:
    trainer.fit(HookModel())
