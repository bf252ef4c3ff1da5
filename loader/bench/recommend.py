"""Which batch size to load with: the smallest that is within a tolerance of the best measured throughput."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loader.bench.results import BenchRow
from loader.errors import ArgumentError
from loader.measure import batch_bytes, check_fraction, check_int, check_number  # batch_bytes: re-exported
from loader.units import MB

__all__ = ["Recommendation", "batch_bytes", "recommend_batch_size"]


@dataclass(frozen=True)
class Recommendation:
    """A batch size for ``loader``, and what it costs in memory (bytes; the text says MB = 10^6 bytes)."""

    pipeline: str
    image_size: int
    batch_size: int               # smallest within tolerance of the best measured
    images_per_sec: float
    best_batch_size: int
    best_images_per_sec: float
    tolerance: float
    prefetch: int
    device: str                   # where the batches live: "host" or "GPU"
    batch_bytes: int              # one float32 batch + its int64 labels
    queue_bytes: int              # prefetch x batch_bytes
    memory_budget_mb: float | None
    max_batch_in_budget: int | None   # largest B with (prefetch + 1) batches within the budget
    text: str


def recommend_batch_size(rows: Sequence[BenchRow], *, tolerance: float = 0.05,
                         memory_budget_mb: float | None = None, prefetch: int = 2,
                         pipeline: str = "loader", image_size: int | None = None) -> Recommendation:
    """The smallest measured batch size within ``tolerance`` of the best throughput.

    Smaller batches mean more optimizer steps per epoch; past that point a larger
    batch buys no input speed. Memory: one batch is ``B*3*H*W*4`` bytes (float32)
    plus ``8*B`` (labels); the prefetch queue holds ``prefetch`` more. With
    ``memory_budget_mb`` (MB = 10^6 bytes), also the largest batch whose
    ``prefetch + 1`` batches (the one in use and the queue) fit. Only
    ``pipeline`` rows count, at ``image_size`` (needed when the rows hold several).

    >>> rows = [BenchRow("loader", b, 224, v) for b, v in ((32, 800.0), (64, 980.0), (128, 1000.0))]
    >>> recommend_batch_size(rows).batch_size
    64
    """
    check_fraction("tolerance", tolerance)
    check_int("prefetch", prefetch, 0)
    check_number("memory_budget_mb", memory_budget_mb, optional=True)
    mine = [r for r in rows if r.pipeline == pipeline and r.images_per_sec > 0]
    sizes = sorted({r.image_size for r in mine})
    if image_size is None:
        if len(sizes) > 1:
            raise ArgumentError(f"image_size must be given: the rows hold image sizes {sizes}", param="image_size")
        image_size = sizes[0] if sizes else None
    mine = [r for r in mine if r.image_size == image_size]
    if not mine:
        raise ValueError(f"no measured {pipeline!r} rows" +
                         (f" at image size {image_size}" if image_size is not None else ""))
    best = max(mine, key=lambda r: r.images_per_sec)
    within = [r for r in mine if r.images_per_sec >= (1 - tolerance) * best.images_per_sec]
    pick = min(within, key=lambda r: r.batch_size)
    b, s = pick.batch_size, int(image_size)
    one = batch_bytes(b, s)
    queue = prefetch * one
    where = "GPU" if pick.device.startswith("cuda") else "host"
    max_b = None
    if memory_budget_mb is not None:
        max_b = int(memory_budget_mb * MB) // ((prefetch + 1) * batch_bytes(1, s))

    if len({r.batch_size for r in mine}) == 1:
        why = "; the only batch size measured: sweep several batch sizes (--batch-size 32,64,128) to compare)"
    elif b != best.batch_size:
        why = (f", within {tolerance:.0%} of the best measured, {best.images_per_sec:.0f} images/s at "
               f"batch {best.batch_size}: larger batches buy no input speed, smaller ones update the "
               f"model more often)")
    elif b == min(r.batch_size for r in mine):
        why = ", the best measured, at the smallest batch size measured)"
    else:
        why = f", the best measured; smaller batches were more than {tolerance:.0%} slower)"
    text = (f"{pipeline} at {s} px: use batch size {b} ({pick.images_per_sec:.0f} images/s{why}"
            + f". One batch takes {one / MB:.1f} MB of {where} memory ({b} x 3 x {s} x {s} float32 "
              f"+ labels) and the prefetch queue ({prefetch} batches in flight) {queue / MB:.1f} MB more, "
              f"{(one + queue) / MB:.1f} MB in all.")
    if max_b is not None:
        text += (f" Within a {memory_budget_mb:g} MB budget the largest batch that fits "
                 f"(in use + {prefetch} prefetched) is {max_b}" +
                 (f"; {b} does not fit: use at most {max_b}." if max_b < b else "."))
    return Recommendation(pipeline=pipeline, image_size=s, batch_size=b, images_per_sec=pick.images_per_sec,
                          best_batch_size=best.batch_size, best_images_per_sec=best.images_per_sec,
                          tolerance=tolerance, prefetch=prefetch, device=where, batch_bytes=one,
                          queue_bytes=queue, memory_budget_mb=memory_budget_mb, max_batch_in_budget=max_b,
                          text=text)
