"""Command line: ``loader pack | info | verify | bench | advise | doctor``.

User errors (bad input, bad dataset, bad option values) print one line,
``error: <message>``, and exit with status 2 -- no traceback. ``verify`` exits
with 1 when it finds bad records. Ctrl-C exits with 130.

    loader pack photos/ photos.packed --max-side 512
    loader info photos.packed --json
    loader verify photos.packed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from loader.errors import LoaderError
from loader.units import MB

__all__ = ["build_parser", "dataset_info", "main", "parse_sizes"]


def _epilog_pack() -> str:
    from loader.convert.imagecheck import STORAGE_POLICY

    return STORAGE_POLICY + "\nThe output is written to DST.partial-<pid> and renamed to DST when complete.\n"


def _cmd_pack(args: argparse.Namespace) -> int:
    from loader.convert.packing import pack

    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",")]
    report = pack(args.src, args.dst, shards=args.shards,
                  shard_size_mb=512 if args.shard_size_mb is None else args.shard_size_mb,
                  workers=args.workers, max_side=args.max_side, quality=args.quality,
                  overwrite=args.overwrite, strict=args.strict, progress=not args.quiet,
                  labels=args.labels, unlabeled=args.unlabeled, classes=classes,
                  classes_from=args.classes_from)
    print(report.summary())
    if report.num_skipped:
        from loader.format.manifest import SKIPPED_NAME

        print(f"skipped files and reasons: {os.path.join(report.dst, SKIPPED_NAME)}")
    return 0


def dataset_info(dst: str) -> dict:
    """What ``loader info --json`` prints, as a dict.

    >>> dataset_info("photos.packed")["num_records"]      # doctest: +SKIP
    3000
    """
    import numpy as np

    from loader.format.dataset import open_dataset

    ds = open_dataset(dst)
    m = ds.manifest
    # Per class: its records; multi-label: the records having it (a record's classes are unique).
    if m.multi_label:
        counts = np.bincount(m.label_values, minlength=len(m.classes)).tolist()
    elif m.classes:
        counts = np.bincount(m.labels, minlength=len(m.classes)).tolist()
    else:
        counts = []
    ds.close()
    return {
        "path": str(ds.path),
        "format": m.format,
        "version": m.version,
        "num_records": m.num_records,
        "num_skipped": m.skipped,
        "num_converted": m.num_converted(),
        "label_source": m.label_source,
        "multi_label": m.multi_label,
        "num_unlisted": m.unlisted,
        "classes": [{"label": i, "name": c, "count": counts[i]} for i, c in enumerate(m.classes)],
        "shards": [{"name": s.name, "first": s.first, "records": s.records, "values": s.entries,
                    "bytes": s.bytes, "file_bytes": os.path.getsize(ds.path / s.name)} for s in m.shards],
        # The index (manifest, columns, sources) and skipped.tsv: everything but the shards.
        "index_bytes": sum(p.stat().st_size for p in ds.path.iterdir()
                           if p.is_file() and p.name not in {s.name for s in m.shards}),
        "pack_params": m.pack_params,
    }


def _cmd_info(args: argparse.Namespace) -> int:
    info = dataset_info(args.dst)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"dataset   {info['path']}")
    print(f"records   {info['num_records']} (converted at pack time: {info['num_converted']}, "
          f"skipped files: {info['num_skipped']})")
    source = {"folders": "class folders", "file": "labels file", "none": "none (unlabeled)"}
    kind = "" if info["label_source"] == "none" else (
        ", multi-label" if info["multi_label"] else ", single-label")
    unlisted = (f", {info['num_unlisted']} files in SRC not listed (not packed)"
                if info["label_source"] == "file" else "")
    print(f"labels    {source.get(info['label_source'], info['label_source'])}{kind}{unlisted}")
    print(f"classes   {len(info['classes'])}" +
          (" (counts: records having the class)" if info["multi_label"] else ""))
    width = max((len(c["name"]) for c in info["classes"]), default=0)
    for c in info["classes"]:
        print(f"  {c['label']:>5}  {c['name']:<{width}}  {c['count']}")
    print(f"shards    {len(info['shards'])}")
    for s in info["shards"]:
        print(f"  {s['name']}  {s['records']} records from #{s['first']}, "
              f"{s['bytes'] / MB:.1f} MB of images, {s['file_bytes'] / MB:.1f} MB on disk")
    print(f"index     {info['index_bytes'] / MB:.1f} MB (manifest version {info['version']})")
    params = " ".join(f"{k}={v}" for k, v in info["pack_params"].items())
    print(f"packed    {params}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from loader.check.verify import verify

    bad = verify(args.dst, decode=not args.no_decode, progress=not args.quiet)
    for index, shard, key, source, reason in bad:
        print(f"record {index} ({shard} key {key:010d}, source {source}): {reason}")
    from loader.format.manifest import read_manifest

    n = read_manifest(args.dst).num_records
    print(f"verified {n} records in {args.dst}: {len(bad)} bad" +
          ("" if bad else " (all good)"))
    return 1 if bad else 0


def _add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack", help="convert an image folder into LMDB shards + manifest",
        description="Convert an image folder (one sub-folder per class, like torchvision's\n"
                    "ImageFolder) into LMDB shards plus manifest.json.",
        epilog=_epilog_pack(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="image folder with one sub-folder per class; class "
                   "labels follow the sorted folder names; files in nested folders count for their "
                   "class; hidden files are ignored (with --labels or --unlabeled: any folder of images)")
    p.add_argument("dst", metavar="DST", help="folder to create for the packed dataset (must not "
                   "exist unless --overwrite)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shards", type=int, metavar="N", help="number of shard files (default: one "
                   "per --shard-size-mb of input; never more than one per image)")
    g.add_argument("--shard-size-mb", type=float, metavar="MB", help="target input megabytes "
                   "(10^6 bytes) per shard when --shards is not given (default: 512)")
    p.add_argument("--workers", type=int, metavar="W", help="processes that decode and check "
                   "images (default: the CPU cores this process may use); the output is identical for any W")
    p.add_argument("--max-side", type=int, metavar="PX", help="downscale images so that "
                   "max(height, width) <= PX (aspect kept, Lanczos; re-encoded as JPEG); at least 16")
    p.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG quality (1-100) for "
                   "converted or downscaled images (default: 95)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it is an existing "
                   "packed dataset (atomically: the old one stays until the new one is complete)")
    p.add_argument("--strict", action="store_true", help="stop with an error at the first bad "
                   "file instead of skipping it (nothing is written to DST)")
    p.add_argument("--labels", metavar="FILE", help="take the labels from FILE instead of the class "
                   "folders: .csv with a header row path,label (a label of digits is a class index; "
                   "cat|dog is a list) or .jsonl/.json-lines, one {\"path\": ..., \"label\": ...} per "
                   "line (a label: class name, index or a list of them); paths relative to SRC, '/' "
                   "separators; records follow the file's rows; a list makes the dataset multi-label; "
                   "files of SRC not listed are not packed (counted as unlisted)")
    p.add_argument("--unlabeled", action="store_true", help="no labels: pack every file under SRC "
                   "(recursively, files directly in SRC included), sorted by path; not with --labels, "
                   "--classes or --classes-from")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--classes", metavar="NAME,NAME,...", help="the class list, in label order, for "
                   "the class folders or --labels: a folder or label not in it is an error; a class "
                   "without images is kept (count 0)")
    g.add_argument("--classes-from", metavar="OTHER_DST", help="take the class list from the packed "
                   "dataset OTHER_DST (e.g. pack val with train's classes: same label indices)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pack)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a packed dataset",
                       description="Show record counts, where the labels came from (class folders, "
                                   "labels file, none; multi-label or not; unlisted files), class "
                                   "counts, shards and pack parameters.")
    p.add_argument("dst", metavar="DST", help="packed dataset folder (made by `loader pack`)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_cmd_info)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="check every record (checksum, DALI decode, size)",
        description="Re-read every record, compare its checksum with the manifest, decode it "
                    "with DALI's CPU decoder and compare its size with the manifest. Prints bad "
                    "records one per line; exit status 1 if any, 0 if all are good.")
    p.add_argument("dst", metavar="DST", help="packed dataset folder (made by `loader pack`)")
    p.add_argument("--no-decode", action="store_true", help="only check checksums (no DALI)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify)


def parse_sizes(text: str, option: str) -> tuple[int, ...]:
    """``"16,32,64"`` -> ``(16, 32, 64)``, de-duplicated in order; not a list of integers raises LoaderError.

    Whether the values are in range is :class:`loader.bench.BenchSettings`'s to say.

    >>> parse_sizes("64, 128,64", "--batch-sizes")
    (64, 128)
    """
    try:
        sizes = tuple(int(p.strip()) for p in str(text).split(","))
    except ValueError:
        raise LoaderError(f"{option} must be comma-separated positive integers, got {text!r}") from None
    return tuple(dict.fromkeys(sizes))


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from loader.bench import BenchInterrupted, BenchSettings, bench, print_report

    settings = BenchSettings(
        batch_sizes=parse_sizes(args.batch_sizes, "--batch-sizes"),
        image_sizes=parse_sizes(args.image_sizes, "--image-sizes"),
        workers=args.workers, threads=args.threads, repeats=args.repeats, warmup=args.warmup,
        eval_mode=args.eval_mode, color_jitter=args.color_jitter,
        batches=args.batches, seconds=args.seconds, train=not args.eval, device=args.device,
        prefetch=args.prefetch, seed=args.seed, memory_budget_mb=args.memory_budget,
        pipelines=tuple(p.strip() for p in args.pipelines.split(",") if p.strip()))
    for path in (args.json, args.plot):
        if path and not Path(path).resolve().parent.is_dir():
            raise LoaderError(f"cannot write {path}: folder {Path(path).parent} does not exist")
    notes: list[str] = []
    report = {"prefetch": settings.prefetch, "memory_budget_mb": settings.memory_budget_mb,
              "json_path": args.json, "plot_path": args.plot}
    try:
        rows = bench(args.src, settings, packed=args.packed, progress=not args.quiet, notes=notes)
    except BenchInterrupted as e:
        print("interrupted: results so far", file=sys.stderr)
        print_report(e.rows, notes, **report)
        return 130
    print_report(rows, notes, **report)
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    # Only names and the docstring: loader.bench imports no torch or DALI until it runs.
    import loader.bench as bench_doc
    from loader.bench import CACHE_SUFFIX, CONTENDERS
    from loader.units import available_cores

    cores = available_cores()
    p = sub.add_parser("bench", help="measure loading throughput against the standard DataLoader",
                       description=(bench_doc.__doc__ or "").split("The pieces,")[0].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="image folder (one sub-folder per class) or a "
                   "packed dataset (made by `loader pack`)")
    p.add_argument("--packed", metavar="DST", help=f"where to pack an image folder SRC, or "
                   f"an existing packed copy of it to reuse (default: SRC{CACHE_SUFFIX})")
    p.add_argument("--batch-sizes", default="64", metavar="LIST",
                   help="comma-separated batch sizes to sweep (default: 64)")
    p.add_argument("--image-sizes", default="224", metavar="LIST",
                   help="comma-separated output sizes in pixels (>= 8) to sweep (default: 224)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help=f"DataLoader worker processes, >= 0 (default: usable CPU cores, {cores})")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"DALI threads for loader and decode-limit (default: usable CPU cores, {cores})")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="measurements per contender, round-robin; the median is reported (default: 3)")
    p.add_argument("--warmup", type=int, default=5, metavar="N",
                   help="untimed batches before each measurement, raised to what the contender "
                   "has queued ahead (default: 5)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batches", type=int, metavar="N", help="steady-state batches per measurement")
    g.add_argument("--seconds", type=float, metavar="S",
                   help="seconds per measurement (default: 4 unless --batches)")
    p.add_argument("--eval", action="store_true", help="measure the eval pipelines (resize + "
                   "centre crop, in order) instead of train")
    p.add_argument("--eval-mode", choices=("fast", "torchvision"), default="fast",
                   help="the loader row's eval (ImageLoader's eval_mode): the centre window resized, or "
                   "torchvision's Resize + CenterCrop pixels exactly (default: fast)")
    p.add_argument("--color-jitter", type=float, default=0.0, metavar="J",
                   help="training colour jitter, brightness = contrast = saturation = J: ImageLoader's "
                   "color_jitter in the loader row, torchvision's PIL ColorJitter in the dataloader rows "
                   "(default: 0, off)")
    p.add_argument("--pipelines", default=",".join(CONTENDERS), metavar="LIST",
                   help=f"contenders to run (default: {','.join(CONTENDERS)})")
    p.add_argument("--device", default="auto", help="loader's device: auto, cpu, cuda, cuda:N "
                   "(default: auto = CUDA if available)")
    p.add_argument("--prefetch", type=int, default=2, metavar="N",
                   help="loader's prefetch depth in batches, >= 1 (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="shuffle/augmentation seed, >= 0 (default: 0)")
    p.add_argument("--memory-budget", type=float, metavar="MB",
                   help="also report the largest batch whose batches in flight fit in MB "
                   "(10^6 bytes, as every MB figure printed)")
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list (fields: "
                   "loader.bench.results.BenchRow)")
    p.add_argument("--plot", metavar="FILE.png", help="plot images/s against batch size (PNG; "
                   "needs matplotlib: pip install 'loader[bench]')")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_bench)


def _cmd_advise(args: argparse.Namespace) -> int:
    from pathlib import Path

    from loader.advisor import AdviseInterrupted, AdviseSettings, advise, print_result

    settings = AdviseSettings(
        batch_sizes=None if args.batch_sizes is None else parse_sizes(args.batch_sizes, "--batch-sizes"),
        max_batch_size=args.max_batch_size, image_sizes=parse_sizes(args.image_size, "--image-size"),
        device=args.device, optimizer=args.optimizer, amp=args.amp, memory_budget_mb=args.memory_budget,
        safety_margin=args.safety_margin, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
        trial_images=args.trial, validation_split=args.validation_split, base_batch_size=args.base_batch_size,
        base_lr=args.base_lr, threads=args.threads, prefetch=args.prefetch, seed=args.seed)
    for path in (args.json, args.plot):
        if path and not Path(path).resolve().parent.is_dir():
            raise LoaderError(f"cannot write {path}: folder {Path(path).parent} does not exist")
    try:
        result = advise(args.dst, model=args.model, settings=settings, progress=not args.quiet)
    except AdviseInterrupted as e:
        print("interrupted: results so far", file=sys.stderr)
        print_result(e.result, json_path=args.json, plot_path=args.plot)
        return 130
    print_result(result, json_path=args.json, plot_path=args.plot)
    return 0


def _add_advise(sub: argparse._SubParsersAction) -> None:
    from loader.units import available_cores

    p = sub.add_parser(
        "advise", help="choose a batch size with your model in the loop (memory, speed, input-bound, trial)",
        description="For each batch size (and image size): the model's train step on one reused batch, "
                    "ImageLoader alone, the training loop fed by ImageLoader (images/s, share of time "
                    "waiting for data) and peak memory; out of memory or over the budget is reported as "
                    "a row (oom / over-budget) and ends that image size's sweep. Then: the largest batch "
                    "that fits, the recommended one (the smallest within 5% of the best end-to-end "
                    "images/s), whether training is input-bound and what to try, and the linearly scaled "
                    "learning rate. Guide: docs/advise.md.")
    p.add_argument("dst", metavar="DST", help="packed dataset folder (made by `loader pack`)")
    p.add_argument("--model", required=True, metavar="MODULE:CALLABLE", help="the model factory, imported "
                   "like a console-script entry point (MODULE from the current directory or PYTHONPATH); "
                   "called with num_classes=<classes of DST> if it takes that keyword; must return a "
                   "torch.nn.Module whose output is [batch, num_classes]")
    p.add_argument("--batch-sizes", metavar="LIST", help="comma-separated batch sizes (default: powers of two "
                   "from 8 to --max-batch-size); an image size's sweep stops at the first that fails")
    p.add_argument("--max-batch-size", type=int, default=1024, metavar="N",
                   help="largest default batch size (default: 1024)")
    p.add_argument("--image-size", default="224", metavar="LIST", help="comma-separated image sizes in "
                   "pixels (>= 8), e.g. 128,160,224: one row per (batch size, image size) (default: 224)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N: where the model trains and "
                   "ImageLoader decodes (default: auto = CUDA if available)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="sgd (momentum 0.9) or adamw; its state counts in memory (default: sgd)")
    p.add_argument("--amp", action="store_true", help="autocast: bf16 on CPU; bf16 on CUDA where "
                   "supported, else fp16 with a gradient scaler (default: off)")
    p.add_argument("--memory-budget", type=float, metavar="MB", help="memory a row may use, in MB (10^6 "
                   "bytes), before the safety margin (default: the device's free memory on CUDA; none on CPU)")
    p.add_argument("--safety-margin", type=float, default=0.1, metavar="F", help="fraction of the budget "
                   "kept free: a row fits if its peak is within budget x (1 - F) (default: 0.1)")
    p.add_argument("--steps", type=int, default=10, metavar="N",
                   help="timed steps per measurement (model, loader, end to end) (default: 10)")
    p.add_argument("--warmup", type=int, default=2, metavar="N",
                   help="untimed steps before each measurement (default: 2)")
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="rounds of the three measurements, "
                   "round-robin; the median is reported (default: 3)")
    p.add_argument("--trial", type=int, metavar="IMAGES", help="for each batch size that fits, train a fresh "
                   "copy of the model (same initial weights) on IMAGES training images, then report train "
                   "loss, validation loss and top-1 on the held-back split")
    p.add_argument("--validation-split", type=float, default=0.2, metavar="F", help="fraction of DST held "
                   "back for validation (ImageLoader's validation_split); every measurement and trial uses "
                   "only the rest (default: 0.2)")
    p.add_argument("--base-batch-size", type=int, metavar="B0", help="with --base-lr: the batch size that "
                   "--base-lr is known to work for")
    p.add_argument("--base-lr", type=float, metavar="LR", help="with --base-batch-size: learning rate at B0; "
                   "batch B gets LR x B / B0 (linear scaling, Goyal et al. 2017) in the advice and the trial "
                   "(default without it: 0.05 for sgd, 0.001 for adamw, for every batch size)")
    p.add_argument("--threads", type=int, metavar="N",
                   help=f"DALI threads (default: usable CPU cores, {available_cores()})")
    p.add_argument("--prefetch", type=int, default=2, metavar="N",
                   help="ImageLoader's prefetch depth in batches, >= 1 (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initial weights, the split, the "
                   "shuffle and the augmentation, >= 0 (default: 0)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON (schema: loader.advisor.results)")
    p.add_argument("--plot", metavar="FILE.png", help="plot images/s, memory and validation top-1 against "
                   "batch size (PNG; needs matplotlib: pip install 'loader[bench]')")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_advise)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from loader.check.doctor import run_doctor

    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise LoaderError(f"cannot write {args.json}: folder {Path(args.json).parent} does not exist")
    try:
        report = run_doctor(args.dst, batch_size=args.batch_size, image_size=args.image_size,
                            max_batches=args.batches)
    except ValueError as e:          # a bad option value: the one-line user error
        raise LoaderError(str(e)) from None
    print("\n".join(report.lines()))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.ok else 1


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    import loader.check.doctor as doctor_doc

    p = sub.add_parser("doctor", help="report the environment and self-check the CPU and GPU paths",
                       description=(doctor_doc.__doc__ or "").strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dst", metavar="DST", nargs="?", help="a packed dataset to self-check the loader on "
                   "(default: report the environment only)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="batch size of the self-check (default: 32)")
    p.add_argument("--image-size", type=int, default=224, metavar="PX", help="output size of the self-check "
                   "(default: 224)")
    p.add_argument("--batches", type=int, default=8, metavar="N", help="eval batches per path, at most (default: 8)")
    p.add_argument("--json", metavar="FILE",
                   help="also write the report as JSON (loader.check.doctor.DoctorReport.to_dict)")
    p.set_defaults(func=_cmd_doctor)


def build_parser() -> argparse.ArgumentParser:
    """The ``loader`` argument parser."""
    from loader.version import __version__

    parser = argparse.ArgumentParser(
        prog="loader", description="Pack image folders into LMDB shards and check them; "
        "load them for PyTorch with loader.ImageLoader (NVIDIA DALI).")
    parser.add_argument("--version", action="version", version=f"loader {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_pack(sub)
    _add_info(sub)
    _add_verify(sub)
    _add_bench(sub)
    _add_advise(sub)
    _add_doctor(sub)
    return parser


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split("\n"))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status.

    >>> main(["info", "photos.packed", "--json"])          # doctest: +SKIP
    0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version, usage errors (status 2)
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        func: Callable[[argparse.Namespace], int] = args.func
        return int(func(args) or 0)
    except LoaderError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `loader info DST | head`
        sys.stdout = open(os.devnull, "w")  # silence the flush at exit
        return 1
