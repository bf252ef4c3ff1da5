"""``loader show DST``: write one batch, as the model sees it, to a PNG grid (:mod:`loader.check.show`)."""

from __future__ import annotations

import argparse
import sys

from loader.cli.common import check_output_files, emit_json, report_stream
from loader.cli.flags import add_shared
from loader.errors import ArgumentError

__all__ = ["add_show"]


def _pair(text: str, name: str) -> tuple[float, float]:
    """``"0.35,1"`` -> ``(0.35, 1.0)``."""
    try:
        lo, hi = (float(p) for p in str(text).split(","))
    except ValueError:
        raise ArgumentError(f"{name} must be two numbers MIN,MAX, got {text!r}", param=name) from None
    return lo, hi


def _cmd_show(args: argparse.Namespace) -> int:
    from loader.augment.settings import Augment
    from loader.check.show import default_output, show

    out = args.path or str(default_output(args.source, args.epoch, args.batch))
    check_output_files({"--out": out, "--json": args.json})
    aug = {"hflip": args.hflip, "crop_fraction": args.crop_fraction, "eval_mode": args.eval_mode,
           "color_mode": args.color_mode}
    if args.scale is not None:
        aug["scale"] = _pair(args.scale, "scale")
    if args.ratio is not None:
        aug["ratio"] = _pair(args.ratio, "ratio")
    if args.color_jitter:
        aug["color_jitter"] = args.color_jitter
    kwargs = {"batch_size": args.batch_size, "image_size": args.image_size, "train": args.train,
              "seed": args.seed, "device": args.device, "augment": Augment(**aug)}
    if args.batch_transform is not None:
        from loader.advisor.modelspec import call_factory, load_factory
        from loader.format.dataset import open_dataset

        factory = load_factory(args.batch_transform, flag="--batch-transform")
        classes = len(open_dataset(args.source).classes)
        kwargs["batch_transform"] = call_factory(factory, classes, spec=args.batch_transform,
                                                 flag="--batch-transform")
    grid = show(args.source, epoch=args.epoch, batch=args.batch, path=out, columns=args.columns,
                compare_torchvision=args.compare_torchvision, **kwargs)
    tiles = grid.info["tiles"]
    stream = report_stream(args.json)
    if grid.info.get("torchvision") == "not importable":
        print("note: --compare-torchvision: torchvision is not importable here; the grid has the loader's row only",
              file=sys.stderr)
    for t in tiles:
        diff = "" if t.max_abs_diff is None else f"  max |loader - torchvision| = {t.max_abs_diff}"
        print(f"{t.position:>3}  record {t.record:<8} {t.labels:<24} {t.source}{diff}", file=stream)
    print(f"wrote {out} ({len(tiles)} images, epoch {args.epoch}, batch {args.batch})", file=stream)
    emit_json(args.json, {"path": out, "epoch": args.epoch, "batch": args.batch, "torchvision": grid.info.get(
        "torchvision"), "tiles": [{"position": t.position, "record": t.record, "labels": t.labels,
                                   "source": t.source, "box": list(t.box), "max_abs_diff": t.max_abs_diff}
                                  for t in tiles]})
    return 0


def add_show(sub: argparse._SubParsersAction) -> None:
    """The ``show`` sub-command."""
    p = sub.add_parser("show", help="write one batch as the model sees it (denormalized, labelled) to a PNG grid",
                       description="Build the ImageLoader a training script would (the flags below are its "
                       "arguments), take batch K of epoch E, undo the normalization and write a PNG grid: "
                       "each image with its class name(s) (or the top two soft targets after "
                       "--batch-transform), record index and source file. Nothing before batch K is decoded.")
    p.add_argument("source", metavar="DST", help="packed dataset folder (made by `loader pack`)")
    add_shared(p, "--eval", "(ImageLoader(train=False))", dest="train", action="store_false")
    p.add_argument("--epoch", type=int, default=0, metavar="E", help="the epoch, >= 0 (default: 0)")
    p.add_argument("--batch", type=int, default=0, metavar="K",
                   help="the batch of that epoch, >= 0 (default: 0; past the end says how many there are)")
    add_shared(p, "--batch-size", "(default: 16)", type=int, default=16)
    add_shared(p, "--image-size", "(default: 224)", type=int, default=224)
    add_shared(p, "--seed", "(default: 0, as ImageLoader's)", type=int, default=0)
    add_shared(p, "--device", "(default: cpu)", default="cpu")
    p.add_argument("--out", metavar="FILE.png", dest="path",
                   help="where to write the grid (default: ./show-<dataset>-e<E>-b<K>.png, never inside DST)")
    add_shared(p, "--json", "the tiles: record, labels, source, box")
    p.add_argument("--columns", type=int, metavar="N", help="tiles per row (default: a square grid, at most 8)")
    p.add_argument("--scale", metavar="MIN,MAX", help="RandomResizedCrop's area fraction (default: 0.08,1)")
    p.add_argument("--ratio", metavar="MIN,MAX", help="RandomResizedCrop's aspect ratio w/h (default: 0.75,1.333)")
    p.add_argument("--hflip", type=float, default=0.5, metavar="P", help="flip probability (default: 0.5)")
    add_shared(p, "--color-jitter", "(default: 0, off)", type=float, default=0.0)
    p.add_argument("--crop-fraction", type=float, default=0.875, metavar="F",
                   help="eval's centre crop as a fraction of the resized shorter side (default: 0.875)")
    add_shared(p, "--eval-mode", "(default: fast)", choices=("fast", "torchvision"), default="fast")
    p.add_argument("--color-mode", choices=("rgb", "grayscale"), default="rgb", help="(default: rgb)")
    p.add_argument("--batch-transform", metavar="MODULE:CALLABLE",
                   help="a factory returning your batch transform f(images, targets, generator) (called with "
                   "num_classes= when it takes it), e.g. scripts.mixup_cutmix:MixupCutmix")
    p.add_argument("--compare-torchvision", action="store_true",
                   help="a second row per tile: torchvision's transforms on the same source and crop window "
                   "(eval: the largest pixel difference is printed per tile); needs torchvision")
    p.set_defaults(func=_cmd_show)
