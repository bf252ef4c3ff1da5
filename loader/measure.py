"""What every measuring command shares (``loader bench``, ``loader advise``, ``benchmarks/``): one home each.

* the clock: :class:`Timing` and :func:`time_steps`, the one timed loop
  (untimed warm-up steps, then steps until a count or a duration, the device
  synchronized before each clock read);
* the order of repeated measurements: :func:`interleaved` (round-robin over
  the things measured, so a drift of the machine hits them alike) and
  :class:`Spread` (median, min and max of one thing's measurements);
* memory: :func:`rss_bytes` (this process or another, from ``/proc``) and
  :func:`batch_bytes` (one float32 batch and its labels);
* :func:`resolve_run_device`: the ``device`` setting of a measuring command;
* :func:`text_table`: the columns of a printed table;
* validation of the settings both commands take: :func:`is_int` (an int, not a
  bool) and the ``check_*`` functions, which raise
  :class:`~loader.errors.ArgumentError` naming the Python parameter; and
  :func:`check_shared`, the fields :class:`loader.bench.BenchSettings` and
  :class:`loader.advisor.AdviseSettings` have in common.

No torch or DALI at import: ``loader --help`` imports the commands' modules.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from loader.errors import ArgumentError, import_dali
from loader.validate import is_int, is_number

__all__ = [
    "Spread", "Timing", "batch_bytes", "check_choice", "check_fraction", "check_int", "check_number",
    "check_shared", "check_sizes", "interleaved", "is_int", "is_number", "resolve_run_device", "rss_bytes",
    "text_table", "time_steps",
]


# ------------------------------------------------------------------ the clock


@dataclass(frozen=True)
class Timing:
    """``count`` items (images) in ``seconds`` of timed steps."""

    count: int
    seconds: float
    steps: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def time_steps(step: Callable[[], int], *, warmup: int = 0, batches: int | None = None,
               seconds: float | None = None, sync: Callable[[], None] | None = None,
               tick: Callable[[], None] | None = None) -> Timing:
    """Run ``step() -> count`` ``warmup`` times untimed, then time it.

    Timed steps run until ``batches`` steps or ``seconds`` have passed (at least
    one step; give one of the two). ``sync`` runs before each clock read (e.g.
    ``torch.cuda.synchronize``); ``tick`` after each timed step (sampling;
    its cost is inside the timing, so keep it cheap).

    >>> time_steps(lambda: 8, batches=3).count
    24
    """
    if (batches is None) == (seconds is None):
        raise ArgumentError("time_steps needs exactly one of batches= or seconds=", param="batches")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    count = n = 0
    t0 = time.perf_counter()
    while True:
        count += step()
        n += 1
        if batches is not None and n >= batches:
            break
        if seconds is not None and time.perf_counter() - t0 >= seconds:
            break
        if tick is not None:
            tick()
    sync()
    return Timing(count=count, seconds=time.perf_counter() - t0, steps=n)


# ------------------------------------------------------------------ repeated measurements


def interleaved(keys: Sequence, rounds: int, *, rotate: bool = False) -> Iterator[tuple[int, object]]:
    """``(round, key)`` for every key in every round, round-robin: all keys once, then all again.

    Measuring round by round instead of key by key spreads a slow spell of the
    machine (another job, thermal throttling) over every key, where measuring
    one key's repeats back to back would pin it on one. ``rotate``: round ``r``
    starts at key ``r % len(keys)``, so no key always goes first.

    >>> list(interleaved("ab", 2))
    [(0, 'a'), (0, 'b'), (1, 'a'), (1, 'b')]
    >>> [k for _, k in interleaved("abc", 2, rotate=True)]
    ['a', 'b', 'c', 'b', 'c', 'a']
    """
    keys = list(keys)
    for r in range(rounds):
        k = r % len(keys) if rotate and keys else 0
        for key in keys[k:] + keys[:k]:
            yield r, key


@dataclass(frozen=True)
class Spread:
    """The median of one thing's measurements and their range (``low`` .. ``high``).

    >>> s = Spread.of([70.0, 765.0, 48.0])
    >>> (s.median, s.low, s.high, s.n)
    (70.0, 48.0, 765.0, 3)
    >>> Spread.of([100.0, 90.0]).overlaps(Spread.of([95.0, 120.0]))
    True
    """

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (at least one)."""
        if not values:
            raise ArgumentError("Spread.of needs at least one value", param="values")
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)), len(values))

    def overlaps(self, other: Spread) -> bool:
        """Whether the two ranges share a value: the measurements cannot tell the two apart."""
        return self.low <= other.high and other.low <= self.high

    def relative(self) -> float:
        """``(high - low) / median``: the range as a share of the median (0 when the median is 0)."""
        return (self.high - self.low) / self.median if self.median > 0 else 0.0


