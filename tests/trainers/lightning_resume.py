"""Lightning mid-epoch resume from its own checkpoint; run by tests/test_trainers.py (not collected by pytest).

    python lightning_resume.py PACKED OUT_DIR first|resume

``first``: fit with a ModelCheckpoint every 5 steps and a crash after step 8; ``resume``:
fit(ckpt_path=the step-5 checkpoint). Lightning stores ``ImageLoader.state_dict()`` in the
checkpoint and hands it back to ``load_state_dict``. Writes OUT_DIR/<mode>.json: the record
indices trained per epoch.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

import loader

PACKED, OUT, MODE = sys.argv[1], Path(sys.argv[2]), sys.argv[3]


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 3)
        self.seen = {}

    def training_step(self, batch, _):
        x, y, idx = batch
        self.seen.setdefault(str(self.current_epoch), []).extend(idx.tolist())
        return torch.nn.functional.cross_entropy(self.net(x.mean((2, 3))), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Crash(Exception):
    pass


class CrashAfter8(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 8:
            raise Crash


train = loader.ImageLoader(PACKED, batch_size=4, image_size=16, with_indices=True, device="cpu", num_threads=1,
                           seed=11)
model = Model()
kw = dict(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
          enable_model_summary=False, default_root_dir=str(OUT))
if MODE == "first":
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=OUT, filename="step5", every_n_train_steps=5, save_top_k=1)
    try:
        L.Trainer(callbacks=[ckpt, CrashAfter8()], **kw).fit(model, train)
    except Crash:
        pass
else:
    L.Trainer(enable_checkpointing=False, **kw).fit(model, train, ckpt_path=str(OUT / "step5.ckpt"))
(OUT / f"{MODE}.json").write_text(json.dumps({"seen": model.seen, "len": len(train)}))
