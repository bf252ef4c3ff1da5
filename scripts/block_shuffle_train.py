"""Global vs block shuffle, same model, same seed: held-out top-1 (the table in docs/remote.md#shuffle).

    loader pack .cache/quickstart/images /tmp/qs6 --shards 6
    .venv/bin/python scripts/block_shuffle_train.py /tmp/qs6 global 0 0 15
    .venv/bin/python scripts/block_shuffle_train.py /tmp/qs6 block 3 0 15      # windows of 3 shards
    loader pack .cache/quickstart/images /tmp/qs6s --shards 6 --shuffle-seed 0  # shards mix the classes

Arguments: PACK MODE WINDOW SEED EPOCHS. 20% of PACK (split by SEED) is held out; the rest trains
scripts/train_example.py's small CNN (AdamW 3e-3, batch 32, 64 px) on the CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:   # run as a script: make `loader` and `scripts` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from loader import ImageLoader  # noqa: E402
from scripts.train_example import small_cnn  # noqa: E402


def main() -> None:
    pack, mode, window, seed, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    kw = dict(batch_size=32, image_size=64, device="cpu", seed=seed, validation_split=0.2, num_threads=1)
    order = dict(shuffle="block", block_shards=window) if mode == "block" else dict(shuffle="global")
    train = ImageLoader(pack, subset="training", **kw, **order)
    val = ImageLoader(pack, subset="validation", train=False, **kw)
    model = small_cnn(len(train.dataset.manifest.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = time.time()
    for epoch in range(epochs):
        train.set_epoch(epoch)
        model.train()
        for x, y in train:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in val:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    print(f"{pack} {mode} W={window} seed={seed} epochs={epochs}: top1={correct / total:.3f} "
          f"({correct}/{total}) {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