# ------------------------------------------------------------------ memory


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of ``pid`` in bytes (0 if it is gone); Linux ``/proc``, else this process's peak."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        if pid == "self":
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return 0


def batch_bytes(batch_size: int, image_size: int, bytes_per_value: int = 4) -> int:
    """Memory of one batch: ``B*3*H*W`` values (float32: 4 bytes) + ``B`` int64 labels.

    >>> batch_bytes(64, 224)
    38535680
    """
    return batch_size * (3 * image_size * image_size * bytes_per_value + 8)


# ------------------------------------------------------------------ device, table


def resolve_run_device(device: str, needed_by: str):
    """The ``device`` setting of a measuring command (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``) as a
    ``torch.device``, CUDA initialised.

    DALI missing is a :class:`~loader.errors.DaliMissingError` naming ``needed_by``; a bad or
    unavailable device an :class:`~loader.errors.ArgumentError` (``param="device"``): one line,
    not a traceback.
    """
    import_dali(needed_by)
    from loader.load.placement import resolve_device  # torch: imported when a command runs, not at --help

    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise ArgumentError(str(e), param="device") from None
    if dev.type == "cuda":
        import torch

        torch.cuda.init()
    return dev


def text_table(head: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the rest right-aligned.

    >>> print(text_table(["name", "n"], [["a", "10"], ["bb", "2"]]))
    name   n
    ----  --
    a     10
    bb     2
    """
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(c) for c in lines])


# ------------------------------------------------------------------ validation


def check_int(name: str, value, least: int, *, optional: bool = False) -> None:
    """``value`` is an int >= ``least`` (or None when ``optional``), else :class:`ArgumentError` naming ``name``.

    >>> check_int("repeats", 0, 1)
    Traceback (most recent call last):
    ...
    loader.errors.ArgumentError: repeats must be an integer >= 1, got 0
    """
    if optional and value is None:
        return
    if not is_int(value) or value < least:
        raise ArgumentError(f"{name} must be {'None or ' if optional else ''}an integer >= {least}, got {value!r}",
                            param=name)


def check_sizes(name: str, values, least: int, *, unit: str = "") -> tuple[int, ...]:
    """``values`` as a tuple of ints >= ``least`` (at least one), else :class:`ArgumentError` naming ``name``."""
    try:
        vals = tuple(values)
    except TypeError:
        vals = None
    if not vals or any(not is_int(v) or v < least for v in vals):
        what = f"integers >= {least}{f' ({unit})' if unit else ''}"
        raise ArgumentError(f"{name} must be a non-empty sequence of {what}, got {values!r}", param=name)
    return vals


def check_number(name: str, value, *, optional: bool = False) -> None:
    """``value`` is a finite number > 0 (or None when ``optional``), else :class:`ArgumentError` naming ``name``."""
    if optional and value is None:
        return
    if not is_number(value) or not 0 < value < math.inf:
        raise ArgumentError(f"{name} must be {'None or ' if optional else ''}a positive number, got {value!r}",
                            param=name)


def check_fraction(name: str, value, *, zero: bool = True) -> None:
    """``value`` is a number in [0, 1) (``zero=False``: in (0, 1)), else :class:`ArgumentError` naming ``name``."""
    if not is_number(value) or not ((value >= 0 if zero else value > 0) and value < 1):
        raise ArgumentError(f"{name} must be a fraction in {'[' if zero else '('}0, 1), got {value!r}", param=name)


def check_choice(name: str, value, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices``, else :class:`ArgumentError` naming ``name`` and listing them."""
    if value not in choices:
        raise ArgumentError(f"{name} must be one of {', '.join(choices)}, got {value!r}", param=name)


# The integer fields BenchSettings and AdviseSettings share: name -> the least value.
_SHARED_INTS = {"repeats": 1, "warmup": 0, "prefetch": 1, "seed": 0}


def check_shared(settings) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate the fields every measuring command's settings have; return ``(batch_sizes, image_sizes)`` as tuples.

    ``batch_sizes`` (ints >= 1), ``image_sizes`` (ints >= 8, pixels),
    ``repeats`` >= 1, ``warmup`` >= 0, ``prefetch`` >= 1, ``seed`` >= 0,
    ``threads`` None or >= 1, ``memory_budget_mb`` None or > 0. One home, so
    ``loader bench`` and ``loader advise`` accept the same values and say the
    same thing about a bad one.
    """
    batch_sizes = check_sizes("batch_sizes", settings.batch_sizes, 1)
    image_sizes = check_sizes("image_sizes", settings.image_sizes, 8, unit="pixels")
    for name, least in _SHARED_INTS.items():
        check_int(name, getattr(settings, name), least)
    check_int("threads", settings.threads, 1, optional=True)
    check_number("memory_budget_mb", settings.memory_budget_mb, optional=True)
    return batch_sizes, image_sizes
