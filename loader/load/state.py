"""`ImageLoader`'s resume state: what ``state_dict()`` holds and what ``load_state_dict()`` accepts.

A state is a dict of plain ints, bools, strings and (``segments``) lists of ints: it survives
``torch.save`` (also loaded with ``weights_only=True``), JSON and YAML:

================== ==========================================================================
key                meaning
================== ==========================================================================
``epoch``          the epoch the state is in
``batches_done``   its batches already yielded (0: not started; ``num_batches``: finished)
``seed``           the loader's seed (a drawn one too: ``seed=None``)
``batch_size``     per rank
``world_size``     ranks; ``rank`` is recorded, never checked (rank 0's state resumes every rank)
``shuffle``        whether epochs are shuffled
``num_samples``    this rank's records per epoch
``num_records``    records in the packed dataset
``num_batches``    ``len(loader)`` when saved (new: tells an epoch's end from its middle)
``drop_last``      as the loader has it (new)
``pad``            as the loader has it (new)
``subset_records`` records per epoch over all ranks: the dataset or its split (new)
``dataset``        :func:`dataset_fingerprint` of the packed dataset (new)
``segments``       the epoch's parts run before a resume on another world size, as
                   ``[world_size, batch_size, batches_done]`` lists (new; ``[]`` unless resumed so)
``shuffle_mode``   "global", "block" or "off" (new, 0.4: states without it are "global" or "off")
``block_shards``   shuffle="block"'s window in shards (0 otherwise; new, 0.4)
``local_world_size`` ranks per node shuffle="block" dealt windows to (0 otherwise; new, 0.4)
================== ==========================================================================

States saved by earlier loaders (0.2, 0.3) lack the keys marked new; they still load.
After a resume on another world size, ``batches_done`` and ``num_batches`` count the batches of
the epoch's last part (what this world size yields of the rest), ``segments`` the parts before.

What must match depends on where the state was saved:

- **at an epoch boundary** (``batches_done`` 0, or ``num_batches``: "start epoch e", "start
  epoch e + 1"): only the dataset. Any batch size, seed, world size, shuffle or split resumes.
- **mid-epoch**: the dataset, and everything that decides which records the rest of the
  epoch holds and in which order: ``seed``, ``shuffle``, ``drop_last``, ``pad``, the records per
  epoch and the global batch (``batch_size`` x ``world_size``). Each mismatch is one error naming
  the parameter as the loader takes it. With ``shuffle="block"`` also the window (``block_shards``),
  the world size and the ranks per node (``LOCAL_WORLD_SIZE``): the block order depends on all three.
- **mid-epoch on another world size** (global batch kept: 2 ranks x 24 -> 3 ranks x 16): every
  rank of the saved run read the first ``batches_done`` batches of its contiguous share, so what
  is left is known from ``(seed, epoch, records, world_size, batch_size, batches_done)``; the new
  ranks split it as an epoch is split (:func:`loader.load.sampler.resumed_positions`): every
  record not yet read is read once (``pad`` repeats a few to keep shares equal, ``drop_last``
  drops nothing more). Records regroup into other batches, so their crops differ from the
  uninterrupted run's (the crop RNG keys off a batch's first epoch position).

A loader whose seed was drawn (``seed=None``) adopts the state's seed, so resuming it is exact;
a seed the user gave is kept (and must match mid-epoch).
"""

from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from loader.errors import ArgumentError
from loader.load.sampler import num_batches

__all__ = ["SavedState", "Resume", "dataset_fingerprint", "parse_state", "resume_point"]

_REQUIRED = ("epoch", "batches_done", "seed", "batch_size", "num_samples", "world_size", "shuffle",
             "num_records")
_INTS = {"epoch": 0, "batches_done": 0, "seed": 0, "batch_size": 1, "num_samples": 0, "world_size": 1,
         "num_records": 0, "num_batches": 0, "subset_records": 0, "rank": 0, "block_shards": 0,
         "local_world_size": 0}     # key -> least value
