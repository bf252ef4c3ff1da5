"""``loader pack`` + ``loader bench`` of a dataset on an S3 server on loopback (moto's, started here).

Starts moto's ``ThreadedMotoServer`` on 127.0.0.1 (a free port), puts fake credentials and
``AWS_ENDPOINT_URL`` in the environment, creates the bucket, runs ``loader pack SRC URL`` (unless
``--no-pack``), then ``loader bench SRC --packed URL`` with the remaining arguments, and stops the
server whatever happened. The figures in docs/remote.md ("Measured") come from:

    python benchmarks/moto_bench.py /tmp/ds3k s3://bench/ds3k.packed -- \\
        --pipelines loader --batch-size 64 --rounds 3 --json remote-bench.json

The bench reads through tests/faultproxy.py's proxy, which answers ranged GETs from each object
fetched from moto once (moto reads all of an object for every ranged GET; S3 reads the range);
``--bandwidth-mb`` caps it for all responses together (the "capped at 2x what the loader consumes"
row).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


def main(argv: list[str] | None = None) -> int:
    """Run the pack and the bench against a fresh moto server; the bench's exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="image folder")
    ap.add_argument("url", help="s3://BUCKET/PREFIX to pack into (the bucket is created)")
    ap.add_argument("--no-pack", action="store_true", help="bench only (SRC is packed by bench if needed)")
    ap.add_argument("--pack-args", default="", metavar="'FLAGS'", help="more flags for loader pack, one string, "
                    "given before SRC with = (e.g. --pack-args='--shuffle-seed 0')")
    ap.add_argument("--bandwidth-mb", type=float, metavar="MB_PER_S", help="cap the bench's proxy "
                    "(tests/faultproxy.py) at MB_PER_S (10^6 bytes/s) for all responses together (the pack "
                    "goes to the server directly)")
    ap.add_argument("--pin-server", action="store_true", help="run the S3 server and the proxy on the last "
                    "usable CPU and the bench on the others, as a store on another machine would (on a 2-core "
                    "machine the bench then has 1 core, its local rows too: compare ratios)")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then loader bench's flags")
    args = ap.parse_args(argv)
    extra = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args

    from moto.server import ThreadedMotoServer

    cpus = sorted(os.sched_getaffinity(0))
    bench_cpus = set(cpus)
    if args.pin_server:
        if len(cpus) < 2:
            ap.error(f"--pin-server needs 2 usable CPUs, this process has {len(cpus)}")
        bench_cpus = set(cpus[:-1])
        os.sched_setaffinity(0, {cpus[-1]})   # before the server's threads start: they inherit it
        print(f"(server and proxy on CPU {cpus[-1]}, the bench on {sorted(bench_cpus)})", file=sys.stderr, flush=True)

    def on_bench_cpus():
        os.sched_setaffinity(0, bench_cpus)

    t0, cpu0 = time.perf_counter(), sum(os.times()[:2])

    logging.getLogger("werkzeug").setLevel(logging.ERROR)    # moto's server logs every request
    # moto keeps an object over 5 MB in a temporary file and reads all of it, under the object's lock, for
    # every GET, a ranged one too: the 8 ranged parts of a 64 MB shard read 512 MB one after another. S3
    # reads only the range. In memory, a part costs moto one copy of the object (a few ms).
    os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(4 << 30))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _host, port = server.get_host_and_port()
        endpoint = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items()
               if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")}
        env.update(FAKE_ENV, AWS_ENDPOINT_URL=endpoint, PYTHONPATH=str(ROOT))
        import boto3

        bucket = args.url.removeprefix("s3://").split("/", 1)[0]
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        loader_cmd = [sys.executable, "-m", "loader"]
        if not args.no_pack:
            cmd = [*loader_cmd, "pack", args.src, args.url, *args.pack_args.split()]
            print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
            subprocess.run(cmd, env=env, check=True, preexec_fn=lambda: os.sched_setaffinity(0, set(cpus)))
        cmd = [*loader_cmd, "bench", args.src, "--packed", args.url, *extra]
        print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
        sys.path.insert(0, str(ROOT))
        from tests.faultproxy import FaultProxy

        # The proxy answers ranged GETs from each object, fetched from moto once (moto reads a whole object
        # for every ranged GET, S3 only the range: FaultProxy's docstring), and caps the bandwidth if asked.
        cap = None if args.bandwidth_mb is None else int(args.bandwidth_mb * 1e6)
        proxy = FaultProxy(endpoint, bandwidth=cap, range_cache=True).start()
        try:
            how = "uncapped" if cap is None else f"capped at {args.bandwidth_mb:g} MB/s"
            print(f"(through a proxy, {how}: {proxy.url})", file=sys.stderr, flush=True)
            result = subprocess.run(cmd, env={**env, "AWS_ENDPOINT_URL": proxy.url}, check=False,
                                    preexec_fn=on_bench_cpus).returncode
            got = sum(1 for r in proxy.log if r.method == "GET")
            print(f"(the proxy served {got} GETs)", file=sys.stderr, flush=True)
            return result
        finally:
            proxy.stop()
    finally:
        server.stop()
        # The store's own CPU (moto and the proxy run in this process): on a 2-core machine it is taken
        # from the loader's decode, which a real object store never does.
        cpu, wall = sum(os.times()[:2]) - cpu0, time.perf_counter() - t0
        print(f"(the S3 server and proxy used {cpu:.1f} CPU-s in {wall:.1f} s, serving the pack's upload too)",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
