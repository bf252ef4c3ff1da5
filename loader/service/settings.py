"""``RayService``: where :class:`loader.ImageLoader`'s decode service runs, validated once, frozen.

It is a plain description (no Ray here): ``ImageLoader(..., service=RayService(...))`` connects
and starts the actors (:mod:`loader.service.client`). Every field is keyword-only and checked
when it is built; a bad one is an :class:`~loader.errors.ArgumentError` naming it.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass

from loader.errors import ArgumentError, ServiceError
from loader.validate import is_int, is_number

__all__ = ["RayService", "MAX_WORKERS", "PROBE_SECONDS", "import_ray", "unreachable"]

MAX_WORKERS = 4096
RAY_MISSING = "loader.RayService needs Ray, which is not installed: pip install 'loader[ray]'"


PROBE_SECONDS = 5.0     # a TCP connect to HOST:PORT answers within this, or Ray's own wait would be minutes


def unreachable(address: str | None) -> OSError | None:
    """Why nothing listens at a Ray ``HOST:PORT`` address (a TCP connect, at most PROBE_SECONDS), or None
    (it answers, or the address is not HOST:PORT: None, "auto", "local", ``ray://``: Ray says what it
    makes of those). Used by the service and by ``pack(engine="ray")``: unprobed, a dead address left
    ``ray.init`` retrying for minutes."""
    if address is None or address.startswith("ray://"):
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()
    except OSError as e:
        return e
    return None


def import_ray():
    """``ray``, imported now (never at ``import loader``), or a :class:`ServiceError` naming the extra."""
    try:
        import ray
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != "ray":
            raise
        raise ServiceError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True, kw_only=True)
class RayService:
    """Decode and augment on a pool of Ray actors instead of this process's cores.

    ``ImageLoader(path, batch_size, service=loader.RayService(num_workers=8, address="auto"))``:
    the trainer plans each epoch as without a service; ``num_workers`` actors, each running the CPU
    graph (DALI's region decode, the resize, the flip), produce its batches as uint8 on request,
    and the trainer normalizes them on its device. Batches are bit-identical to the loader's own
    CPU graph for the same seed and settings; see docs/service.md.

    Args:
        num_workers: actors in the pool, each with its own DALI pipeline; batch ``k`` of an epoch
            goes to actor ``k % num_workers``.
        address: the Ray cluster: None uses the one this process is connected to, else starts or
            joins one as ``ray.init()`` does (``RAY_ADDRESS``); "auto" joins the cluster running on
            this node; "HOST:PORT" or "ray://HOST:PORT" a given one.
        num_cpus: CPUs each actor reserves on its node (Ray's ``num_cpus``).
        num_threads: DALI and resize threads per actor (default: ``num_cpus``, at least 1).
        in_flight: batches requested ahead of the one the trainer waits for (default
            ``2 * num_workers``): the memory bound, ``in_flight`` uint8 batches in Ray's object store.
        timeout: seconds to wait at construction for the actors to be placed and ready.
        batch_timeout: seconds the trainer waits for any one batch; an actor that has not delivered
            it by then (alive but hung) is killed and treated as dead.
        max_replacements: actors that may die (or hang past ``batch_timeout``) while producing one
            batch before the epoch fails (such an actor is replaced and its outstanding batches are
            requested again).
    """

    num_workers: int
    address: str | None = None
    num_cpus: float = 1.0
    num_threads: int | None = None
    in_flight: int | None = None
    timeout: float = 120.0
    batch_timeout: float = 300.0
    max_replacements: int = 3

    def __post_init__(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        if not is_int(self.num_workers) or not 1 <= self.num_workers <= MAX_WORKERS:
            raise ArgumentError(f"num_workers must be an int in [1, {MAX_WORKERS}], got {self.num_workers!r}",
                                param="num_workers")
        put("num_workers", int(self.num_workers))
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ArgumentError(f"address must be None, 'auto' or 'HOST:PORT' of a Ray cluster, got "
                                f"{self.address!r}", param="address")
        if not is_number(self.num_cpus) or not 0 < self.num_cpus <= 1024 or not math.isfinite(self.num_cpus):
            raise ArgumentError(f"num_cpus must be a number in (0, 1024] (CPUs per actor), got {self.num_cpus!r}",
                                param="num_cpus")
        put("num_cpus", float(self.num_cpus))
        for name, lo, hi, default in (("num_threads", 1, 1024, max(1, int(self.num_cpus))),
                                      ("in_flight", 1, 2**16, 2 * self.num_workers)):
            v = getattr(self, name)
            if v is None:
                v = default
            if not is_int(v) or not lo <= v <= hi:
                raise ArgumentError(f"{name} must be an int in [{lo}, {hi}] or None, got {v!r}", param=name)
            put(name, int(v))
        for name in ("timeout", "batch_timeout"):
            v = getattr(self, name)
            if not is_number(v) or not 0 < v < math.inf:
                raise ArgumentError(f"{name} must be a number of seconds > 0, got {v!r}", param=name)
        if not is_int(self.max_replacements) or not 0 <= self.max_replacements <= 1000:
            raise ArgumentError(f"max_replacements must be an int in [0, 1000], got {self.max_replacements!r}",
                                param="max_replacements")
