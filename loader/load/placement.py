"""Where a rank runs: its rank and world size, its device, its share of the node's cores.

One home for the lookups :class:`loader.ImageLoader` repeats at each epoch's start
(trainers start the process group after building the loader).
"""

from __future__ import annotations

import os

import torch

from loader.errors import ArgumentError
from loader.units import available_cores

__all__ = ["distributed_env", "env_int", "resolve_device", "threads_per_rank"]


def distributed_env(rank: int | None, world_size: int | None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank): explicit args, else torch.distributed, else env vars, else 0/1."""
    dist = torch.distributed
    if rank is None and world_size is None and dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank is None:
        rank = env_int("RANK", 0, least=0, param="rank")
    if world_size is None:
        world_size = env_int("WORLD_SIZE", 1, least=1, param="world_size")
    local_rank = env_int("LOCAL_RANK", rank, least=0)
    return rank, world_size, local_rank


def env_int(name: str, default: int, *, least: int, param: str | None = None) -> int:
    """The environment variable ``name`` (set by torchrun and other launchers) as an int ``>= least``,
    or ``default`` when unset; anything else is an :class:`ArgumentError` naming the variable (and
    ``param``, the argument that overrides it, if any), not a bare ``int()`` traceback."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < least:
        instead = f" or pass {param}=" if param else ""
        raise ArgumentError(f"environment variable {name}={raw!r} must be an int >= {least} "
                            f"(as torchrun sets it): fix or unset it{instead}", param=param)
    return value


def threads_per_rank() -> int:
    """DALI threads for one rank: the usable cores shared by the ranks on this node (LOCAL_WORLD_SIZE)."""
    return max(1, available_cores() // env_int("LOCAL_WORLD_SIZE", 1, least=1, param="num_threads"))


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """"auto" -> CUDA if available else CPU; a bare "cuda" -> the local rank's GPU."""
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    bad = ArgumentError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}", param="device")
    if not isinstance(device, (str, torch.device)):
        raise bad            # torch.device(3) would be an accelerator index, torch.device(None) a TypeError
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise bad from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(f"device={device!r} but CUDA is not available; use device='cpu' or 'auto'",
                                param="device")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise ArgumentError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA "
                                f"device(s)", param="device")
    elif dev.type != "cpu":
        raise bad
    return dev
