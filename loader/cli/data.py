"""``loader pack | info | verify``: make a packed dataset, describe it, check it."""

from __future__ import annotations

import argparse
import os

from loader.cli.common import check_output_files, emit_json, report_stream
from loader.cli.flags import JsonTarget, add_shared
from loader.units import MB

__all__ = ["add_info", "add_pack", "add_verify", "dataset_info", "info_lines"]


def _epilog_pack() -> str:
    from loader.convert.imagecheck import STORAGE_POLICY

    return STORAGE_POLICY + ("\nThe output is written to DST.partial-<pid> and renamed to DST when complete.\n"
                             "A URL DST (s3://, gs://, az://) is packed under $TMPDIR, then uploaded: the shards,\n"
                             "then the index, manifest.json last (docs/remote.md).\n")


def _cmd_pack(args: argparse.Namespace) -> int:
    from loader.convert.packing import pack

    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",")]
    report = pack(args.src, args.dst, shards=args.shards,
                  shard_size_mb=args.shard_size_mb,
                  workers=args.workers, max_side=args.max_side, quality=args.quality,
                  overwrite=args.overwrite, strict=args.strict, progress=not args.quiet,
                  labels=args.labels, unlabeled=args.unlabeled, classes=classes,
                  classes_from=args.classes_from, keep_suspect=args.keep_suspect,
                  shuffle_seed=args.shuffle_seed, engine=args.engine, ray_address=args.ray_address)
    print(report.summary())
    if report.num_skipped:
        from loader.format.manifest import SKIPPED_NAME

        print(f"skipped files and reasons: {os.path.join(report.dst, SKIPPED_NAME)}")
    if report.suspect:
        from loader.convert.packing import SUSPECT_NAME

        print(f"suspect files kept and reasons: {os.path.join(report.dst, SUSPECT_NAME)}")
    return 0


def dataset_info(dst: str) -> dict:
    """What ``loader info --json`` prints, as a dict.

    >>> dataset_info("photos.packed")["num_records"]      # doctest: +SKIP
    3000
    """
    from loader.storage.store import is_url, split_url

    if is_url(dst) and not dst.startswith("file://"):
        import tempfile
        from pathlib import Path

        from loader.errors import DatasetError
        from loader.format.manifest import read_manifest
        from loader.storage.remotepack import fetch_index

        # Only the index is fetched (shards are tens of MB each); their sizes come from the listing.
        with tempfile.TemporaryDirectory(prefix="loader-info-") as tmp:
            sizes = fetch_index(dst, Path(tmp))
            m = read_manifest(tmp)
        missing = [s.name for s in m.shards if s.name not in sizes]
        if missing:
            raise DatasetError(f"{dst}/{missing[0]} is missing (the manifest lists it with "
                               f"{m.shards[[s.name for s in m.shards].index(missing[0])].records} records); "
                               f"re-pack with `loader pack SRC {dst} --overwrite`")
        shard_bytes = sum(sizes[s.name] for s in m.shards)
        return _info(m, dst, sizes.__getitem__, sum(sizes.values()) - shard_bytes)
    from loader.format.dataset import open_dataset

    ds = open_dataset(split_url(dst)[2] if is_url(dst) else dst)   # opened: its shards are checked
    try:
        shard_names = {s.name for s in ds.manifest.shards}
        index_bytes = sum(p.stat().st_size for p in ds.path.iterdir() if p.is_file() and p.name not in shard_names)
        return _info(ds.manifest, str(ds.path), lambda name: os.path.getsize(ds.path / name), index_bytes)
    finally:
        ds.close()


def _info(m, where: str, size_of, index_bytes: int) -> dict:
    import numpy as np

    # Per class: its records; multi-label: the records having it (a record's classes are unique).
    if m.multi_label:
        counts = np.bincount(m.label_values, minlength=len(m.classes)).tolist()
    elif m.classes:
        counts = np.bincount(m.labels, minlength=len(m.classes)).tolist()
    else:
        counts = []
    return {
        "path": where,
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
                    "bytes": s.bytes, "file_bytes": size_of(s.name)} for s in m.shards],
        # The index (manifest, columns, sources) and skipped.tsv: everything but the shards.
        "index_bytes": index_bytes,
        "pack_params": m.pack_params,
    }


def info_lines(info: dict) -> list[str]:
    """:func:`dataset_info` as the text ``loader info`` prints, line by line."""
    lines: list[str] = []
    add = lines.append
    add(f"dataset   {info['path']}")
    add(f"records   {info['num_records']} (converted at pack time: {info['num_converted']}, "
        f"skipped files: {info['num_skipped']})")
    source = {"folders": "class folders", "file": "labels file", "none": "none (unlabeled)"}
    kind = "" if info["label_source"] == "none" else (
        ", multi-label" if info["multi_label"] else ", single-label")
    unlisted = (f", {info['num_unlisted']} files in SRC not listed (not packed)"
                if info["label_source"] == "file" else "")
    add(f"labels    {source.get(info['label_source'], info['label_source'])}{kind}{unlisted}")
    add(f"classes   {len(info['classes'])}" +
        (" (counts: records having the class)" if info["multi_label"] else ""))
    width = max((len(c["name"]) for c in info["classes"]), default=0)
    for c in info["classes"]:
        add(f"  {c['label']:>5}  {c['name']:<{width}}  {c['count']}")
    add(f"shards    {len(info['shards'])}")
    for s in info["shards"]:
        add(f"  {s['name']}  {s['records']} records from #{s['first']}, "
            f"{s['bytes'] / MB:.1f} MB of images, {s['file_bytes'] / MB:.1f} MB on disk")
    add(f"index     {info['index_bytes'] / MB:.1f} MB (manifest version {info['version']})")
    params = " ".join(f"{k}={v}" for k, v in info["pack_params"].items())
    add(f"packed    {params}")
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    check_output_files({"--json": args.json})
    info = dataset_info(args.dst)
    emit_json(args.json, info)
    out = report_stream(args.json)
    for line in info_lines(info):
        print(line, file=out)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from loader.storage.store import is_url

    if is_url(args.dst) and not args.dst.startswith("file://"):
        import tempfile
        from pathlib import Path

        from loader.storage.remotepack import fetch_dataset

        # Every record is read: fetch the dataset (shards checked against their digests), verify it.
        with tempfile.TemporaryDirectory(prefix="loader-verify-") as tmp:
            fetch_dataset(args.dst, Path(tmp))
            return _verify(args, tmp)
    return _verify(args, args.dst)


