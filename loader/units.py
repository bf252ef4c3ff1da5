"""Units and machine facts that several modules print or use: one definition each."""

from __future__ import annotations

import os

__all__ = ["MB", "available_cores"]

# Every "MB" the package prints or accepts (pack sizes, --shard-size-mb, RSS and
# batch memory in `loader bench`, --memory-budget) is 10^6 bytes.
MB = 10**6


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask (taskset, cgroups' cpusets), not the machine's count.

    >>> available_cores() >= 1
    True
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
