"""A Hugging Face accelerate training loop with ImageLoaders; run by tests/test_trainers.py.

    torchrun --standalone --nproc-per-node 2 accelerate_loop.py PACKED OUT_DIR
    python accelerate_loop.py PACKED OUT_DIR debug_launcher     # accelerate's own 2-process CPU launcher

``accelerator.prepare`` hands an ImageLoader back as it is (it wraps only torch DataLoaders);
the loader takes its rank from the process group the Accelerator started. Two epochs with a
validation pass between them; each rank writes OUT_DIR/rank<R>.json.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

import loader

PACKED, OUT = sys.argv[1], Path(sys.argv[2])
KW = dict(batch_size=4, image_size=16, with_indices=True, device="cpu", num_threads=1, seed=11,
          validation_split=0.25)


def main():
    train = loader.ImageLoader(PACKED, subset="training", **KW)      # built before the Accelerator
    acc = Accelerator(cpu=True)
    val = loader.ImageLoader(PACKED, train=False, subset="validation", **KW)
    model = torch.nn.Linear(3, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, prepared_train, prepared_val = acc.prepare(model, opt, train, val)
    seen = {"train": {}, "val": {}}
    for epoch in range(2):
        prepared_train.set_epoch(epoch)
        for x, y, idx in prepared_train:
            loss = torch.nn.functional.cross_entropy(model(x.mean((2, 3))), y)
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
            seen["train"].setdefault(str(epoch), []).extend(idx.tolist())
        with torch.no_grad():
            for x, _y, idx in prepared_val:
                model(x.mean((2, 3)))
                seen["val"].setdefault(str(epoch), []).extend(idx.tolist())
    (OUT / f"rank{acc.process_index}.json").write_text(json.dumps({
        "rank": acc.process_index, "world": acc.num_processes, "len": len(prepared_train),
        "returned_as_is": prepared_train is train and prepared_val is val,
        "loader_rank": train.rank, "loader_world": train.world_size, "seen": seen}))
    acc.end_training()


if __name__ == "__main__":
    if sys.argv[3:] == ["debug_launcher"]:
        from accelerate import debug_launcher

        debug_launcher(main, num_processes=2)
    else:
        main()
