"""From the measured rows to advice: the largest batch that fits, the recommended one, input-bound or not, the LR.

* **largest fitting**: the largest ``ok`` batch at the recommended image size.
  A row is ``ok`` only if its peak memory stays within the budget less the
  safety margin (``--safety-margin``, 10% by default): headroom for what a
  short measurement does not see (fragmentation, evaluation, a longer
  sequence of allocations). On CPU there is no budget unless one is given.
* **recommended**: at one image size -- the trial's best when a trial ran,
  else the largest swept (images/s alone would always pick the smallest) --
  the ``ok`` rows whose end-to-end images/s is within ``tolerance`` (5%) of
  the best; of those the smallest batch (more optimizer steps for the same
  images in the same time). The other image sizes get the same rule, in words.
* **overlap**: each row's end-to-end figure is a median with a range
  (min-max over its rounds). When the ranges are wider than the differences
  that made the pick -- the pick could be more than ``tolerance`` below
  another row, or a smaller batch could be within it -- the advice says the
  measurements overlap and gives the pick as the medians' only, asking for a
  quieter machine or more rounds.
* **input-bound** at that row: the loader alone is slower than the model
  alone, or the training loop waited for data more than 10% of the time.
  Then what to try, in order of expected effect.
* **learning rate** with ``base_batch_size`` / ``base_lr``: the linear
  scaling rule of Goyal et al. 2017, a starting point with a warm-up.
"""

from __future__ import annotations

from collections.abc import Sequence

from loader.advisor.results import AdviceRecommendation, AdviseRow
from loader.advisor.settings import AdviseSettings

__all__ = ["WAIT_LIMIT", "overlap", "recommend", "suggestions"]

# More than this share of the loop's time waiting for data counts as input-bound.
WAIT_LIMIT = 0.10


def suggestions(row: AdviseRow, rows: Sequence[AdviseRow], *, device: str, cores: int) -> tuple[str, ...]:
    """What to try when ``row`` is input-bound, most effective first."""
    out = []
    if not device.startswith("cuda"):
        out.append('decode on the GPU: ImageLoader(..., device="cuda") (nvJPEG; the CPU does only the reading)')
    smaller = [r for r in rows if r.ok and r.batch_size == row.batch_size and r.image_size < row.image_size]
    if smaller:
        r = max(smaller, key=lambda r: r.image_size)
        out.append(f"a smaller image_size: the loader gave {r.loader_images_per_sec:.0f} images/s at "
                   f"{r.image_size} px against {row.loader_images_per_sec:.0f} at {row.image_size} px (measured)")
    else:
        out.append(f"an image_size below {row.image_size} px (not measured: add one to --image-size)")
    out.append("loader pack --max-side PX: smaller stored images read and decode faster")
    out.append(f"more CPU cores for DALI's threads (this process may use {cores})")
    return tuple(out)


def _pick(rows: Sequence[AdviseRow], tolerance: float) -> tuple[AdviseRow, AdviseRow]:
    """(the fastest end to end, the smallest batch within ``tolerance`` of it) among ``rows`` of one image size."""
    best = max(rows, key=lambda r: r.end_to_end_images_per_sec)
    within = [r for r in rows if r.end_to_end_images_per_sec >= (1 - tolerance) * best.end_to_end_images_per_sec]
    return best, min(within, key=lambda r: r.batch_size)


def _range(r: AdviseRow) -> tuple[float, float]:
    """(min, max) of the row's end-to-end images/s; its median twice when no range was recorded."""
    m = r.end_to_end_images_per_sec
    lo, hi = r.end_to_end_images_per_sec_min, r.end_to_end_images_per_sec_max
    return (m if lo is None else lo), (m if hi is None else hi)


