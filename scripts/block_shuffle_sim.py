"""How far ``shuffle="block"`` is from a uniform shuffle: the numbers in docs/remote.md#shuffle.

A pack of ``--classes x --per-class`` records in ``--shards`` equal shards, records in class order (as
``loader pack`` writes class folders) or mixed (packed from a shuffled labels file); one epoch, one
rank, batches of ``--batch``. Per window size W (shards): distinct classes and shards per batch, the
fraction of record pairs that can meet in a batch, and the mean |position| change of a record
between two epochs (divided by n; a uniform shuffle's is 1/3).

    .venv/bin/python scripts/block_shuffle_sim.py
"""

from __future__ import annotations

import argparse

import numpy as np

from loader.load.sampler import block_order, block_windows, epoch_order


def batch_stats(order: np.ndarray, label: np.ndarray, shard: np.ndarray, batch: int) -> tuple[float, float]:
    """Mean distinct classes and shards per full batch of ``order``."""
    m = len(order) // batch * batch
    rows_l, rows_s = label[order[:m]].reshape(-1, batch), shard[order[:m]].reshape(-1, batch)

    def distinct(rows):
        s = np.sort(rows, axis=1)
        return float(np.mean(1 + (np.diff(s, axis=1) != 0).sum(axis=1)))

    return distinct(rows_l), distinct(rows_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--windows", default="1,4,16,64,200")
    a = ap.parse_args()
    n = a.classes * a.per_class
    shard = np.repeat(np.arange(a.shards), np.diff(np.linspace(0, n, a.shards + 1).astype(int)))
    sorted_label = np.repeat(np.arange(a.classes), a.per_class)
    mixed_label = np.random.default_rng(1).permutation(sorted_label)
    print(f"{n} records, {a.classes} classes, {a.shards} shards, batch {a.batch}")
    print("| order | W | classes/batch (class-sorted pack) | classes/batch (mixed pack) | shards/batch "
          "| pairs that can share a batch | mean position change between epochs |")
    rows = [("global", None)] + [("block", int(w)) for w in a.windows.split(",")]
    for mode, w in rows:
        if mode == "global":
            o0, o1 = epoch_order(n, 0, 0, True), epoch_order(n, 0, 1, True)
            pairs = 1.0
        else:
            kw = dict(world_size=1, local_world_size=1, batch_size=a.batch, drop_last=False, pad=False)
            o0 = block_order(shard, a.shards, 0, 0, w, **kw)
            o1 = block_order(shard, a.shards, 0, 1, w, **kw)
            sizes = np.bincount(block_windows(a.shards, 0, 0, w)[shard])
            pairs = float((sizes.astype(float) ** 2).sum() / n**2)
        c_sorted, s_batch = batch_stats(o0, sorted_label, shard, a.batch)
        c_mixed, _ = batch_stats(o0, mixed_label, shard, a.batch)
        p0, p1 = np.empty(n), np.empty(n)
        p0[o0], p1[o1] = np.arange(n), np.arange(n)
        move = float(np.abs(p0 - p1).mean() / n)
        print(f"| {mode} | {w or '-'} | {c_sorted:.1f} | {c_mixed:.1f} | {s_batch:.1f} | {pairs:.3f} | {move:.3f} |")


if __name__ == "__main__":
    main()
