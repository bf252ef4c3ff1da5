"""Units and machine facts that several modules print or use: one definition each.

Light on purpose (standard library only): ``loader doctor`` lists the environment from
here without importing DALI or torch.
"""

from __future__ import annotations

import os
from importlib import metadata

__all__ = ["DALI_WHEELS", "MB", "NVIMGCODEC_WHEELS", "NVJPEG_WHEELS", "available_cores", "dist_version"]

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


# The pip distributions that carry DALI, nvImageCodec and nvJPEG, one per CUDA major version,
# the most likely first: loader.load.pipeline (gpu_decode="auto") and doctor both read these.
DALI_WHEELS = ("nvidia-dali-cuda120", "nvidia-dali-cuda130", "nvidia-dali-cuda110", "nvidia-dali")
NVIMGCODEC_WHEELS = ("nvidia-nvimgcodec-cu12", "nvidia-nvimgcodec-cu13", "nvidia-nvimgcodec-cu11")
NVJPEG_WHEELS = ("nvidia-nvjpeg-cu12", "nvidia-nvjpeg-cu13", "nvidia-nvjpeg-cu11")


def dist_version(*names: str) -> str | None:
    """The version of the first of ``names`` (pip distributions) that is installed, or None.

    >>> dist_version("surely-not-installed-dist") is None
    True
    """
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None
