"""``loader bench | advise | doctor``: measure the loader, choose a batch size, check the machine."""

from __future__ import annotations

import argparse

from loader.cli.common import check_output_files, emit_json, parse_sizes, report_stream, run_interrupted_reports
from loader.cli.flags import add_renamed, add_shared

__all__ = ["add_advise", "add_bench", "add_doctor"]


def _cmd_bench(args: argparse.Namespace) -> int:
    from loader.bench import BenchInterrupted, BenchSettings, bench, print_report

    settings = BenchSettings(
        batch_sizes=parse_sizes(args.batch_sizes, "batch_sizes"),
        image_sizes=parse_sizes(args.image_sizes, "image_sizes"),
        workers=args.workers, threads=args.threads, repeats=args.repeats, warmup=args.warmup,
        eval_mode=args.eval_mode, color_jitter=args.color_jitter,
        batches=args.batches, seconds=args.seconds, train=not args.eval, device=args.device,
        prefetch=args.prefetch, seed=args.seed, memory_budget_mb=args.memory_budget_mb,
        cache_dir=args.cache_dir, cache_limit=args.cache_limit, shuffle=args.shuffle,
        block_shards=args.block_shards,
        service_workers=parse_sizes(args.service_workers, "service_workers"), service_address=args.service_address,
        pipelines=tuple(p.strip() for p in args.pipelines.split(",") if p.strip()))
    check_output_files({"--json": args.json, "--plot": args.plot})
    notes: list[str] = []

    def report(rows) -> None:
        print_report(rows, notes, prefetch=settings.prefetch, memory_budget_mb=settings.memory_budget_mb,
                     json_path=None if args.json == "-" else args.json, plot_path=args.plot,
                     out=report_stream(args.json))
        if args.json == "-":
            emit_json("-", [r.to_dict() for r in rows])

    return run_interrupted_reports(
        lambda: bench(args.src, settings, packed=args.packed, progress=not args.quiet, notes=notes),
        report, BenchInterrupted, lambda e: e.rows)