def overlap(rows: Sequence[AdviseRow], pick: AdviseRow, tolerance: float) -> bool:
    """Whether the ranges of ``rows`` (one image size, ``ok``) could change ``pick``, the smallest batch within
    ``tolerance`` of the best median.

    It could when, somewhere in the ranges, the pick is more than ``tolerance``
    below another row (its min against the other's max), or a smaller batch
    comes within ``tolerance`` of every other row (its max against their
    mins). With one value per row (no spread) this never holds: the medians
    decide alone.

    >>> from loader.advisor.results import AdviseRow
    >>> def row(b, lo, med, hi):
    ...     return AdviseRow(b, 224, "ok", end_to_end_images_per_sec=med, end_to_end_images_per_sec_min=lo,
    ...                      end_to_end_images_per_sec_max=hi)
    >>> rows = [row(8, 400, 410, 420), row(16, 700, 710, 720)]
    >>> overlap(rows, rows[1], 0.05)
    False
    >>> rows = [row(8, 48, 78, 90), row(16, 40, 48, 80), row(32, 60, 72, 765)]
    >>> overlap(rows, rows[0], 0.05)
    True
    """
    keep = 1 - tolerance
    lo_p, _ = _range(pick)
    if any(o is not pick and lo_p < keep * _range(o)[1] for o in rows):
        return True
    for r in rows:
        if r.batch_size < pick.batch_size:
            best_low = max((_range(o)[0] for o in rows if o is not r), default=0.0)
            if _range(r)[1] >= keep * best_low:
                return True
    return False


def _overlap_text(rows: Sequence[AdviseRow], size: int, tolerance: float) -> str:
    rounds = max(r.rounds for r in rows)
    over = f" over {rounds} round{'s' if rounds != 1 else ''}" if rounds else ""
    ranges = ", ".join(f"batch {r.batch_size} {_range(r)[0]:.0f}-{_range(r)[1]:.0f}"
                       for r in sorted(rows, key=lambda r: r.batch_size))
    return (f"The measurements overlap: end-to-end images/s at {size} px, min-max{over}: {ranges}; the ranges are "
            f"wider than the {tolerance:.0%} that decides between batch sizes, so no batch size is clearly best: "
            f"re-run on a quiet machine or with more rounds.")


