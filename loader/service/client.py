"""The trainer's side of the decode service: a pool of Ray actors, requests in flight, batches in order.

``ImageLoader(..., service=RayService(...))`` builds one :class:`ServiceClient`: it connects to
Ray, starts ``num_workers`` :class:`~loader.service.actor.DecodeWorker` actors (spread over the
nodes) and checks that each opened the same dataset. For each epoch the loader plans as always
and calls :meth:`ServiceClient.start` with the plan; batch ``k`` is actor ``(k - start) % N``'s.
:meth:`ServiceClient.batch` keeps up to ``in_flight`` requests ahead of the batch it returns
(Ray queues an actor's calls in order, so each actor gets its batches in its plan's order) and
returns batch ``k`` finished by :class:`~loader.service.receive.Receiver`.

Faults: a request whose actor died (killed, its node lost) raises Ray's ``RayActorError`` (a reply
lost with its node: ``ObjectLostError``, handled the same way). A batch not received within
``batch_timeout`` seconds means its actor is alive but hung: it is killed and handled as dead.
The actor is replaced by a new one started on the same plan with the dead one's batches not yet
received, and those already requested are requested again, in order. Nothing is lost or
duplicated: the trainer receives batch ``k`` exactly once, whoever made it, and a batch's bytes
do not depend on which actor made it. More than ``max_replacements`` deaths or hangs on one batch
(a record that crashes the decoder, say) is a :class:`~loader.errors.ServiceError` naming it.
``close()`` (and garbage collection) kills the actors.
"""

from __future__ import annotations

import os
import time
import weakref
from collections import Counter

from loader.errors import DatasetError, ServiceError, one_line
from loader.format.recordguard import RecordGuard
from loader.load.culprits import warn_replaced
from loader.load.feed import EpochPlan
from loader.load.state import dataset_fingerprint
from loader.service.receive import Receiver
from loader.service.settings import RayService, import_ray, unreachable

__all__ = ["ServiceClient", "connect"]

def _probe(address: str) -> None:
    """Fail fast, in one line, when nothing listens at a ``HOST:PORT`` address."""
    e = unreachable(address)
    if e is not None:
        raise ServiceError(f"no Ray cluster answers at {address} ({one_line(e)}): start one there (`ray start "
                           f"--head`), or pass RayService(address=None) to start one here")


