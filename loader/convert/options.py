"""Validation of :func:`loader.convert.packing.pack`'s options, before anything is read or written.

Messages name the Python parameter and set ``param=`` (:class:`~loader.errors.ArgumentError`);
the CLI maps it to its flag.

>>> check_options(None, 512, 2, None, 95, {"strict": False})
2
>>> check_options(None, float("inf"), None, None, 95, {})
Traceback (most recent call last):
...
loader.errors.ArgumentError: shard_size_mb must be a number of MB from 1e-06 (one byte) to 1,048,576 (got inf)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from loader.errors import ArgumentError, PackError
from loader.units import available_cores
from loader.validate import is_int as _is_int
from loader.validate import is_number

__all__ = ["MAX_SHARDS", "MAX_SHARD_SIZE_MB", "MAX_SIDE_LIMIT", "MAX_WORKERS", "MIN_SHARD_SIZE_MB",
           "ENGINES", "check_engine", "check_label_options", "check_options", "check_shuffle_seed"]

# Upper bounds of pack's numeric options: beyond them a value is a typo, not a plan (a shard
# size of inf once wrote Infinity, not JSON, into manifest.json; workers=10**6 would fork that many).
MAX_SHARDS = 100_000
MIN_SHARD_SIZE_MB = 1e-6            # one byte (MB = 10**6): smaller ones overflow the shard count
MAX_SHARD_SIZE_MB = 2**20           # ~1 TB
MAX_WORKERS = 1024
MAX_SIDE_LIMIT = 65_500             # the largest side a JPEG can be written with


def check_options(shards, shard_size_mb, workers, max_side, quality, flags: dict[str, object]) -> int:
    """Validate option values (``flags``: the True/False ones, by name); return the worker count to use."""
    if shards is not None and (not _is_int(shards) or not 1 <= shards <= MAX_SHARDS):
        raise ArgumentError(f"shards must be an integer from 1 to {MAX_SHARDS:,} (got {shards!r})",
                            param="shards")
    if (not is_number(shard_size_mb)
            or not MIN_SHARD_SIZE_MB <= shard_size_mb <= MAX_SHARD_SIZE_MB):      # also refuses nan and inf
        raise ArgumentError(f"shard_size_mb must be a number of MB from {MIN_SHARD_SIZE_MB:g} (one byte) to "
                            f"{MAX_SHARD_SIZE_MB:,} (got {shard_size_mb!r})", param="shard_size_mb")
    if workers is not None and (not _is_int(workers) or not 1 <= workers <= MAX_WORKERS):
        raise ArgumentError(f"workers must be an integer from 1 to {MAX_WORKERS} (got {workers!r})",
                            param="workers")
    if max_side is not None and (not _is_int(max_side) or not 16 <= max_side <= MAX_SIDE_LIMIT):
        raise ArgumentError(f"max_side must be an integer from 16 to {MAX_SIDE_LIMIT:,} pixels "
                            f"(got {max_side!r})", param="max_side")
    if not _is_int(quality) or not 1 <= quality <= 100:
        raise ArgumentError(f"quality must be an integer from 1 to 100 (got {quality!r})", param="quality")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ArgumentError(f"{name} must be True or False (got {value!r})", param=name)
    return int(workers or available_cores())


MAX_SEED = 2**63 - 1

#: pack's engines: a process pool on this machine, or one Ray task per shard (loader.convert.rayengine).
ENGINES = ("local", "ray")


def check_engine(engine, ray_address) -> None:
    """``engine``: one of :data:`ENGINES`; ``ray_address``: None or a non-empty string, only with ``"ray"``.

    >>> check_engine("spark", None)
    Traceback (most recent call last):
    ...
    loader.errors.ArgumentError: engine must be 'local' or 'ray' (got 'spark')
    """
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ArgumentError(f"engine must be 'local' or 'ray' (got {_short(engine)})", param="engine")
    if ray_address is not None:
        if not isinstance(ray_address, str) or not ray_address.strip():
            raise ArgumentError(f"ray_address must be a Ray address such as 'ray://head:10001' or "
                                f"'10.0.0.1:6379' (got {_short(ray_address)})", param="ray_address")
        if engine != "ray":
            raise ArgumentError(f"ray_address is for engine='ray' (got engine={engine!r}); pass "
                                f"engine='ray' too, or drop ray_address", param="ray_address")


def check_shuffle_seed(shuffle_seed) -> None:
    """``shuffle_seed``: None (records in scan order) or an integer from 0 to 2**63-1."""
    if shuffle_seed is not None and (not _is_int(shuffle_seed) or not 0 <= shuffle_seed <= MAX_SEED):
        raise ArgumentError(f"shuffle_seed must be None or an integer from 0 to 2**63-1 (got {shuffle_seed!r})",
                            param="shuffle_seed")


def check_label_options(labels, unlabeled, classes, classes_from) -> tuple[list[str] | None, str]:
    """Validate the label options; return ``(pinned classes or None, how to name them)``."""
    if unlabeled and (labels is not None or classes is not None or classes_from is not None):
        given = [f for f, v in (("labels", labels), ("classes", classes),
                                ("classes_from", classes_from)) if v is not None]
        raise ArgumentError(f"unlabeled cannot go with {given[0]}: an unlabeled dataset has no "
                            f"classes; drop one of them", param="unlabeled")
    if classes is not None and classes_from is not None:
        raise ArgumentError("classes and classes_from both pin the classes; pass only one", param="classes")
    if labels is not None and not isinstance(labels, (str, os.PathLike)):
        raise ArgumentError(f"labels must be a path to a labels file (got {_short(labels)})", param="labels")
    if classes is not None:
        if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes:
            raise ArgumentError(f"classes must be a non-empty list of class names (got {_short(classes)}), "
                                f"e.g. ['cat', 'dog']", param="classes")
        for c in classes:
            if not isinstance(c, str) or not c.strip():
                raise ArgumentError(f"classes has an empty or non-string class name ({_short(c)}); "
                                    f"give names like ['cat', 'dog']", param="classes")
        seen: set[str] = set()
        for c in classes:
            if c in seen:
                raise ArgumentError(f"classes names class {_short(c)} twice; give each class once",
                                    param="classes")
            seen.add(c)
        return list(classes), "the given classes"
    if classes_from is not None:
        if not isinstance(classes_from, (str, os.PathLike)):
            raise ArgumentError(f"classes_from must be the path of a packed dataset (got {_short(classes_from)})",
                                param="classes_from")
        from loader.errors import DatasetError
        from loader.format.manifest import read_manifest

        try:
            m = read_manifest(classes_from)
        except DatasetError as e:
            raise PackError(f"classes_from {classes_from}: {e}", param="classes_from") from None
        if not m.classes:
            raise PackError(f"classes_from {classes_from}: that dataset has no classes (packed "
                            f"unlabeled); pass a packed dataset with classes", param="classes_from")
        return list(m.classes), f"the classes of {classes_from}"
    return None, ""


def _short(value: object, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters (a message must stay one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
