"""Scale: does a record cost the same at 1.281M records (or 10M) as at 128k?

For each image count N it generates N tiny photo-like JPEGs (~3 KB, 68x68, in
1,000 class folders; :func:`loader.synthetic.make_tiny_dataset`), packs them
and measures, each in a fresh process:

* pack: images/s (whole ``loader pack``, every core) and the parent's peak RSS;
* disk: bytes of DST per byte of input images;
* ``open_dataset()``: seconds and RSS growth (warm page cache);
* ``ImageLoader(...)``: seconds, its own open included (torch and DALI already imported),
  and the first epoch's plan (shuffle and this rank's share).

``--index N`` also writes a synthetic N-record index (the index files alone,
through :class:`loader.format.manifest.IndexWriter`, with one small shard) and
measures its open time and RSS growth: a 10M row measured, not extrapolated.

``--index-url N`` uploads such an index (its ``manifest.json``, columns and ``sources.bin``; not
the shard, which an open never reads) to an S3 server on loopback (moto's, started and stopped here,
fake credentials) and times ``open_dataset(url, cache_dir=...)`` in fresh processes: cold (an empty
cache_dir: the index download and the open), warm (the same cache_dir again: the manifest GET and the
open), and ``--ranks K`` processes opening it at once on one empty cache_dir (one downloads, the others
wait on its lock: the per-node cost).

    python benchmarks/scale.py --images 128100 1281000 --index 10000000 --json scale.json
    python benchmarks/scale.py --images --index-url 1281167 --ranks 4

Data go to ``.cache/scale/`` (or ``--cache``); generated folders are reused.
``benchmarks/test_bench_scale.py`` runs it small in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PACK = """
import json, resource, sys
from loader import pack
r = pack(sys.argv[1], sys.argv[2], progress=False, overwrite=True)
print(json.dumps({"images_per_sec": r.images_per_sec, "seconds": r.seconds, "records": r.num_records,
                  "input_bytes": r.input_bytes, "output_bytes": r.output_bytes,
                  "parent_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}))
"""

_OPEN = """
import json, sys, time
import torch, nvidia.dali  # imported before the clocks: the loader's own cost is measured
from loader.measure import rss_bytes
from loader import ImageLoader, open_dataset
before = rss_bytes(); t0 = time.perf_counter()
ds = open_dataset(sys.argv[1])
t1 = time.perf_counter(); grew = rss_bytes() - before
out = {"records": len(ds), "open_s": t1 - t0, "open_rss_mb": grew / 1e6}
if sys.argv[2] == "loader":
    t2 = time.perf_counter()
    ld = ImageLoader(sys.argv[1], batch_size=256, device="cpu", image_size=64)
    out["imageloader_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    plan = ld.epoch_plan(0)                 # what an epoch's start costs per record (shuffle, share)
    out["epoch_plan_s"] = time.perf_counter() - t3
    out["imageloader_rss_mb"] = (rss_bytes() - before) / 1e6 - out["open_rss_mb"]
    ld.close()
print(json.dumps(out))
"""


def _run(code: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"scale step failed (rc {r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _warm(src: Path) -> None:
    for d in sorted(src.iterdir()):
        for f in d.iterdir():
            f.read_bytes()


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def measure_images(n: int, cache: Path, *, keep: bool = True) -> dict:
    """Pack N generated tiny JPEGs and measure (see the module docstring)."""
    from loader.synthetic import make_tiny_dataset

    src = cache / f"tiny-{n}"
    make_tiny_dataset(src, n)
    _warm(src)                           # every size packs from the page cache, as 128k always does
    dst = cache / f"tiny-{n}.packed"
    shutil.rmtree(dst, ignore_errors=True)
    row = {"records": n, **_run(_PACK, src, dst)}
    row["disk_per_input_byte"] = _dir_bytes(dst) / row["input_bytes"]
    _run(_OPEN, dst, "open")             # warm the page cache
    row.update(_run(_OPEN, dst, "loader"))
    if not keep:
        shutil.rmtree(dst, ignore_errors=True)
    return row


def write_synthetic_index(dst: Path, n: int) -> Path:
    """An N-record index through the pack's own writer, all records in one small shard."""
    import numpy as np

    from loader.convert.indexwriter import IndexWriter
    from loader.format.shards import ShardInfo, ShardWriter

    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    values = 64
    with ShardWriter(dst / "shard-00000.lmdb") as w:
        for _ in range(values):
            w.append(bytes(64 * 1024))
    index = IndexWriter(dst, capacity=n)
    chunk = 1 << 20
    for lo in range(0, n, chunk):
        i = np.arange(lo, min(lo + chunk, n), dtype=np.int64)
        names = "".join(f"c{k % 1000:04d}/{k // 1000:07d}.jpg" for k in i.tolist()).encode()
        index.extend(labels=(i % 1000).astype(np.int32), heights=np.full(len(i), 68, np.int32),
                     widths=np.full(len(i), 68, np.int32), crcs=(i * 2654435761 % 2**32).astype(np.uint32),
                     keys=(i % values).astype(np.int32), offsets=((i // values) % 16 * 4096).astype(np.uint32),
                     lengths=np.full(len(i), 3000, np.uint32), sources=names,
                     source_ends=np.arange(1, len(i) + 1, dtype=np.int64) * 17)
    index.finish(classes=[f"c{k:04d}" for k in range(1000)],
                 shards=[ShardInfo("shard-00000.lmdb", 0, n, 3000 * n, values)], pack_params={}, skipped=0)
    # The records share 64 small values, but the manifest says the shard holds 3000 bytes per
    # record, and open_dataset refuses a shard file smaller than that (a truncated copy): extend
    # the file, sparsely (no disk used), to the size its records claim.
    shard = dst / "shard-00000.lmdb"
    os.truncate(shard, max(shard.stat().st_size, 3000 * n))
    return dst


def measure_index(n: int, cache: Path) -> dict:
    """Open time and RSS of a synthetic N-record index (fresh process, warm page cache)."""
    dst = write_synthetic_index(cache / f"index-{n}", n)
    _run(_OPEN, dst, "open")
    row = {"records": n, "synthetic_index": True, **_run(_OPEN, dst, "loader")}
    row["index_bytes"] = _dir_bytes(dst) - (dst / "shard-00000.lmdb").stat().st_size
    shutil.rmtree(dst, ignore_errors=True)
    return row


_OPEN_URL = """
import json, sys, time
from loader.measure import rss_bytes
from loader import open_dataset
import loader.storage.objectstore  # the client library imported before the clock
before = rss_bytes(); t0 = time.perf_counter()
ds = open_dataset(sys.argv[1], cache_dir=sys.argv[2])
out = {"records": len(ds), "open_s": time.perf_counter() - t0, "open_rss_mb": (rss_bytes() - before) / 1e6}
ds.close()
print(json.dumps(out))
"""


def _run_many(k: int, code: str, *args: str) -> list[dict]:
    """``code`` in ``k`` processes started together; their JSON lines."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(k)]
    out = []
    for p in procs:
        so, se = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"scale step failed (rc {p.returncode}): {se[-2000:]}")
        out.append(json.loads(so.strip().splitlines()[-1]))
    return out


def measure_index_url(n: int, cache: Path, *, ranks: int = 4) -> dict:
    """Open a synthetic N-record index from an S3 URL (moto on loopback): cold, warm, and ``ranks``
    processes at once on one empty cache (see the module docstring)."""
    import logging

    from moto.server import ThreadedMotoServer

    from loader.format.manifest import MANIFEST_NAME
    from loader.storage.remote import open_url_store

    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # moto's server logs every request
    # Objects in memory: over 5 MB moto keeps one in a temporary file and reads all of it for every ranged
    # GET (the index's 10 MB columns come down in parts); S3 reads the range (benchmarks/moto_bench.py).
    os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(4 << 30))
    dst = write_synthetic_index(cache / f"index-{n}", n)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = dict(os.environ)
    try:
        _host, port = server.get_host_and_port()
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            os.environ.pop(k, None)
        import boto3

        boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
            Bucket="scale")
        url = f"s3://scale/index-{n}.packed"
        store = open_url_store(url)
        files = sorted(p for p in dst.iterdir() if p.is_file() and not p.name.endswith(".lmdb"))
        for p in [p for p in files if p.name != MANIFEST_NAME] + [dst / MANIFEST_NAME]:   # manifest last
            store.upload(p, p.name)
        index_bytes = sum(p.stat().st_size for p in files)
        caches = cache / f"index-{n}-caches"
        shutil.rmtree(caches, ignore_errors=True)
        (cold,) = _run_many(1, _OPEN_URL, url, caches / "one")
        (warm,) = _run_many(1, _OPEN_URL, url, caches / "one")
        many = _run_many(ranks, _OPEN_URL, url, caches / "node")
        shutil.rmtree(caches, ignore_errors=True)
        return {"records": n, "index_bytes": index_bytes, "cold_open_s": cold["open_s"],
                "cold_open_rss_mb": cold["open_rss_mb"], "warm_open_s": warm["open_s"],
                "warm_open_rss_mb": warm["open_rss_mb"], "ranks": ranks,
                "ranks_open_s": sorted(r["open_s"] for r in many)}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()
        shutil.rmtree(dst, ignore_errors=True)


def table(rows: list[dict]) -> str:
    """The README's Scale table (markdown)."""
    head = ("| records | pack images/s | pack parent peak RSS | disk / input bytes | `open_dataset()` "
            "| RSS after open | `ImageLoader()` (opens it too) | first epoch plan |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        pack = "synthetic index" if r.get("synthetic_index") else f"{r['images_per_sec']:,.0f}"
        rss = "" if r.get("synthetic_index") else f"{r['parent_peak_rss_mb']:.0f} MB"
        disk = "" if r.get("synthetic_index") else f"{r['disk_per_input_byte']:.3f}"
        lines.append(f"| {r['records']:,} | {pack} | {rss} | {disk} | {r['open_s']:.3f} s "
                     f"| +{r['open_rss_mb']:.1f} MB | {r['imageloader_s']:.3f} s | {r['epoch_plan_s']:.3f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, nargs="*", default=[128_100],
                    help="image counts to generate, pack and open (default 128100)")
    ap.add_argument("--index", type=int, nargs="*", default=[],
                    help="record counts of synthetic indexes to open (e.g. 10000000)")
    ap.add_argument("--index-url", type=int, nargs="*", default=[],
                    help="record counts of synthetic indexes to open from an S3 URL (moto on loopback)")
    ap.add_argument("--ranks", type=int, default=4, help="with --index-url: processes opening it at once")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "scale", help="data folder")
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = [measure_images(n, args.cache) for n in args.images] + [measure_index(n, args.cache) for n in args.index]
    url_rows = [measure_index_url(n, args.cache, ranks=args.ranks) for n in args.index_url]
    if rows:
        print(table(rows))
    for r in url_rows:
        print(f"{r['records']:,} records from s3:// ({r['index_bytes'] / 1e6:.1f} MB of index): "
              f"cold open {r['cold_open_s']:.3f} s (+{r['cold_open_rss_mb']:.1f} MB RSS), "
              f"warm {r['warm_open_s']:.3f} s; {r['ranks']} processes at once on one empty cache: "
              + ", ".join(f"{x:.3f}" for x in r["ranks_open_s"]) + " s")
    if args.json:
        args.json.write_text(json.dumps(rows + url_rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
