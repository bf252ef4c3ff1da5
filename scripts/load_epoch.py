"""Load one epoch of a packed dataset with ImageLoader and print what came out and how fast.

    python scripts/load_epoch.py DST [--batch-size 64] [--image-size 224] [--eval]
"""

from __future__ import annotations

import argparse
import sys
import time

from loader import ImageLoader
from loader.errors import LoaderError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dst", help="a directory written by `loader pack`")
    ap.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    ap.add_argument("--image-size", type=int, default=224, help="output height/width (default 224)")
    ap.add_argument("--eval", action="store_true", help="eval pipeline (centre crop, no shuffle)")
    args = ap.parse_args(argv)
    try:
        t0 = time.perf_counter()
        ld = ImageLoader(args.dst, batch_size=args.batch_size, image_size=args.image_size,
                         train=not args.eval)
        it = iter(ld)
        images, labels = next(it)
        t1 = time.perf_counter()
        n = len(labels)
        for images, labels in it:  # noqa: B007 - the last batch's shape is printed below
            n += len(labels)
        t2 = time.perf_counter()
    except (LoaderError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    steady = n - args.batch_size
    rate = steady / (t2 - t1) if steady > 0 and t2 > t1 else float("nan")
    print(f"{ld}")
    print(f"one epoch: {n} images in {len(ld)} batches of {tuple(images.shape)} {images.dtype} "
          f"on {images.device}; first batch after {t1 - t0:.2f} s, then {rate:.0f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