def recommend(rows: Sequence[AdviseRow], settings: AdviseSettings, *, memory_budget_mb: float | None,
              device: str, cores: int) -> AdviceRecommendation:
    """The advice for ``rows`` (see the module doc); every number in the text comes from the rows."""
    s = settings
    common = dict(tolerance=s.tolerance, safety_margin=s.safety_margin, memory_budget_mb=memory_budget_mb)
    ok = [r for r in rows if r.ok]
    if not ok:
        failed = rows[0] if rows else None
        text = ("nothing was measured" if failed is None else
                f"nothing fit: batch {failed.batch_size} at {failed.image_size} px is {failed.status} "
                f"({failed.error}); try smaller --batch-size or --image-size, or --amp")
        return AdviceRecommendation(None, None, None, None, text, **common)
    # Images/s cannot choose the resolution (smaller is always faster): that is an accuracy
    # question, so the trial's best size decides when there is one, else the largest swept.
    trials = [r for r in ok if r.trial is not None]
    if trials:
        size = max(trials, key=lambda r: (r.trial.val_accuracy, -r.trial.val_loss)).image_size
    else:
        size = max(r.image_size for r in ok)
    best, pick = _pick([r for r in ok if r.image_size == size], s.tolerance)
    at_size = [r for r in rows if r.image_size == size]
    fit = max((r for r in at_size if r.ok), key=lambda r: r.batch_size)
    failed = [r for r in at_size if not r.ok]
    parts = []

    if memory_budget_mb is not None:
        usable = memory_budget_mb * (1 - s.safety_margin)
        parts.append(f"Largest batch that fits at {size} px: {fit.batch_size} ({fit.peak_memory_mb:.0f} MB of "
                     f"{usable:.0f} MB usable: the {memory_budget_mb:.0f} MB budget less a {s.safety_margin:.0%} "
                     f"safety margin)")
    else:
        parts.append(f"Largest batch that fit at {size} px: {fit.batch_size} ({fit.peak_memory_mb:.0f} MB; no "
                     f"memory budget on {device}: give --memory-budget MB to set one)")
    if failed:
        f = failed[0]
        parts[-1] += f"; batch {f.batch_size} is {f.status}, larger ones were not tried."
    else:
        parts[-1] += "; nothing larger was tried, so larger batches may fit too."

    b = pick.batch_size
    at_ok = [r for r in ok if r.image_size == size]
    overlapping = overlap(at_ok, pick, s.tolerance)
    if pick is best:
        why = "the best end-to-end throughput measured"
        if b > min(r.batch_size for r in ok if r.image_size == size):
            why += f"; smaller batches were more than {s.tolerance:.0%} slower"
    else:
        why = (f"within {s.tolerance:.0%} of the best, {best.end_to_end_images_per_sec:.0f} images/s at batch "
               f"{best.batch_size}: a larger batch buys no speed, a smaller one updates the model more often")
    if overlapping:
        parts.append(_overlap_text(at_ok, size, s.tolerance))
        parts.append(f"By the medians alone, not a confident pick: batch {b} at {size} px, "
                     f"{pick.end_to_end_images_per_sec:.0f} images/s end to end ({why}).")
    else:
        parts.append(f"Recommended: batch {b} at {size} px, {pick.end_to_end_images_per_sec:.0f} images/s end "
                     f"to end ({why}).")
    elsewhere = [_pick([r for r in ok if r.image_size == other], s.tolerance)[1]
                 for other in sorted({r.image_size for r in ok} - {size})]
    if elsewhere:
        parts.append("By the same rule at the other image sizes: " + ", ".join(
            f"batch {r.batch_size} at {r.image_size} px ({r.end_to_end_images_per_sec:.0f} images/s)"
            for r in elsewhere) + ".")
    input_bound = pick.bound == "input"
    tips: tuple[str, ...] = ()
    detail = (f"the loader alone gives {pick.loader_images_per_sec:.0f} images/s, the model alone "
              f"{pick.model_images_per_sec:.0f}, and the loop waited for data {pick.data_wait_fraction:.0%} "
              f"of the time")
    if input_bound:
        tips = suggestions(pick, rows, device=device, cores=cores)
        parts.append(f"Input-bound at batch {b}: {detail}. To try, in order: " +
                     "; ".join(f"({i}) {t}" for i, t in enumerate(tips, 1)) + ".")
    else:
        parts.append(f"Compute-bound at batch {b}: {detail}; a faster input pipeline would not help.")
    lr = s.lr_for(b)
    if lr is not None:
        parts.append(f"Learning rate: {lr:.4g} = {s.base_lr:g} x {b} / {s.base_batch_size} (linear scaling, "
                     f"Goyal et al. 2017), with a few epochs of linear warm-up; a starting point, not a guarantee.")
    if trials:
        top = max(trials, key=lambda r: (r.trial.val_accuracy, -r.trial.val_loss))
        several = len({r.image_size for r in trials}) > 1

        def name(r: AdviseRow) -> str:
            return f"{r.batch_size} at {r.image_size} px" if several else str(r.batch_size)

        others = ", ".join(f"{name(r)}: {100 * (r.trial.val_accuracy - top.trial.val_accuracy):+.1f} points"
                           for r in trials if r is not top)
        parts.append(f"Trial ({top.trial.images} training images each): best validation top-1 "
                     f"{top.trial.val_accuracy:.1%} at batch {top.batch_size}, {top.image_size} px"
                     + (f"; the others: {others}" if others else "") +
                     ". A short trial ranks settings roughly; it does not predict final accuracy.")
    return AdviceRecommendation(b, fit.batch_size, input_bound, lr, " ".join(parts), image_size=size,
                                suggestions=tips, measurements_overlap=overlapping, **common)
