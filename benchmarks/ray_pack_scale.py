"""``loader pack`` with engine local against engine ray (1 and 2 tasks at once on one Ray node, and on a
2-node local cluster), where the time goes, and a paper projection to 8 and 64 nodes.

    python benchmarks/ray_pack_scale.py /tmp/ds3k --shards 24 --rounds 3 --json ray-pack.json

SRC: an image folder (``scripts/make_dataset.py /tmp/ds3k --classes 10 --per-class 300`` makes the
3000-photo set of docs/benchmarks.md; a missing SRC is generated with ``--classes`` x ``--per-class``).
Every pack goes to a fresh DST under a temporary folder, with the same ``--shards`` (the output is the
same bytes whatever the engine; checked here on every pack). Contenders run round-robin, each
once per round; the table gives the median images/s and the range. The input is read once before
(warm page cache) so that every contender reads from memory.

Phase 0 packs with the local engine before any Ray process runs. Phase 1 starts one Ray node with
2 CPUs (``ray.init(address="local", num_cpus=2)``: never another's): local, ray x1, ray x2. Phase 2
starts a 2-node cluster (``ray.cluster_utils.Cluster``, 1 CPU each, as tests/raycluster.py): local,
ray 2 nodes. The cost parts, measured in this process or with no-op Ray tasks:

* listing: the driver's scan of SRC and the stat of every file (what ``pack`` does before the plan);
* scheduling: a no-op task's round trip (submit -> result) with 1 in flight, on warm workers;
* per-task start: the first task's round trip on a fresh cluster (a worker process started);
* per file: ``run_shard`` (read, check, write, digest) of one whole shard in this process / its files,
  and of that the I/O: reading the files whole (warm page cache);
* per shard: ``run_shard`` of a 1-file shard minus one file's cost (LMDB open/commit/fsync/close, digest);
* index: the driver's ``IndexWriter.extend`` + ``finish`` for ``--index-records`` synthetic records.

The projection: T(nodes) = listing + index (both on the driver, scaled to the records) + files x
per-file / (nodes x cores) + shards x (per-shard + scheduling) / (nodes x cores), with nodes like this
one (``--cores-per-node``); listing 10M object keys is counted at ``--list-ms`` per 1,000-key page
(S3's ListObjectsV2 page size), which is an assumption, printed as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # before ray's import (see tests/conftest.py)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOOPBACK = "127.0.0.1"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _warm(src: Path) -> int:
    n = 0
    for p in src.rglob("*"):
        if p.is_file():
            n += len(p.read_bytes())
    return n


def _pack_once(src: Path, work: Path, name: str, shards: int, engine: str, workers: int) -> tuple[float, dict]:
    import loader

    dst = work / name
    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    report = loader.pack(src, dst, shards=shards, workers=workers, progress=False, engine=engine)
    seconds = time.perf_counter() - t0
    files = _files(dst)
    shutil.rmtree(dst)
    return report.num_records / seconds, files


def _noop():
    return time.time()


def _ray_costs(ray, probes: int) -> dict:
    """First task on fresh workers, then the warm round trip (1 in flight), in ms."""
    f = ray.remote(num_cpus=1)(_noop)
    t0 = time.perf_counter()
    ray.get(f.remote())
    first = (time.perf_counter() - t0) * 1e3
    trips = []
    for _ in range(probes):
        t0 = time.perf_counter()
        ray.get(f.remote())
        trips.append((time.perf_counter() - t0) * 1e3)
    return {"first_task_ms": first, "task_round_trip_ms": statistics.median(trips)}


def _phase(contenders, src: Path, work: Path, shards: int, rounds: int, results: dict, reference: dict) -> None:
    for r in range(rounds):
        for name, engine, workers in contenders:
            rate, files = _pack_once(src, work, f"{name.replace(' ', '_')}.packed", shards, engine, workers)
            if files != reference.setdefault("bytes", files):
                raise SystemExit(f"{name}: the output differs from engine local's")
            results.setdefault(name, []).append(rate)
            print(f"round {r + 1}: {name:<14} {rate:8.0f} images/s", file=sys.stderr)


def _local_costs(src: Path, work: Path, shards: int, index_records: int) -> dict:
    import numpy as np

    from loader.convert.indexwriter import IndexWriter
    from loader.convert.packing import _file_size, plan_shards, shard_ranges
    from loader.convert.scan import scan
    from loader.convert.shardtask import items_slice, run_shard, shard_map_size

    t0 = time.perf_counter()
    _, items = scan(src)
    prefix = os.path.join(src, "")
    sizes = np.fromiter((_file_size(prefix + rel) for rel, _ in items), dtype=np.int64, count=len(items))
    listing = time.perf_counter() - t0
    n = len(items)
    lo, hi = shard_ranges(n, plan_shards(int(sizes.sum()), n, shards, 512))[0]
    opts = dict(src=str(src), max_side=None, quality=95, keep_suspect=False, strict=False)
    per_file, per_one = [], []
    for k in range(3):
        t0 = time.perf_counter()
        run_shard(work / f"s{k}.lmdb", items_slice(items, lo, hi), map_size=shard_map_size(sizes[lo:hi]), **opts)
        per_file.append((time.perf_counter() - t0) / (hi - lo))
        t0 = time.perf_counter()
        run_shard(work / f"o{k}.lmdb", items_slice(items, lo, lo + 1), map_size=shard_map_size(sizes[lo:lo + 1]),
                  **opts)
        per_one.append(time.perf_counter() - t0)
    file_s = statistics.median(per_file)
    reads = []
    for _ in range(3):      # I/O alone: the shard's files read whole (warm page cache), nothing checked
        t0 = time.perf_counter()
        for rel, _ in items_slice(items, lo, hi):
            with open(prefix + rel, "rb") as f:
                f.read()
        reads.append((time.perf_counter() - t0) / (hi - lo))
    # The index: synthetic columns of index_records records (paths like "class_0000/000000.jpg").
    m = index_records
    folder = work / "index"
    folder.mkdir()
    t0 = time.perf_counter()
    w = IndexWriter(folder, capacity=m)
    ends = np.arange(1, m + 1, dtype=np.int64) * 21
    zeros = np.zeros(m, np.int32)
    w.extend(labels=zeros, heights=zeros, widths=zeros, crcs=zeros.view(np.uint32), keys=zeros,
             offsets=zeros.view(np.uint32), lengths=zeros.view(np.uint32), sources=b"c" * int(ends[-1]),
             source_ends=ends)
    w.finish(classes=["c"], shards=[], pack_params={}, skipped=0)
    index = time.perf_counter() - t0
    shutil.rmtree(folder)
    return {"files": n, "listing_s": listing, "listing_us_per_file": listing / n * 1e6,
            "per_file_ms": file_s * 1e3, "read_ms_per_file": statistics.median(reads) * 1e3,
            "per_shard_ms": max(0.0, statistics.median(per_one) - file_s) * 1e3,
            "index_records": m, "index_s": index}


def project(nodes: int, costs: dict, ray: dict, files: float, shards: float, cores: int, list_ms: float) -> dict:
    """Seconds for ``files`` in ``shards`` on ``nodes`` nodes of ``cores`` cores (module docstring)."""
    listing = files / 1000 * list_ms / 1e3          # object keys, one page of 1,000 after another
    index = costs["index_s"] * files / costs["index_records"]
    lanes = nodes * cores
    work = files * costs["per_file_ms"] / 1e3 / lanes
    per_shard = shards * (costs["per_shard_ms"] + ray["task_round_trip_ms"]) / 1e3 / lanes
    total = listing + index + work + per_shard
    return {"nodes": nodes, "listing_s": listing, "index_s": index, "files_s": work, "shards_s": per_shard,
            "total_s": total, "images_per_s": files / total}


def main(argv: list[str] | None = None) -> int:
    """Run both phases, print the table, the cost parts and the projection; exit 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="image folder (generated if missing)")
    ap.add_argument("--classes", type=int, default=10, help="classes if SRC is generated (default 10)")
    ap.add_argument("--per-class", type=int, default=300, help="images per class if generated (default 300)")
    ap.add_argument("--shards", type=int, default=24, help="shards of every pack (default 24)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each contender once per round (default 3)")
    ap.add_argument("--probes", type=int, default=30, help="no-op tasks timed for the round trip (default 30)")
    ap.add_argument("--index-records", type=int, default=1_000_000, help="records of the index timing")
    ap.add_argument("--cores-per-node", type=int, default=2, help="cores of a projected node (default 2)")
    ap.add_argument("--list-ms", type=float, default=50.0, help="assumed ms per 1,000-key listing page")
    ap.add_argument("--project-files", type=float, default=10e6, help="files of the projection (default 10M)")
    ap.add_argument("--project-shard-files", type=float, default=1200, help="files per projected shard "
                    "(default 1200: 64 MB of ~53 KB photos, the URL default)")
    ap.add_argument("--json", type=Path, help="write everything measured as JSON here")
    args = ap.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    if not args.src.is_dir():
        from loader.synthetic import make_dataset

        make_dataset(args.src, classes=args.classes, per_class=args.per_class, seed=0, workers=2)
    print(f"read {_warm(args.src) / 1e6:.1f} MB of {args.src} (warm cache)", file=sys.stderr)
    rates: dict[str, list[float]] = {}
    reference: dict[str, dict] = {}
    out: dict = {"src": str(args.src), "shards": args.shards, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="ray-pack-bench-") as tmp:
        work = Path(tmp)
        out["costs"] = _local_costs(args.src, work, args.shards, args.index_records)

        # Phase 0: the local engine before any Ray process exists (Ray's idle daemons take CPU too).
        _phase([("local, no Ray", "local", 2)], args.src, work, args.shards, args.rounds, rates, reference)
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address=LOOPBACK, log_to_driver=False)
        out["one_node_start_s"] = time.perf_counter() - t0
        try:
            out["ray_one_node"] = _ray_costs(ray, args.probes)
            _phase([("local, Ray up", "local", 2), ("ray x1", "ray", 1), ("ray x2", "ray", 2)], args.src, work,
                   args.shards, args.rounds, rates, reference)
        finally:
            ray.shutdown()

        t0 = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=1, object_store_memory=100 * 2**20, node_ip_address=LOOPBACK, include_dashboard=False))
        try:
            cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20, node_ip_address=LOOPBACK)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)
            out["two_node_start_s"] = time.perf_counter() - t0
            try:
                out["ray_two_nodes"] = _ray_costs(ray, args.probes)
                _phase([("local, Ray up", "local", 2), ("ray 2 nodes", "ray", 2)], args.src, work, args.shards,
                       args.rounds, rates, reference)
            finally:
                ray.shutdown()
        finally:
            cluster.shutdown()

    c = out["costs"]
    print(f"\n{c['files']} files in {args.shards} shards; median images/s over the rounds (min-max)")
    print("| engine | images/s | range | runs |\n|---|---:|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):,.0f} | {min(values):,.0f}-{max(values):,.0f} | {len(values)} |")
    ro, rt = out["ray_one_node"], out["ray_two_nodes"]
    print(f"\nlisting {c['listing_s'] * 1e3:.0f} ms ({c['listing_us_per_file']:.1f} us/file); per file "
          f"{c['per_file_ms']:.3f} ms (of which reading it {c['read_ms_per_file']:.3f} ms);"
          f" per shard {c['per_shard_ms']:.2f} ms; index of {c['index_records']:,} "
          f"records {c['index_s']:.2f} s")
    print(f"ray: start {out['one_node_start_s']:.1f} s (1 node) / {out['two_node_start_s']:.1f} s (2 nodes); "
          f"first task {ro['first_task_ms']:.0f} / {rt['first_task_ms']:.0f} ms; warm round trip "
          f"{ro['task_round_trip_ms']:.2f} / {rt['task_round_trip_ms']:.2f} ms")
    shards = args.project_files / args.project_shard_files
    out["projection"] = [project(n, c, rt, args.project_files, shards, args.cores_per_node, args.list_ms)
                         for n in (1, 8, 64)]
    print(f"\nprojection: {args.project_files:,.0f} files, {shards:,.0f} shards, {args.cores_per_node} cores per "
          f"node, listing at {args.list_ms:g} ms per 1,000 keys (assumed)")
    print("| nodes | listing s | index s | files s | shards s | total s | images/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for p in out["projection"]:
        print(f"| {p['nodes']} | {p['listing_s']:.0f} | {p['index_s']:.1f} | {p['files_s']:.0f} | "
              f"{p['shards_s']:.1f} | {p['total_s']:.0f} | {p['images_per_s']:,.0f} |")
    out["rates"] = rates
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
