"""Train a small CNN on a generated photo-like dataset, fed by ImageLoader or the standard DataLoader.

    python scripts/train_example.py --loader loader       # loader.ImageLoader on packed shards (DALI)
    python scripts/train_example.py --loader dataloader   # torch DataLoader + PIL transforms (baseline)

Both feed the same training pipeline (random-resized-crop, flip, normalize) to
the same model; only the input pipeline differs. Without --data the dataset is
generated once (scripts/make_dataset.py) under .cache/train-example/ and packed
next to it. Prints the loss every --log-every steps with the images/s of the
whole training loop and the share of time spent waiting for data. Exits with
status 1 if training did not reduce the loss (mean of the last 20 steps not
below the mean of the first 20).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:   # run as a script: make `loader` and `scripts` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from loader.format.manifest import MANIFEST_NAME  # noqa: E402
from loader.units import available_cores  # noqa: E402

WINDOW = 20


def small_cnn(num_classes: int) -> nn.Module:
    """Four strided conv blocks, global average pooling, a linear classifier (~60k parameters)."""
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def prepare_data(args) -> tuple[Path, Path]:
    """(image folder, packed dataset), generating and packing them if needed."""
    from loader.convert.packing import pack
    from loader.synthetic import make_dataset

    if args.data is None:
        data = ROOT / ".cache" / "train-example" / f"photos-{args.classes}x{args.per_class}"
        if not (data.is_dir() and sum(1 for _ in data.glob("class_*/*.jpg")) ==
                args.classes * args.per_class):
            print(f"generating {args.classes} x {args.per_class} images into {data} ...", flush=True)
        make_dataset(data, classes=args.classes, per_class=args.per_class, seed=args.seed)
    else:
        data = Path(args.data)
        if not data.is_dir():
            raise SystemExit(f"error: --data {data} is not a folder")
    packed = Path(args.packed) if args.packed else data.with_name(data.name + ".packed")
    if not (packed / MANIFEST_NAME).is_file():
        print(f"packing {data} into {packed} ...", flush=True)
        print(pack(data, packed, progress=False).summary(), flush=True)
    return data, packed


def make_loader(args, data: Path, packed: Path, device: torch.device):
    """The input pipeline and its number of classes."""
    if args.loader == "loader":
        from loader import ImageLoader

        loader = ImageLoader(packed, args.batch_size, image_size=args.image_size, train=True,
                             seed=args.seed, device=device, num_threads=args.threads)
        return loader, len(loader.format.dataset.classes)
    from loader.bench.baseline import ImageFolderDataset, baseline_loader

    ds = ImageFolderDataset(data, size=args.image_size, train=True, seed=args.seed)
    return baseline_loader(ds, args.batch_size, workers=args.workers, train=True, seed=args.seed), len(ds.classes)


def batches_forever(loader):
    """Batches across epochs (each ``iter()`` is a new epoch)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the loader yields no batches: lower --batch-size")


def main(argv: list[str] | None = None) -> int:
    cores = available_cores()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loader", choices=("loader", "dataloader"), default="loader",
                    help="input pipeline: loader.ImageLoader or the standard DataLoader (default: loader)")
    ap.add_argument("--data", help="image folder (default: generate one under .cache/train-example/)")
    ap.add_argument("--packed", help="packed copy of --data (default: DATA.packed; packed if missing)")
    ap.add_argument("--classes", type=int, default=10, help="classes of the generated dataset (default 10)")
    ap.add_argument("--per-class", type=int, default=60, help="images per class when generating (default 60)")
    ap.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    ap.add_argument("--image-size", type=int, default=64, help="training resolution (default 64)")
    ap.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3)")
    ap.add_argument("--log-every", type=int, default=25, help="print every N steps (default 25)")
    ap.add_argument("--workers", type=int, default=cores, help=f"DataLoader workers (default {cores})")
    ap.add_argument("--threads", type=int, default=cores, help=f"ImageLoader DALI threads (default {cores})")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.steps < 2 * WINDOW:
        ap.error(f"--steps must be at least {2 * WINDOW} (the loss check compares the first and "
                 f"last {WINDOW} steps)")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(args.seed)
    data, packed = prepare_data(args)
    loader, num_classes = make_loader(args, data, packed, device)
    model = small_cnn(num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    print(f"training a small CNN for {args.steps} steps: --loader {args.loader}, batch {args.batch_size}, "
          f"{args.image_size} px, {num_classes} classes, device {device}", flush=True)

    losses: list[float] = []
    images_total = 0
    wait = 0.0                       # time blocked on the input pipeline
    t_start = t_log = time.perf_counter()
    images_log, wait_log = 0, 0.0
    stream = batches_forever(loader)
    model.train()
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        images, labels = next(stream)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        dt = time.perf_counter() - t0
        wait += dt
        wait_log += dt
        loss = loss_fn(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())      # syncs with the device: the step is done
        images_total += int(labels.shape[0])
        images_log += int(labels.shape[0])
        if step % args.log_every == 0 or step == args.steps:
            now = time.perf_counter()
            recent = losses[-args.log_every:]
            print(f"step {step:5d}  loss {sum(recent) / len(recent):.4f}  "
                  f"{images_log / (now - t_log):7.1f} images/s  "
                  f"waiting for data {100 * wait_log / (now - t_log):4.0f}%", flush=True)
            t_log, images_log, wait_log = now, 0, 0.0
    elapsed = time.perf_counter() - t_start
    if hasattr(loader, "close"):
        loader.close()
    del stream

    first = sum(losses[:WINDOW]) / WINDOW
    last = sum(losses[-WINDOW:]) / WINDOW
    print(f"done: {images_total} images in {elapsed:.1f} s = {images_total / elapsed:.1f} images/s "
          f"({100 * wait / elapsed:.0f}% waiting for data) with --loader {args.loader}")
    print(f"loss: first {WINDOW} steps {first:.4f} -> last {WINDOW} steps {last:.4f}")
    if not last < first:
        print("FAIL: the loss did not go down", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
