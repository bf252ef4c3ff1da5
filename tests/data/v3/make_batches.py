"""Batches of loader 0.2.0 on tests/data/v3/packed: sha256 per batch (images), labels, indices."""
import hashlib
import json
import sys

import torch

import loader

path = "tests/data/v3/packed"
out = {}
for name, kw in {"train_uint8": dict(train=True, dtype=torch.uint8, mean=None, std=None),
                 "train_float32": dict(train=True),
                 "eval_uint8": dict(train=False, dtype=torch.uint8, mean=None, std=None),
                 "eval_float32": dict(train=False)}.items():
    ld = loader.ImageLoader(path, batch_size=4, image_size=32, seed=3, device="cpu", with_indices=True, **kw)
    epochs = []
    for e in range(2):
        ld.set_epoch(e)
        epochs.append([[hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest(), y.tolist(), i.tolist()]
                       for x, y, i in ld])
    ld.close()
    out[name] = epochs
json.dump({"loader_version": loader.__version__, "path": path, "batch_size": 4, "image_size": 32, "seed": 3,
           "batches": out}, open(sys.argv[1], "w"), indent=1)