def connect(service: RayService):
    """``ray``, connected as ``service.address`` says (an already connected process stays as it is)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = service.address
    if address not in (None, "auto") and not address.startswith("ray://"):
        _probe(address)
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        raise ServiceError(f"could not reach the Ray cluster at address={address!r}: {one_line(e, 300)}; start "
                           f"one (`ray start --head`) or pass RayService(address=None)") from None
    return ray


def _kill_all(ray, actors: list) -> None:
    """Kill ``actors`` (a finalizer: no reference to the client)."""
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead, or Ray already shut down
            pass
    actors.clear()


class ServiceClient:
    """The actor pool of one loader (see the module docstring)."""

    def __init__(self, service: RayService, dataset, settings, buffers, num_threads: int):
        self.service, self.dataset, self.settings = service, dataset, settings
        self._ray = ray = connect(service)
        from loader.service.actor import DecodeWorker

        s = settings
        self._source = getattr(dataset, "url", None) or os.path.abspath(dataset.path)
        self._options = dict(train=s.train, augment=s.augment, image_size=s.image_size, batch_size=s.batch_size,
                             on_error=s.on_error, prefetch=s.prefetch, num_threads=service.num_threads,
                             cache_dir=None if s.cache_dir is None else os.fspath(s.cache_dir),
                             cache_limit=s.cache_limit)
        self._cls = ray.remote(num_cpus=service.num_cpus, max_restarts=0, scheduling_strategy="SPREAD")(DecodeWorker)
        self.actors: list = []
        self._finalizer = weakref.finalize(self, _kill_all, ray, self.actors)
        self.actors.extend(self._new_actor() for _ in range(service.num_workers))
        self._check_actors()
        self.guard = RecordGuard(dataset)       # ImageLoader.bad_records reads .bad
        self._warned: set[int] = set()
        self._num_threads, self._buffers = num_threads, buffers
        self._receiver: Receiver | None = None
        self._generation = 0
        self._plan: EpochPlan | None = None
        self._refs: dict[int, object] = {}
        self._next = self._submitted = self._end = self._start = 0
        self._deaths: Counter[int] = Counter()
        # What the bench reports: seconds blocked waiting for actors, bytes received, batches.
        self.stats = {"wait_s": 0.0, "bytes": 0, "batches": 0, "images": 0, "replaced_actors": 0}

    def _new_actor(self):
        return self._cls.remote(self._source, self._options)

    def _check_actors(self) -> None:
        ray, n = self._ray, len(self.actors)
        try:
            prints = ray.get([a.fingerprint.remote() for a in self.actors], timeout=self.service.timeout)
        except ray.exceptions.GetTimeoutError:
            cpus = ray.available_resources().get("CPU", 0)
            self.close()
            raise ServiceError(f"{n} decode actors of num_cpus={self.service.num_cpus} were not ready within "
                               f"timeout={self.service.timeout} s ({cpus:g} CPUs free in the Ray cluster now): "
                               f"lower num_workers or num_cpus, or add nodes") from None
        except ray.exceptions.RayError as e:
            self.close()
            cause = getattr(e, "cause", None)
            if isinstance(cause, DatasetError):
                raise DatasetError(f"a decode actor could not open {self.dataset.where}: {one_line(cause)} (every "
                                   f"Ray node must reach the same dataset, at the same path or URL)") from None
            raise ServiceError(f"a decode actor failed to start: {one_line(e, 300)}") from None
        mine = dataset_fingerprint(self.dataset)
        if any(p != mine for p in prints):
            self.close()
            raise DatasetError(f"a decode actor opened another dataset at {self._source} than this process "
                               f"(fingerprint {prints} vs {mine}): every Ray node must see the same packed dataset")

    # -- epochs -------------------------------------------------------------
    def start(self, plan: EpochPlan, device, seed: int) -> None:
        """Serve ``plan`` from its ``start_batch`` on, finished for ``device``."""
        if self._receiver is None or self._receiver.device != device:
            if self._receiver is not None:
                self._receiver.close()
            self._receiver = Receiver(dataset=self.dataset, device=device, settings=self.settings,
                                      buffers=self._buffers, num_threads=self._num_threads)
        self._cancel()
        self._generation += 1
        self._plan, self._seed = plan, seed
        self._plan_ref = self._ray.put(plan)
        self._start = self._next = self._submitted = plan.start_batch
        self._end = -(-len(plan.records) // plan.batch_size)
        self._deaths.clear()
        for a, actor in enumerate(self.actors):
            actor.start.remote(self._generation, seed, self._plan_ref, self._batches_of(a))

    def _batches_of(self, a: int, since: int | None = None) -> list[int]:
        """Actor slot ``a``'s batches of the epoch, from batch ``since`` on."""
        first = self._start + a
        if since is not None and since > first:
            first += -(-(since - first) // len(self.actors)) * len(self.actors)
        return list(range(first, self._end, len(self.actors)))

    def _owner(self, k: int) -> int:
        return (k - self._start) % len(self.actors)

    def _fill(self) -> None:
        while self._submitted < min(self._end, self._next + self.service.in_flight + 1):
            k = self._submitted
            self._refs[k] = self.actors[self._owner(k)].batch.remote(self._generation, k)
            self._submitted += 1

    def batch(self, k: int):
        """Batch ``k`` of the epoch: ``(images, targets, indices)`` as the local loader assembles them."""
        if k != self._next or not self._start <= k < self._end:
            raise RuntimeError(f"service asked for batch {k}, expected {self._next} (internal error)")
        ray = self._ray
        while True:
            self._fill()
            t0 = time.perf_counter()
            try:
                got = ray.get(self._refs[k], timeout=self.service.batch_timeout)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                # Its actor died, or the node that held its reply: the slot's actor starts afresh.
                self._replace(self._owner(k), k, e)
            except ray.exceptions.GetTimeoutError:
                # Alive but not answering (a stuck decoder, a stopped process): without a deadline the
                # trainer would wait forever. Killed and replaced as if it had died.
                self._replace(self._owner(k), k, f"no batch within batch_timeout={self.service.batch_timeout:g} s "
                                                 f"(the actor hung; it was killed)")
            finally:
                self.stats["wait_s"] += time.perf_counter() - t0
        del self._refs[k]
        self._next = k + 1
        if "error" in got:
            self._cancel()
            raise got["error"]
        if got["bad"]:
            for i, why in got["bad"].items():
                self.guard.bad.setdefault(i, why)
            if got["replaced"]:
                warn_replaced(self.dataset, got["replaced"], self.guard.bad, self._warned)
        out = self._receiver(got)
        st = self.stats
        st["bytes"] += got["images"].nbytes + got["indices"].nbytes + (0 if got["jitter"] is None
                                                                       else got["jitter"].nbytes)
        st["batches"] += 1
        st["images"] += len(got["indices"])
        return out

    def _replace(self, a: int, k: int, error: Exception | str) -> None:
        """Actor slot ``a`` died (or hung) while batch ``k`` was awaited: a new actor takes its remaining batches."""
        _kill_all(self._ray, [self.actors[a]])       # a hung one must not answer later, nor hold its CPU
        self._deaths[k] += 1
        if self._deaths[k] > self.service.max_replacements:
            raise ServiceError(f"{self._deaths[k]} decode actors died or hung producing batch {k} of epoch "
                               f"{self._plan.epoch} of {self.dataset.where} (max_replacements="
                               f"{self.service.max_replacements}); the last: {one_line(error, 200)}")
        self.actors[a] = actor = self._new_actor()
        self.stats["replaced_actors"] += 1
        mine = self._batches_of(a, since=self._next)
        actor.start.remote(self._generation, self._seed, self._plan_ref, mine)
        for j in mine:
            if j < self._submitted:
                self._refs[j] = actor.batch.remote(self._generation, j)

    def _cancel(self) -> None:
        """Drop the requests of an epoch left mid-way (those not started yet are not run)."""
        for ref in self._refs.values():
            try:
                self._ray.cancel(ref)
            except Exception:  # noqa: BLE001 - finished or failed already: nothing to cancel
                pass
        self._refs.clear()
        self._next = self._submitted = self._end

    def close(self) -> None:
        """Kill the actors and stop the receiver's threads (idempotent)."""
        self._refs = {}
        _kill_all(self._ray, self.actors)
        if getattr(self, "_receiver", None) is not None:
            self._receiver.close()
            self._receiver = None
