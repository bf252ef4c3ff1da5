"""Same-process A/B of ImageLoader settings: the loaders take turns, batch runs alternating.

``loader bench`` compares pipelines; this compares settings of one (a recipe knob's cost)
without the drift between processes (~10% here): every configuration runs in every round.

    python benchmarks/ab_loaders.py /tmp/ds3k.v3 'none=dict()' 'jitter=dict(color_jitter=0.4)'
    python benchmarks/ab_loaders.py /tmp/ds3k.v3 'fast=dict(train=False)' \\
        'exact=dict(train=False, eval_mode="torchvision")'

Each NAME=KWARGS is a Python dict expression of ImageLoader keyword arguments (batch 64, CPU,
224 px unless given). Prints, per configuration, the median images/s over the rounds (and
its range) and the median CPU ms per image (``time.process_time``: all threads).
"""

from __future__ import annotations

import argparse
import ast
import time

import numpy as np


def _kwargs(text: str) -> tuple[str, dict]:
    name, _, expr = text.partition("=")
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise SystemExit(f"error: {text!r}: expected NAME=dict(key=value, ...)") from None
    if not (isinstance(tree, ast.Call) and getattr(tree.func, "id", None) == "dict" and not tree.args):
        raise SystemExit(f"error: {text!r}: expected NAME=dict(key=value, ...)")
    try:
        return name, {kw.arg: ast.literal_eval(kw.value) for kw in tree.keywords}
    except ValueError:
        raise SystemExit(f"error: {text!r}: the values must be Python literals (numbers, strings, tuples)") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dst", help="packed dataset")
    p.add_argument("configs", nargs="+", metavar="NAME=dict(...)", help="ImageLoader keyword arguments")
    p.add_argument("--rounds", type=int, default=4, help="rounds; each runs every configuration (default: 4)")
    p.add_argument("--batches", type=int, default=30, help="timed batches per run, after 2 (default: 30)")
    args = p.parse_args(argv)

    import loader

    loaders = {}
    for text in args.configs:
        name, kw = _kwargs(text)
        try:
            loaders[name] = loader.ImageLoader(args.dst, **{"batch_size": 64, "device": "cpu", **kw})
        except (ValueError, TypeError) as e:      # LoaderError's data errors are ValueErrors too
            raise SystemExit(f"error: {name}: {e}") from None
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in loaders}
    for _ in range(args.rounds):
        for name, ld in loaders.items():
            it = iter(ld)
            next(it), next(it)                      # the pipeline's start and its first batch
            t0, c0, n = time.perf_counter(), time.process_time(), 0
            for _ in range(args.batches):
                n += next(it)[0].shape[0]
            runs[name].append((n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e3))
            del it
    for name, v in runs.items():
        a = np.array(v)
        print(f"{name:16s} images/s {np.median(a[:, 0]):7.1f} ({a[:, 0].min():.0f}-{a[:, 0].max():.0f})  "
              f"CPU ms/image {np.median(a[:, 1]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