def add_bench(sub: argparse._SubParsersAction) -> None:
    # Only names and the docstring: loader.bench imports no torch or DALI until it runs.
    import loader.bench as bench_doc
    from loader.bench import CACHE_SUFFIX, CONTENDERS
    from loader.units import available_cores

    cores = available_cores()
    p = sub.add_parser("bench", help="measure loading throughput against the standard DataLoader",
                       description=(bench_doc.__doc__ or "").split("The pieces,")[0].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="image folder (one sub-folder per class) or a "
                   "packed dataset (made by `loader pack`), a folder or a URL (s3://, gs://, az://, file://)")
    p.add_argument("--packed", metavar="DST", help=f"where to pack an image folder SRC, or "
                   f"an existing packed copy of it to reuse, a folder or a URL (default: SRC{CACHE_SUFFIX}); "
                   f"for a URL, the loader row reads a downloaded copy and the rows 'loader (cold cache)' "
                   f"and 'loader (warm cache)' read the URL through the node-local cache")
    p.add_argument("--cache-dir", metavar="DIR", help="for a dataset at a URL: where the cache rows' "
                   "temporary caches go, in a folder bench makes and removes (default: the system's "
                   "temporary folder)")
    p.add_argument("--cache-limit", metavar="SIZE", help="for a dataset at a URL: the cache rows' "
                   "cache_limit, bytes or e.g. 500MB, 2GiB (MB = 10^6) (default: none)")
    p.add_argument("--shuffle", choices=("global", "block"), default="global", help="the loader rows' "
                   "training order: ImageLoader's shuffle='global' (default) or 'block' (shard windows; "
                   "docs/remote.md#shuffle)")
    p.add_argument("--block-shards", type=int, metavar="N", help="with --shuffle block: the window in shards "
                   "(ImageLoader's block_shards; default: its rule, half the shards that fit in --cache-limit)")
    add_shared(p, "--batch-size", "(default: 64)", sweep=True, dest="batch_sizes", default="64")
    add_shared(p, "--image-size", "(default: 224)", sweep=True, dest="image_sizes", default="224")
    p.add_argument("--dataloader-workers", type=int, default=None, metavar="N", dest="workers",
                   help=f"worker processes of the DataLoader contenders, >= 0 (default: usable CPU cores, {cores})")
    add_shared(p, "--threads", f"of the loader and decode-limit contenders (default: usable CPU cores, {cores})",
               type=int, default=None)
    add_shared(p, "--rounds", "over the contenders (default: 3)", type=int, default=3,
               dest="repeats")
    add_shared(p, "--warmup", "raised to what the contender has queued ahead (default: 5)", type=int, default=5)
    g = p.add_mutually_exclusive_group()
    add_shared(g, "--batches", "steady-state, timed (default: --seconds 4)", type=int)
    g.add_argument("--seconds", type=float, metavar="S",
                   help="seconds per measurement (default: 4 unless --batches)")
    add_shared(p, "--eval", "(the contenders' eval pipelines are measured)")
    add_shared(p, "--eval-mode", "(the loader row's; default: fast)", choices=("fast", "torchvision"),
               default="fast")
    add_shared(p, "--color-jitter", "(ImageLoader's color_jitter in the loader row, torchvision's PIL "
               "ColorJitter in the dataloader rows; default: 0, off)", type=float, default=0.0)
    p.add_argument("--pipelines", default=",".join(CONTENDERS), metavar="LIST",
                   help=f"contenders to run (default: {','.join(CONTENDERS)}); 'service' adds rows of "
                   f"ImageLoader(service=loader.RayService(...)), one per --service-workers count (needs Ray)")
    p.add_argument("--service-workers", default="1,2", metavar="N[,N...]", help="the service rows' actor "
                   "counts (default: 1,2)")
    p.add_argument("--service-address", metavar="ADDR", help="the service rows' Ray cluster, 'auto' or "
                   "HOST:PORT (default: a local Ray started for them and stopped after)")
    add_shared(p, "--device", "the loader contender's (default: auto)", default="auto")
    add_shared(p, "--prefetch", "the loader contender's (default: 2)", type=int, default=2)
    add_shared(p, "--seed", "seeds the shuffle and the augmentation (default: 0)", type=int, default=0)
    add_shared(p, "--memory-budget", "also report the largest batch whose batches in flight fit in it",
               type=float, dest="memory_budget_mb")
    add_shared(p, "--json", "the rows, a list (fields: loader.bench.results.BenchRow)")
    add_shared(p, "--plot", "images/s against batch size")
    add_shared(p, "--quiet", "(default: progress lines on stderr)")
    add_renamed(p, "bench")
    p.set_defaults(func=_cmd_bench)


def _cmd_advise(args: argparse.Namespace) -> int:
    from loader.advisor import AdviseInterrupted, AdviseSettings, advise, print_result

    settings = AdviseSettings(
        batch_sizes=None if args.batch_sizes is None else parse_sizes(args.batch_sizes, "batch_sizes"),
        max_batch_size=args.max_batch_size, image_sizes=parse_sizes(args.image_sizes, "image_sizes"),
        device=args.device, optimizer=args.optimizer, amp=args.amp, memory_budget_mb=args.memory_budget_mb,
        safety_margin=args.safety_margin, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
        rounds=args.rounds, trial_images=args.trial_images, validation_split=args.validation_split,
        base_batch_size=args.base_batch_size, base_lr=args.base_lr, threads=args.threads, prefetch=args.prefetch,
        seed=args.seed)
    check_output_files({"--json": args.json, "--plot": args.plot})

    def report(result) -> None:
        print_result(result, json_path=None if args.json == "-" else args.json, plot_path=args.plot,
                     out=report_stream(args.json))
        if args.json == "-":
            emit_json("-", result.to_dict())

    return run_interrupted_reports(
        lambda: advise(args.dst, model=args.model, settings=settings, progress=not args.quiet),
        report, AdviseInterrupted, lambda e: e.result)


def add_advise(sub: argparse._SubParsersAction) -> None:
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
    add_shared(p, "--batch-size", "an image size's sweep stops at the first that fails (default: powers of two "
               "from 8 to --max-batch-size)", sweep=True, dest="batch_sizes")
    p.add_argument("--max-batch-size", type=int, default=1024, metavar="N",
                   help="largest default batch size (default: 1024)")
    add_shared(p, "--image-size", "e.g. 128,160,224: one row per (batch size, image size) (default: 224)",
               sweep=True, dest="image_sizes", default="224")
    add_shared(p, "--device", "and where the model trains (default: auto)", default="auto")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="sgd (momentum 0.9) or adamw; its state counts in memory (default: sgd)")
    p.add_argument("--amp", action="store_true", help="autocast: bf16 on CPU; bf16 on CUDA where "
                   "supported, else fp16 with a gradient scaler (default: off)")
    add_shared(p, "--memory-budget", "what a row may use, before the safety margin (default: the device's free "
               "memory on CUDA; none on CPU)", type=float, dest="memory_budget_mb")
    p.add_argument("--safety-margin", type=float, default=0.1, metavar="F", help="fraction of the budget "
                   "kept free: a row fits if its peak is within budget x (1 - F) (default: 0.1)")
    p.add_argument("--steps", type=int, default=10, metavar="N",
                   help="timed steps per measurement (model, loader, end to end) (default: 10)")
    add_shared(p, "--warmup", "(default: 2)", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, metavar="N", help="the three measurements (model, loader, "
                   "end to end) in turn, N times per round of a row (default: 1)")
    add_shared(p, "--rounds", "over the rows; the range is reported too, and overlapping ranges are said in the "
               "advice (default: 3)", type=int, default=3)
    p.add_argument("--trial", type=int, metavar="IMAGES", dest="trial_images", help="for each batch size that "
                   "fits, train a fresh copy of the model (same initial weights) on IMAGES training images, then "
                   "report train loss, validation loss and top-1 on the held-back split")
    p.add_argument("--validation-split", type=float, default=0.2, metavar="F", help="fraction of DST held "
                   "back for validation (ImageLoader's validation_split); every measurement and trial uses "
                   "only the rest (default: 0.2)")
    p.add_argument("--base-batch-size", type=int, metavar="B0", help="with --base-lr: the batch size that "
                   "--base-lr is known to work for")
    p.add_argument("--base-lr", type=float, metavar="LR", help="with --base-batch-size: learning rate at B0; "
                   "batch B gets LR x B / B0 (linear scaling, Goyal et al. 2017) in the advice and the trial "
                   "(default without it: 0.05 for sgd, 0.001 for adamw, for every batch size)")
    add_shared(p, "--threads", f"(default: usable CPU cores, {available_cores()})", type=int)
    add_shared(p, "--prefetch", "(default: 2)", type=int, default=2)
    add_shared(p, "--seed", "seeds the model's initial weights, the split, the shuffle and the augmentation "
               "(default: 0)", type=int, default=0)
    add_shared(p, "--json", "the result (schema: loader.advisor.results)")
    add_shared(p, "--plot", "images/s, memory and validation top-1 against batch size")
    add_shared(p, "--quiet", "(default: progress lines on stderr)")
    add_renamed(p, "advise")
    p.set_defaults(func=_cmd_advise)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from loader.check.doctor import run_doctor

    check_output_files({"--json": args.json})
    report = run_doctor(args.dst, batch_size=args.batch_size, image_size=args.image_size,
                        max_batches=args.max_batches)
    print("\n".join(report.lines()), file=report_stream(args.json))
    emit_json(args.json, report.to_dict())
    return 0 if report.ok else 1


def add_doctor(sub: argparse._SubParsersAction) -> None:
    import loader.check.doctor as doctor_doc

    p = sub.add_parser("doctor", help="report the environment and self-check the CPU and GPU paths",
                       description=(doctor_doc.__doc__ or "").strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dst", metavar="DST", nargs="?", help="a packed dataset to self-check the loader on "
                   "(default: report the environment only)")
    add_shared(p, "--batch-size", "of the self-check (default: 32)", type=int, default=32)
    add_shared(p, "--image-size", "of the self-check (default: 224)", type=int, default=224)
    add_shared(p, "--batches", "here: eval batches per path check, at most (default: 8)", type=int, default=8,
               dest="max_batches")
    add_shared(p, "--json", "the report (loader.check.doctor.DoctorReport.to_dict)")
    p.set_defaults(func=_cmd_doctor)