_MODES = ("global", "block", "off")
_BOOLS = ("shuffle", "drop_last", "pad")
_SEED_END = 2**63
_UNCHANGED = "pass the dict ImageLoader.state_dict() returned, unchanged"
# Records whose checksums join the fingerprint: enough to tell two packs of the same size apart,
# few enough that a fingerprint costs the same for 10 records as for 10 million.
_SAMPLED = 17


class Resume(NamedTuple):
    """Where a loaded state resumes: ``epoch``, its first batch, its earlier parts, a seed to adopt."""

    epoch: int
    start_batch: int
    segments: tuple[tuple[int, int, int], ...]    # (world_size, batch_size, batches_done), in order
    seed: int | None                               # the state's seed, for a seed=None loader; else None


@dataclass(frozen=True)
class SavedState:
    """A validated state: ``values`` holds every key present, as int / bool / str."""

    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` for a key an older loader did not save."""
        return self.values.get(key, default)


def dataset_fingerprint(dataset) -> str:
    """A short hex digest of what identifies a packed dataset, in O(shards), not O(records).

    It covers the record count, the classes and label kind, the payload bytes, and the
    manifest checksums of 17 records spread over the dataset: two packs of different images
    differ, a re-pack of the same images into other shard sizes does not.

    >>> dataset_fingerprint(open_dataset("photos.packed"))      # doctest: +SKIP
    '5c0f6f2d3e1a9b47'
    """
    m = dataset.manifest
    n = m.num_records
    sampled = sorted({int(i) for i in np.linspace(0, n - 1, _SAMPLED)}) if n else []
    identity = {"records": n, "classes": list(m.classes), "labels": [m.label_source, m.multi_label],
                "bytes": sum(s.bytes for s in m.shards), "checksums": [m.checksum(i) for i in sampled]}
    return hashlib.blake2b(json.dumps(identity).encode(), digest_size=8).hexdigest()


def _bad(key: str, what: str, value: Any) -> ArgumentError:
    return ArgumentError(f"state_dict[{key!r}] must be {what}, got {value!r}: {_UNCHANGED}", param="state_dict")


def _parse_segments(value: Any, global_batch: int) -> tuple[tuple[int, int, int], ...]:
    """``segments`` checked: ``[world_size, batch_size, batches_done]`` lists of ints, each with the
    state's global batch (a resume on another world size keeps it)."""
    what = (f"a list of [world_size, batch_size, batches_done] lists with batch_size x world_size = "
            f"{global_batch}")
    if not isinstance(value, (list, tuple)):
        raise _bad("segments", what, value)
    out = []
    for part in value:
        if not (isinstance(part, (list, tuple)) and len(part) == 3 and all(
                isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in part)):
            raise _bad("segments", what, value)
        world_size, batch_size, done = (int(v) for v in part)
        if world_size < 1 or batch_size < 1 or done < 1 or world_size * batch_size != global_batch:
            raise _bad("segments", what, value)
        out.append((world_size, batch_size, done))
    return tuple(out)


def parse_state(state: Any) -> SavedState:
    """``state`` checked: a dict with every key loader 0.2 saved, each of its type and range.

    Raises :class:`loader.errors.ArgumentError` (``param="state_dict"``) naming the first bad key.
    """
    if not isinstance(state, dict):
        raise ArgumentError(f"state_dict must be the dict ImageLoader.state_dict() returned, got "
                            f"{type(state).__name__}", param="state_dict")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ArgumentError(f"state_dict has no {missing[0]!r} (an ImageLoader state holds "
                            f"{', '.join(_REQUIRED)}): {_UNCHANGED}", param="state_dict")
    out: dict[str, Any] = {}
    for key, least in _INTS.items():
        if key not in state:
            continue
        v = state[key]
        # bool is an int to Python; a True batch count is a tampered state, not 1.
        if not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_)) or v < least or (
                key == "seed" and v >= _SEED_END):
            what = "an int in [0, 2**63)" if key == "seed" else f"an int >= {least}"
            raise _bad(key, what, v)
        out[key] = int(v)
    for key in _BOOLS:
        if key in state:
            if not isinstance(state[key], (bool, np.bool_)):
                raise _bad(key, "True or False", state[key])
            out[key] = bool(state[key])
    if "dataset" in state:
        if not isinstance(state["dataset"], str):
            raise _bad("dataset", "the dataset's fingerprint (a str)", state["dataset"])
        out["dataset"] = state["dataset"]
    if "shuffle_mode" in state:
        if state["shuffle_mode"] not in _MODES or not isinstance(state["shuffle_mode"], str):
            raise _bad("shuffle_mode", "'global', 'block' or 'off'", state["shuffle_mode"])
        out["shuffle_mode"] = state["shuffle_mode"]
    if "segments" in state:
        out["segments"] = _parse_segments(state["segments"], out["batch_size"] * out["world_size"])
    if "rank" in out and out["rank"] >= out["world_size"]:
        raise _bad("rank", f"an int in [0, world_size={out['world_size']})", out["rank"])
    if "num_batches" in out and out["batches_done"] > out["num_batches"]:
        raise _bad("batches_done", f"an int in [0, num_batches={out['num_batches']}]", out["batches_done"])
    return SavedState(out)


def resume_point(saved: SavedState, now: dict[str, Any], *, seed_drawn: bool, where: str) -> Resume:
    """Where a loader whose own state is ``now`` resumes ``saved``.

    ``seed_drawn``: the loader's seed was drawn (``seed=None``), so it takes the saved one.
    ``where``: the dataset's path, for messages. Raises :class:`loader.errors.ArgumentError`
    (``param="state_dict"``; mid-epoch, ``param="batch_size"`` for another global batch,
    ``"shuffle"`` for another shuffle mode, ``"block_shards"`` for another block window,
    ``"world_size"`` for another node layout under shuffle="block") when the state cannot resume
    this loader.
    """
    if saved["num_records"] != now["num_records"]:
        raise ArgumentError(f"state_dict was saved for a dataset of {saved['num_records']} records, but "
                            f"{where} holds {now['num_records']}: load it into a loader of the dataset "
                            f"it was saved from", param="state_dict")
    if "dataset" in saved.values and saved["dataset"] != now["dataset"]:
        raise ArgumentError(f"state_dict was saved from another dataset than {where} (fingerprint "
                            f"{saved['dataset']}, this one {now['dataset']}): load it into a loader of the "
                            f"dataset it was saved from", param="state_dict")
    epoch, done = saved["epoch"], saved["batches_done"]
    earlier = saved.get("segments", ())
    adopt = saved["seed"] if seed_drawn and saved["seed"] != now["seed"] else None
    # Old states lack num_batches: the saved length follows from their share, with this
    # loader's drop_last (0.2/0.3 had no other way to say it).
    saved_len = saved.get("num_batches")
    if saved_len is None:
        saved_len = num_batches(saved["num_samples"], saved["batch_size"], saved.get("drop_last", now["drop_last"]))
    if done == 0 and not earlier:
        return Resume(epoch, 0, (), adopt)
    if done == saved_len:
        return Resume(epoch + 1, 0, (), adopt)
    # Mid-epoch: the rest of the epoch must be the records the saved run would have read next.
    at = f"state_dict was saved in the middle of epoch {epoch} (after batch {done} of {saved_len})"
    checks = [("seed", None if seed_drawn else saved["seed"]), ("shuffle", saved["shuffle"]),
              ("drop_last", saved.get("drop_last")), ("pad", saved.get("pad"))]
    for key, value in checks:
        if value is not None and value != now[key]:
            raise ArgumentError(
                f"{at} with {key}={value!r}, but this loader has {key}={now[key]!r}: build it with "
                f"{key}={value!r} to resume mid-epoch, or resume from a state saved at an epoch's end "
                f"(it loads into any loader of this dataset)", param="state_dict")
    same_world = saved["world_size"] == now["world_size"]
    _check_block(saved, now, at, same_world)
    if "subset_records" in saved.values:
        if saved["subset_records"] != now["subset_records"]:
            raise ArgumentError(
                f"state_dict was saved in the middle of epoch {epoch} by a loader of "
                f"{saved['subset_records']} records per epoch, but this loader draws from "
                f"{now['subset_records']}: build it with the same validation_split, subset and seed",
                param="state_dict")
    elif not same_world:      # 0.2/0.3 states say only this rank's share: it resumes on its world size
        raise ArgumentError(
            f"{at} with world_size={saved['world_size']} by an older loader (its state has no "
            f"'subset_records'), but this loader has world_size={now['world_size']}: resume it on "
            f"world_size={saved['world_size']}, or from a state saved at an epoch's end", param="state_dict")
    elif saved["num_samples"] != now["num_samples"]:
        raise ArgumentError(
            f"state_dict was saved in the middle of epoch {epoch} with num_samples={saved['num_samples']} "
            f"per rank, but this loader has {now['num_samples']}: build it with the same "
            f"validation_split, subset and drop_last", param="state_dict")
    _check_global_batch(saved, now, at)
    if same_world:            # the same split of the same rest: continue it batch for batch
        if not earlier and done > now["num_batches"]:
            raise _bad("batches_done", f"an int in [0, {now['num_batches']}] (this loader's batches per epoch)",
                       done)
        return Resume(epoch, done, earlier, adopt)
    # Another world size: the part run so far joins the epoch's history; the new ranks split the rest.
    return Resume(epoch, 0, (*earlier, (saved["world_size"], saved["batch_size"], done)) if done else earlier,
                  adopt)


def _check_block(saved: SavedState, now: dict[str, Any], at: str, same_world: bool) -> None:
    """Mid-epoch, the shuffle mode must match and, for shuffle="block", the window, the world size and
    the ranks per node: the block order is a function of them (:func:`loader.load.sampler.block_order`)."""
    mode = saved.get("shuffle_mode", "global" if saved["shuffle"] else "off")
    if mode != now["shuffle_mode"]:
        raise ArgumentError(f"{at} with shuffle={mode!r}, but this loader has shuffle={now['shuffle_mode']!r}: "
                            f"build it with shuffle={mode!r} to resume mid-epoch, or resume from a state saved "
                            f"at an epoch's end (it loads into any loader of this dataset)", param="shuffle")
    if mode != "block":
        return
    if saved.get("block_shards") != now["block_shards"]:
        raise ArgumentError(f"{at} with shuffle='block' over windows of block_shards={saved.get('block_shards')} "
                            f"shards, but this loader's are {now['block_shards']}: build it with "
                            f"block_shards={saved.get('block_shards')} to resume mid-epoch, or resume from a state "
                            f"saved at an epoch's end", param="block_shards")
    if not same_world or saved.get("local_world_size") != now["local_world_size"]:
        raise ArgumentError(f"{at} with shuffle='block' on world_size={saved['world_size']} "
                            f"(LOCAL_WORLD_SIZE={saved.get('local_world_size')}), but this loader runs on "
                            f"world_size={now['world_size']} (LOCAL_WORLD_SIZE={now['local_world_size']}): the "
                            f"block order deals windows to nodes, so resume mid-epoch on the same ranks per node "
                            f"and nodes, or from a state saved at an epoch's end", param="world_size")


def _check_global_batch(saved: SavedState, now: dict[str, Any], at: str) -> None:
    """Mid-epoch, the global batch (``batch_size`` x ``world_size``) must be the saved one: the rest of
    the epoch is whole global batches of the saved run (with ``drop_last``, exactly so)."""
    b, w = saved["batch_size"], saved["world_size"]
    nb, nw = now["batch_size"], now["world_size"]
    if b * w == nb * nw:
        return
    do = (f"build it with batch_size={b * w // nw}" if b * w % nw == 0 else
          f"no batch_size gives {b * w} on world_size={nw}: run on a world size that divides {b * w}")
    raise ArgumentError(
        f"{at} with a global batch of {b * w} (batch_size={b} x world_size={w}), but this loader's is "
        f"{nb * nw} (batch_size={nb} x world_size={nw}): the global batch must match to resume mid-epoch; "
        f"{do}, or resume from a state saved at an epoch's end (it loads into any loader of this dataset)",
        param="batch_size")
