"""Where a rank runs: its rank and world size, its device, its share of the node's cores.

One home for the lookups :class:`loader.ImageLoader` repeats at each epoch's start
(trainers start the process group after building the loader).
"""

from __future__ import annotations

import os

import torch

from loader.units import available_cores

__all__ = ["distributed_env", "resolve_device", "threads_per_rank"]


def distributed_env(rank: int | None, world_size: int | None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank): explicit args, else torch.distributed, else env vars, else 0/1."""
    dist = torch.distributed
    if rank is None and world_size is None and dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank is None:
        rank = int(os.environ.get("RANK", 0))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return rank, world_size, local_rank


def threads_per_rank() -> int:
    """DALI threads for one rank: the usable cores shared by the ranks on this node (LOCAL_WORLD_SIZE)."""
    return max(1, available_cores() // max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1))


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """"auto" -> CUDA if available else CPU; a bare "cuda" -> the local rank's GPU."""
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use device='cpu' or 'auto'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev
