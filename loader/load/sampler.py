"""Which records, in which order, with which crop: pure numpy, no DALI, no torch.

Everything random here is a function of ``(seed, epoch, ...)`` so that runs,
resumed runs and every DDP rank agree without talking to each other:

- :func:`split_indices`   -- train/validation split of a packed dataset (Keras-style).
- :func:`epoch_order`     -- the full permutation of one epoch (not a shuffle buffer).
- :func:`block_order`     -- ``shuffle="block"``'s epoch order: shards permuted, records shuffled
                             within windows of consecutive shards, windows dealt to nodes.
- :func:`rank_share`      -- this rank's slice of the epoch, equal-length on every rank
                             (or, ``pad=False``, every record exactly once over the ranks).
- :func:`remaining_positions` / :func:`resumed_positions` -- the rest of an epoch cut after some
                             batches on one world size, and its split over another (elastic resume).
- :func:`crop_windows`    -- per-sample random-resized-crop (train) or centre crop (eval)
                             windows in source-pixel coordinates, plus flip flags.

>>> epoch_order(5, seed=0, epoch=0, shuffle=False).tolist()
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

import math

import numpy as np

from loader import rng as rng_streams
from loader.augment.recipe import EVAL_CROP_FRACTION, RRC_RATIO, RRC_SCALE

__all__ = ["split_indices", "epoch_order", "block_order", "block_windows", "block_window", "nodes_of",
           "rank_share", "rank_positions", "share_start", "share_size",
           "num_batches", "remaining_positions", "resumed_positions", "crop_windows"]


def split_indices(n: int, validation_split: float | None, subset: str | None, seed: int) -> np.ndarray:
    """Indices of the ``subset`` ("training" / "validation") of ``n`` records.

    Like ``tf.keras.utils.image_dataset_from_directory``: shuffle all indices with
    ``seed``, the last ``int(validation_split * n)`` are validation, the rest
    training. Disjoint, together complete, stable across runs. Returned sorted,
    so record order (and locality in the shards) is kept.

    >>> tr = split_indices(10, 0.2, "training", seed=1); va = split_indices(10, 0.2, "validation", seed=1)
    >>> len(tr), len(va), sorted(set(tr) | set(va)) == list(range(10))
    (8, 2, True)
    """
    if validation_split is None:
        if subset is not None:
            raise ValueError("subset requires validation_split (a float in (0, 1))")
        return np.arange(n, dtype=np.int64)
    if not (0.0 < validation_split < 1.0):
        raise ValueError(f"validation_split must be a float in (0, 1), got {validation_split!r}")
    if subset not in ("training", "validation"):
        raise ValueError(f"subset must be 'training' or 'validation' with validation_split, got {subset!r}")
    perm = np.random.default_rng([seed, rng_streams.SPLIT]).permutation(n)
    n_val = int(validation_split * n)
    chosen = perm[n - n_val:] if subset == "validation" else perm[: n - n_val]
    return np.sort(chosen).astype(_index_dtype(n))


def _index_dtype(n: int) -> type:
    """The narrowest integer type for indices below ``n``: int32 below 2**31 records."""
    return np.int32 if n < 2**31 else np.int64


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Positions ``0..n-1`` in the order of ``epoch``: a full permutation seeded by (seed, epoch).

    >>> bool((epoch_order(6, 0, 1, True) == epoch_order(6, 0, 1, True)).all())
    True
    """
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    # rng_streams' "epoch order": untagged
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def block_windows(num_shards: int, seed: int, epoch: int, window: int) -> np.ndarray:
    """Window of each shard in ``epoch`` (``shuffle="block"``): the shards in an order permuted by
    (seed, epoch), cut into windows of ``window`` consecutive shards (the last may be shorter).

    >>> w = block_windows(6, seed=0, epoch=0, window=2); sorted(np.bincount(w).tolist())
    [2, 2, 2]
    """
    perm = np.random.default_rng([seed, epoch, rng_streams.BLOCK_SHARDS]).permutation(num_shards)
    out = np.empty(num_shards, dtype=np.int64)
    out[perm] = np.arange(num_shards, dtype=np.int64) // window
    return out


def nodes_of(world_size: int, local_world_size: int) -> int:
    """Nodes of a run: ``world_size // local_world_size``, or 1 per rank when the local world size
    does not divide the world (then ranks are treated as nodes of one rank each)."""
    return world_size // local_world_size if world_size % local_world_size == 0 else world_size


