"""The ``batch_transform`` hook's generator: one ``torch.Generator`` per batch, from (seed, epoch, rank, batch).

A batch-level transform (mixup, cutmix, ``transforms.v2`` on batches) needs randomness
that a resumed run replays exactly. Seeding a fresh generator from the batch's coordinates
gives that without carrying RNG state in the checkpoint: batch ``b`` of ``epoch`` draws
the same numbers in the first run, in a rerun and after ``load_state_dict``. The rank is
part of the seed so that ranks do not all draw the same mixing coefficients for their
(different) batches, as one generator per process would not either.

>>> g1 = batch_generator(0, epoch=1, rank=0, batch=5, device="cpu")
>>> g2 = batch_generator(0, epoch=1, rank=0, batch=5, device="cpu")
>>> bool(torch.rand(3, generator=g1).equal(torch.rand(3, generator=g2)))
True
"""

from __future__ import annotations

import numpy as np
import torch

from loader import rng as rng_streams

__all__ = ["batch_generator", "batch_seed"]

def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """A 63-bit seed for batch ``batch`` of ``epoch`` on ``rank`` (numpy's SeedSequence mixing).

    >>> batch_seed(0, 0, 0, 0) == batch_seed(0, 0, 0, 0) != batch_seed(0, 0, 0, 1)
    True
    """
    state = np.random.SeedSequence([seed, epoch, rank, batch, rng_streams.BATCH_TRANSFORM]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)


def batch_generator(seed: int, *, epoch: int, rank: int, batch: int, device: str | torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`batch_seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(batch_seed(seed, epoch, rank, batch))
    return g