def _verify(args: argparse.Namespace, where: str) -> int:
    from loader.check.verify import verify

    bad = verify(where, decode=not args.no_decode, progress=not args.quiet)
    for index, shard, key, source, reason in bad:
        print(f"record {index} ({shard} key {key:010d}, source {source}): {reason}")
    from loader.format.manifest import read_manifest

    n = read_manifest(where).num_records
    print(f"verified {n} records in {args.dst}: {len(bad)} bad" +
          ("" if bad else " (all good)"))
    return 1 if bad else 0


def add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack", help="convert an image folder into LMDB shards + manifest",
        description="Convert an image folder (one sub-folder per class, like torchvision's\n"
                    "ImageFolder) into LMDB shards plus manifest.json.",
        epilog=_epilog_pack(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="image folder with one sub-folder per class; class "
                   "labels follow the sorted folder names; files in nested folders count for their "
                   "class; hidden files are ignored (with --labels or --unlabeled: any folder of images); "
                   "or an object-store prefix in that layout (s3://BUCKET/PHOTOS, gs://, az://; needs "
                   "loader[remote]): listed once, each object read through the store, the same bytes")
    p.add_argument("dst", metavar="DST", help="folder to create for the packed dataset (must not "
                   "exist unless --overwrite), or an object-store URL (s3://BUCKET/PREFIX, gs://, az://; "
                   "needs loader[remote]): packed locally under $TMPDIR, uploaded with manifest.json last")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shards", type=int, metavar="N", help="number of shard files (default: one "
                   "per --shard-size-mb of input; never more than one per image)")
    g.add_argument("--shard-size-mb", type=float, metavar="MB", help="target input megabytes "
                   "(10^6 bytes) per shard when --shards is not given (default: 512; 64 for an object-store URL)")
    p.add_argument("--workers", type=int, metavar="N", help="processes that decode and check "
                   "images (default: the CPU cores this process may use); the output is identical for any N")
    p.add_argument("--max-side", type=int, metavar="PX", help="downscale images so that "
                   "max(height, width) <= PX (aspect kept, Lanczos; re-encoded as JPEG); at least 16")
    p.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG quality (1-100) for "
                   "converted or downscaled images (default: 95)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it is an existing "
                   "packed dataset (atomically: the old one stays until the new one is complete)")
    p.add_argument("--strict", action="store_true", help="stop with an error at the first bad "
                   "file instead of skipping it (nothing is written to DST)")
    p.add_argument("--keep-suspect", action="store_true", help="store suspect JPEGs (data missing, which "
                   "decoders fill in as grey) instead of skipping them, and list them in DST/suspect.tsv")
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
    p.add_argument("--shuffle-seed", type=int, metavar="SEED",
                   help="store the records in a random order seeded by SEED (e.g. 0) instead of class by "
                   "class, so every shard mixes the classes: what ImageLoader(shuffle='block') needs to cost "
                   "no accuracy (docs/remote.md#shuffle); the same SEED gives the same bytes")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local: a process pool on "
                   "this machine (default); ray: one Ray task per shard across a Ray cluster, the same bytes "
                   "(needs loader[ray]; SRC and a folder DST on paths every node sees; docs/ray.md)")
    p.add_argument("--address", dest="ray_address", metavar="ADDR", help="with --engine ray: the Ray "
                   "cluster's address (default: as ray.init(): RAY_ADDRESS, a cluster started on this "
                   "machine, or a new local one); --workers is then the tasks at once (default: the cluster's CPUs)")
    add_shared(p, "--quiet", "(default: a progress bar on stderr)")
    p.set_defaults(func=_cmd_pack)


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a packed dataset",
                       description="Show record counts, where the labels came from (class folders, "
                                   "labels file, none; multi-label or not; unlisted files), class "
                                   "counts, shards and pack parameters.")
    p.add_argument("dst", metavar="DST", help="packed dataset folder (made by `loader pack`) or its "
                   "object-store URL (s3://, gs://, az://)")
    add_shared(p, "--json", "one object (fields: loader.cli.dataset_info); bare --json (no FILE, deprecated): "
               "stdout", nargs="?", action=JsonTarget)
    p.set_defaults(func=_cmd_info)


def add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="check every record (checksum, DALI decode, size)",
        description="Re-read every record, compare its checksum with the manifest, decode it "
                    "with DALI's CPU decoder and compare its size with the manifest. Prints bad "
                    "records one per line; exit status 1 if any, 0 if all are good.")
    p.add_argument("dst", metavar="DST", help="packed dataset folder (made by `loader pack`) or its "
                   "object-store URL (s3://, gs://, az://)")
    p.add_argument("--no-decode", action="store_true", help="only check checksums (no DALI)")
    add_shared(p, "--quiet", "(default: a progress bar on stderr)")
    p.set_defaults(func=_cmd_verify)


