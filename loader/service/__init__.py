"""The decode service: ``ImageLoader(..., service=RayService(...))`` decodes and augments on Ray actors.

A trainer whose own cores cannot keep up borrows a cluster's: the trainer plans each epoch as
always (order, rank share, resume), actors on CPU nodes run loader's CPU graph for batches of
that plan and send them as uint8, and the trainer normalizes them. The batches are the local
loader's, bit for bit. When to use it and what it costs: docs/service.md.

- :mod:`loader.service.settings`: :class:`RayService` (validated settings; no Ray import).
- :mod:`loader.service.client`: the trainer's side (actor pool, requests in flight, faults).
- :mod:`loader.service.actor`: one actor (a sub-plan of an epoch on one DALI pipeline).
- :mod:`loader.service.receive`: the trainer's float steps on the actors' uint8 batches.

``import loader`` imports none of this; Ray is imported when a loader with a service is built.
"""

from loader.service.settings import RayService

__all__ = ["RayService"]
