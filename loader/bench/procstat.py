"""What ``/proc`` says about this process tree: memory, CPU time, children; and waiting for it to go idle.

Linux only; elsewhere the readings degrade (RSS from ``getrusage``, no
children, a fixed short wait), so ``loader bench`` still runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from loader.measure import rss_bytes  # its home; re-exported for benchmarks/ and older imports

__all__ = ["cpu_seconds", "descendants", "rss_bytes", "settle"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def descendants(pid: int | None = None) -> list[int]:
    """Every process below ``pid`` (default: this one)."""
    out, todo = [], _children(pid or os.getpid())
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds the processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])   # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total / _TICK


def settle(max_wait: float = 5.0, window: float = 0.1, busy: float = 0.25) -> float:
    """Wait until this process and its children are idle (prefetch queues full).

    Idle: under ``busy`` of one core over a ``window``. Returns the seconds waited.
    """
    if not os.path.exists("/proc/self/stat"):
        time.sleep(window)
        return window
    t0 = time.perf_counter()
    pids = [os.getpid(), *descendants()]
    prev = cpu_seconds(pids)
    while time.perf_counter() - t0 < max_wait:
        time.sleep(window)
        cur = cpu_seconds(pids)
        if cur - prev < busy * window:
            break
        prev = cur
    return time.perf_counter() - t0
