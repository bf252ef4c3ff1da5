"""``loader bench``'s ``service`` rows: ``ImageLoader(service=RayService(num_workers=N))`` beside ``loader``.

``--pipelines ...,service`` adds one row per ``--service-workers`` count (``service (1 actor)``,
``service (2 actors)``): the same training pipeline as the ``loader`` row, decoded by N Ray actors
(:mod:`loader.service`) and finished (normalized) in the bench's process. Without
``--service-address`` the bench starts a local Ray on this machine for the rows and stops it
after (:func:`ray_session`); with one it joins that cluster and leaves it running.

Besides images/s each row carries what the service costs the trainer, from the client's own
counters over the timed and warm-up batches (the first batch, which waits for the actors'
pipelines, is left out):

- ``bytes_per_image``: bytes received over Ray's object store per image (uint8 pixels, indices,
  jitter rows);
- ``wait_share``: the share of the time in ``next()`` spent blocked on the actors (``ray.get``);
  near 1 the actors are the bottleneck, near 0 the trainer's own work is;
- ``trainer_ms_per_batch``: the rest of ``next()`` per batch: requesting, copying out of the
  object store, normalizing: the trainer's cost of a batch whoever decodes it.

The actors reserve ``ACTOR_CPUS`` logical CPUs each: the rows' actors all live while the bench
runs (contenders are created once, then timed one at a time), so reserving real cores would
leave the second row's actors unplaced on a small machine; idle actors use none.
"""

from __future__ import annotations

import contextlib
import time

from loader.bench.contenders import ContenderSpec, _LoaderContender

__all__ = ["ACTOR_CPUS", "SERVICE", "ServiceContender", "is_service_row", "ray_session", "service_row"]

SERVICE = "service"
ACTOR_CPUS = 0.25


def service_row(workers: int) -> str:
    """The row name for ``workers`` actors: ``service (1 actor)``, ``service (2 actors)``."""
    return f"{SERVICE} ({workers} actor{'s' * (workers != 1)})"


def is_service_row(name: str) -> bool:
    """Whether ``name`` is a row :func:`service_row` made."""
    return name.startswith(f"{SERVICE} (")


@contextlib.contextmanager
def ray_session(address: str | None, threads: int):
    """Ray for the service rows: joined at ``address``, or a local one started (and stopped after) here.

    A process already connected is left as it is."""
    from loader.service.client import connect
    from loader.service.settings import RayService, import_ray

    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    if address is not None:
        connect(RayService(num_workers=1, address=address))
    else:
        ray.init(num_cpus=max(1, threads), include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


class ServiceContender(_LoaderContender):
    """The ``loader`` row's ImageLoader with ``service=RayService(num_workers=spec.service_workers)``."""

    def __init__(self, spec: ContenderSpec, workers: int, address: str | None):
        super().__init__(spec)
        self.workers, self.address = workers, address
        self._step_s = 0.0
        self._base: dict = {}

    def _service(self):
        from loader.service.settings import RayService

        # Each actor gets its share of the loader row's threads: the same threads in all.
        per = max(1, self.spec.threads // self.workers)
        return RayService(num_workers=self.workers, address=self.address, num_cpus=ACTOR_CPUS, num_threads=per)

    def create(self) -> None:
        self.loader_kwargs = {"service": self._service()}
        super().create()

    def first(self) -> int:
        n = super().first()
        self._base = dict(self.obj._service.stats)      # leave the first batch (pipelines built) out
        self._step_s = 0.0
        return n

    def step(self) -> int:
        t0 = time.perf_counter()
        n = super().step()
        self._step_s += time.perf_counter() - t0
        return n

    def row_fields(self) -> dict:
        """The service figures of this row (see the module docstring)."""
        if self.obj is None:
            return {"service_workers": self.workers}
        now = self.obj._service.stats
        d = {k: now[k] - self._base.get(k, 0) for k in ("wait_s", "bytes", "batches", "images")}
        if not d["batches"] or self._step_s <= 0:
            return {"service_workers": self.workers}
        return {"service_workers": self.workers, "bytes_per_image": d["bytes"] / d["images"],
                "wait_share": min(1.0, d["wait_s"] / self._step_s),
                "trainer_ms_per_batch": 1e3 * max(0.0, self._step_s - d["wait_s"]) / d["batches"]}