def block_window(num_shards: int, nodes: int, *, block_shards: int | None, cache_limit: int | None,
                 largest_shard: int) -> int:
    """Shards per window of ``shuffle="block"``: ``block_shards`` if given; else, under a ``cache_limit``
    (a remote dataset's), half the shards that fit in it (the window read now plus the next one
    fetched ahead); at most ``ceil(num_shards / nodes)`` (one window per node: the widest shuffle that
    still gives each node its own shards), at least 1.

    >>> block_window(100, 2, block_shards=None, cache_limit=10 * 64, largest_shard=64)
    5
    >>> block_window(100, 2, block_shards=None, cache_limit=None, largest_shard=64)
    50
    """
    widest = max(1, math.ceil(num_shards / nodes))
    if block_shards is not None:
        return min(block_shards, max(num_shards, 1))
    if cache_limit is not None:
        return max(1, min(widest, cache_limit // max(largest_shard, 1) // 2))
    return widest


def block_order(shard_of: np.ndarray, num_shards: int, seed: int, epoch: int, window: int, *,
                world_size: int, local_world_size: int, batch_size: int, drop_last: bool,
                pad: bool = True) -> np.ndarray:
    """``shuffle="block"``'s order of epoch positions ``0..n-1`` (``n = len(shard_of)``, ``shard_of[p]``
    the shard of the record at position ``p``): what :func:`epoch_order` is for ``shuffle="global"``,
    split over the ranks by the same :func:`rank_positions`, so shares, ``pad``, ``drop_last`` and
    resume work as for a global shuffle.

    The rule, all a function of (seed, epoch, shard boundaries, window, world_size, local_world_size,
    batch_size, drop_last, pad):

    1. shards are permuted and cut into windows of ``window`` consecutive shards (:func:`block_windows`);
    2. window ``k`` goes to node ``k % nodes`` (:func:`nodes_of`); the records are laid out node by
       node, window by window, shuffled within their window;
    3. that sequence is cut into the nodes' shares of the epoch (node ``i``: ranks ``i*L .. i*L+L-1``,
       ``L = local_world_size``), so a node reads its own windows, plus a spill of at most one window
       where the shares and the windows' sizes disagree;
    4. within a node, records are dealt round-robin to its local ranks: they all read the same window
       at the same time, so a node's cache holds one window however many ranks it runs.

    O(n log n) numpy, no per-record Python.

    >>> order = block_order(np.repeat(np.arange(3), 4), 3, 0, 0, 1, world_size=1, local_world_size=1,
    ...                     batch_size=4, drop_last=False)
    >>> sorted(order.tolist()) == list(range(12)), len({int(s) for s in order[:4] // 4})
    (True, 1)
    """
    n = len(shard_of)
    rng = np.random.default_rng([seed, epoch, rng_streams.BLOCK_RECORDS])
    win = block_windows(num_shards, seed, epoch, window)
    nodes = nodes_of(world_size, local_world_size)
    per_node = local_world_size if nodes != world_size else 1
    k = int(win.max()) + 1 if num_shards else 1
    node_major = (np.arange(k) % nodes) * k + np.arange(k)     # window -> its place in the node-major layout
    shuffled = rng.permutation(n)
    seq = shuffled[np.argsort(node_major[win[np.asarray(shard_of, dtype=np.int64)]][shuffled], kind="stable")]
    # Each epoch position's (node, slot): a rank's share is contiguous (rank_positions); slot t*L + j is
    # local rank j's t-th record, so sorting by slot deals the node's records round-robin.
    owner = np.full(n, nodes, dtype=np.int64)             # positions no rank reads (drop_last): last
    slot = np.arange(n, dtype=np.int64)
    for rank in range(world_size):
        a = share_start(n, rank, world_size, batch_size, drop_last, pad=pad)
        b = min(a + share_size(n, world_size, batch_size, drop_last, pad=pad, rank=rank), n)
        if a < b:
            owner[a:b] = rank // per_node
            slot[a:b] = np.arange(b - a, dtype=np.int64) * per_node + rank % per_node
    order = np.empty(n, dtype=np.int64)
    order[np.lexsort((slot, owner))] = seq
    return order


def rank_share(order: np.ndarray, rank: int, world_size: int, batch_size: int,
               drop_last: bool, *, pad: bool = True) -> np.ndarray:
    """This rank's contiguous slice of the epoch ``order``.

    - ``drop_last``: each rank gets ``(n // world_size) // batch_size * batch_size``
      samples, the same on every rank, so no rank waits in a collective for another;
      the remainder of the epoch is dropped (a different one each epoch when shuffling).
    - otherwise, ``pad`` (default): like ``DistributedSampler``, the order is padded by
      wrapping around to a multiple of ``world_size`` (only when it does not divide
      evenly; with one rank nothing is repeated), every rank gets ``ceil(n / world_size)``
      and the last batch may be partial.
    - otherwise, ``pad=False``: every record exactly once over the ranks, in shares that
      differ by at most one (the first ``n % world_size`` ranks get one more), so a sum
      over the ranks (an evaluation's correct count) counts each record once; ranks may
      then yield different numbers of batches.

    >>> rank_share(np.arange(10), rank=1, world_size=2, batch_size=2, drop_last=True).tolist()
    [4, 5, 6, 7]
    >>> [rank_share(np.arange(5), r, 2, 2, False, pad=False).tolist() for r in range(2)]
    [[0, 1, 2], [3, 4]]
    """
    n = len(order)
    return order[rank_positions(n, rank, world_size, batch_size, drop_last, pad=pad).astype(np.int64)]


def rank_positions(n: int, rank: int, world_size: int, batch_size: int, drop_last: bool, *,
                   pad: bool = True) -> np.ndarray:
    """Epoch positions of this rank's share: ``rank_share(np.arange(n), ...)`` without the
    O(n) array (int32 below 2**31 records).

    >>> rank_positions(5, rank=1, world_size=2, batch_size=2, drop_last=False).tolist()
    [3, 4, 0]
    >>> rank_positions(5, rank=1, world_size=2, batch_size=2, drop_last=False, pad=False).tolist()
    [3, 4]
    """
    per_rank = share_size(n, world_size, batch_size, drop_last, pad=pad, rank=rank)
    first = share_start(n, rank, world_size, batch_size, drop_last, pad=pad)
    return (np.arange(first, first + per_rank, dtype=np.int64) % max(n, 1)).astype(_index_dtype(n))


def share_start(n: int, rank: int, world_size: int, batch_size: int, drop_last: bool, *,
                pad: bool = True) -> int:
    """Epoch position of the first record of ``rank``'s share.

    >>> [share_start(5, r, 2, 2, False, pad=False) for r in range(2)]
    [0, 3]
    """
    if drop_last or pad:
        return rank * share_size(n, world_size, batch_size, drop_last, pad=pad)
    q, r = divmod(n, world_size)
    return rank * q + min(rank, r)


def share_size(n: int, world_size: int, batch_size: int, drop_last: bool, *, pad: bool = True,
               rank: int = 0) -> int:
    """Samples ``rank`` gets from an epoch of ``n``: the length of its :func:`rank_share`.

    The same on every rank unless ``pad=False`` without ``drop_last``: then the first
    ``n % world_size`` ranks get ``n // world_size + 1``, the others ``n // world_size``.

    >>> share_size(10, world_size=2, batch_size=2, drop_last=True), share_size(9, 2, 2, False)
    (4, 5)
    >>> [share_size(9, 2, 2, False, pad=False, rank=r) for r in range(2)]
    [5, 4]
    """
    if drop_last:
        return (n // world_size) // batch_size * batch_size
    if pad:
        return math.ceil(n / world_size)
    q, r = divmod(n, world_size)
    return q + (rank < r)


def num_batches(share: int, batch_size: int, drop_last: bool) -> int:
    """Batches yielded for ``share`` samples.

    >>> num_batches(10, 4, drop_last=True), num_batches(10, 4, drop_last=False)
    (2, 3)
    """
    return share // batch_size if drop_last else math.ceil(share / batch_size)


def remaining_positions(n: int, segments, *, drop_last: bool, pad: bool = True) -> np.ndarray:
    """Epoch positions (ascending) not yet read after ``segments`` of an epoch of ``n``.

    ``segments`` is the epoch so far: ``(world_size, batch_size, batches_done)`` parts, in order,
    each splitting what the parts before it left over its ranks as :func:`rank_positions` splits a
    whole epoch. Each rank's share is a contiguous run, so after ``k`` batches what was read is
    the first ``k * batch_size`` of every share: not a prefix of the epoch, but a function of
    ``(n, world_size, batch_size, k)`` alone: a resume state holds three ints per part, never a
    per-record array.

    What is left: every position no rank has read, except that with ``drop_last`` the remainder
    the part's plan drops stays dropped (so the rest is whole global batches); ``pad``'s wrapped
    repeats are not owed again (a position read once is read).

    >>> remaining_positions(10, [(2, 2, 1)], drop_last=False).tolist()      # shares 0-4 and 5-9
    [2, 3, 4, 7, 8, 9]
    """
    avail = np.arange(n, dtype=np.int64)
    for world_size, batch_size, done in segments:
        m = len(avail)
        read = np.zeros(m, dtype=bool)
        for rank in range(world_size):
            pos = rank_positions(m, rank, world_size, batch_size, drop_last, pad=pad)
            read[pos[: done * batch_size]] = True
        if drop_last:        # the part's plan never reads past its ranks' shares
            read[world_size * share_size(m, world_size, batch_size, drop_last, pad=pad):] = True
        avail = avail[~read]
    return avail


def resumed_positions(n: int, segments, rank: int, world_size: int, batch_size: int, drop_last: bool, *,
                      pad: bool = True) -> np.ndarray:
    """Epoch positions of ``rank``'s share of what ``segments`` left of an epoch of ``n``.

    The rest (:func:`remaining_positions`, in epoch order) is split like a whole epoch: contiguous
    shares, equal ones padded by wrapping around the rest (``pad``), or each position once
    (``pad=False``), or equal whole batches (``drop_last``: the rest is whole global batches, so
    nothing more is dropped). Without ``segments``: :func:`rank_positions`, unchanged.

    >>> [resumed_positions(10, [(2, 2, 1)], r, 4, 1, False, pad=False).tolist() for r in range(4)]
    [[2, 3], [4, 7], [8], [9]]
    """
    if not segments:
        return rank_positions(n, rank, world_size, batch_size, drop_last, pad=pad)
    rest = remaining_positions(n, segments, drop_last=drop_last, pad=pad)
    mine = rank_positions(len(rest), rank, world_size, batch_size, drop_last, pad=pad)
    return rest[mine.astype(np.int64)].astype(_index_dtype(n))


def crop_windows(heights: np.ndarray, widths: np.ndarray, rng: np.random.Generator | None,
                 scale: tuple[float, float] = RRC_SCALE,
                 ratio: tuple[float, float] = RRC_RATIO,
                 attempts: int = 10, hflip: float = 0.5,
                 crop_fraction: float = EVAL_CROP_FRACTION) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop windows and flips for a batch, in source pixels.

    Returns ``anchor`` (float32 ``[B, 2]`` as x, y), ``shape`` (float32 ``[B, 2]``
    as w, h) and ``flip`` (uint8 ``[B]``).

    With an ``rng`` (training): torchvision's ``RandomResizedCrop.get_params``,
    vectorised over the batch: up to ``attempts`` tries of an area fraction
    uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``; the first
    that fits wins; otherwise a centre crop with the ratio clamped into range.
    Flips are Bernoulli(``hflip``); the draw is made whatever ``hflip`` is, so it
    changes no other sample's crop.

    Without (evaluation, ``eval_mode="fast"``): the centre square covering
    ``crop_fraction`` of the shorter side, about the region that "resize shorter
    side to size/crop_fraction, centre-crop size" keeps (the exact one is
    :mod:`loader.augment.torchvision_eval`'s). No flips.

    >>> a, s, f = crop_windows(np.array([400]), np.array([600]), None)
    >>> a.tolist(), s.tolist(), f.tolist()
    ([[125.0, 25.0]], [[350.0, 350.0]], [0])
    """
    h = np.asarray(heights, dtype=np.float64)
    w = np.asarray(widths, dtype=np.float64)
    b = len(h)
    if rng is None:
        # Whole pixels, like the resize-then-crop it stands for (max 1: 1x1 images).
        side = np.maximum(np.rint(np.minimum(h, w) * crop_fraction), 1)
        anchor = np.stack([(w - side) // 2, (h - side) // 2], axis=1)
        shape = np.stack([side, side], axis=1)
        return anchor.astype(np.float32), shape.astype(np.float32), np.zeros(b, np.uint8)

    area = (h * w)[:, None]
    target = area * rng.uniform(scale[0], scale[1], size=(b, attempts))
    log_r = rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(b, attempts))
    r = np.exp(log_r)
    cw = np.rint(np.sqrt(target * r))
    ch = np.rint(np.sqrt(target / r))
    ok = (cw > 0) & (ch > 0) & (cw <= w[:, None]) & (ch <= h[:, None])
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(b), first]
    cw = cw[np.arange(b), first]
    ch = ch[np.arange(b), first]

    # Fallback (torchvision): centre crop of the whole image, ratio clamped into range.
    in_ratio = w / h
    fw = np.where(in_ratio < ratio[0], w, np.where(in_ratio > ratio[1], np.rint(h * ratio[1]), w))
    fh = np.where(in_ratio < ratio[0], np.rint(w / ratio[0]), h)
    cw = np.where(found, cw, fw)
    ch = np.where(found, ch, fh)

    # Offsets: integers uniform in [0, H - h] and [0, W - w], as torch.randint does.
    u = rng.random((b, 2))
    top = np.floor(u[:, 0] * (h - ch + 1))
    left = np.floor(u[:, 1] * (w - cw + 1))
    top = np.where(found, top, (h - ch) // 2)
    left = np.where(found, left, (w - cw) // 2)
    flip = (rng.random(b) < hflip).astype(np.uint8)
    anchor = np.stack([left, top], axis=1).astype(np.float32)
    shape = np.stack([cw, ch], axis=1).astype(np.float32)
    return anchor, shape, flip
