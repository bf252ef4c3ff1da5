"""``--trial IMAGES``: the tutorial's experiment, automated -- train each batch size briefly, then validate.

For each batch size that fit, a fresh copy of the model (the same initial
weights: every copy comes from one untouched model built under the seed) is
trained on the *training* subset of the split for the same number of images,
so smaller batches take more steps. The image budget is rounded down to a
multiple of every batch size when that is possible (all steps are full
batches then); otherwise the last step takes part of a batch. Then the copy
is evaluated on every record of the *validation* subset (eval augmentation):
loss and top-1 accuracy. The two subsets come from ``ImageLoader``'s
``validation_split`` with one seed, so they never share a record; the trial
records which records it read, and the result carries them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from loader.advisor.measure import Context, forever
from loader.advisor.results import TrialResult
from loader.advisor.training import DEFAULT_LR, TrainStep, fresh_copy, seeded, state_digest

__all__ = ["run_trial", "trial_budget"]


def trial_budget(images: int, batch_sizes: Sequence[int]) -> int:
    """``images`` rounded down to a multiple of every batch size, if at least one such multiple fits; else ``images``.

    >>> trial_budget(2000, [8, 16, 32, 64])
    1984
    >>> trial_budget(100, [24, 25])
    100
    """
    lcm = math.lcm(*batch_sizes) if batch_sizes else 1
    return images // lcm * lcm if lcm <= images else images


def run_trial(ctx: Context, batch_size: int, image_size: int, images: int,
              log: Callable[[str], None]) -> TrialResult:
    """Train a fresh copy for ``images`` images at ``batch_size``, then validate it (see the module doc)."""
    s, dev = ctx.settings, ctx.device
    lr = s.lr_for(batch_size) or DEFAULT_LR[s.optimizer]
    train = ctx.image_loader(batch_size, image_size, train=True, subset="training", with_indices=True)
    total = len(train.dataset)
    seen_train = np.zeros(total, dtype=bool)
    seen_val = np.zeros(total, dtype=bool)
    batches = forever(train)
    model = step = None
    try:
        with seeded(s.seed, dev):    # dropout and the like: every size draws the same random stream
            model = fresh_copy(ctx.base_model, dev)
            digest = state_digest(model)
            step = TrainStep(model, dev, optimizer=s.optimizer, lr=lr, amp=s.amp)
            losses: list[tuple[torch.Tensor, int]] = []   # one entry per step (a few hundred at most)
            remaining = images
            while remaining > 0:
                x, y, idx = next(batches)
                n = min(remaining, int(y.shape[0]))
                if n < y.shape[0]:
                    x, y, idx = x[:n], y[:n], idx[:n]
                losses.append((step(x, y), n))
                seen_train[idx.cpu().numpy()] = True
                remaining -= n
        batches.close()
        train.close()
        last = losses[-max(1, len(losses) // 10):]
        train_loss = sum(float(l_) * n for l_, n in last) / sum(n for _, n in last)

        val = ctx.image_loader(batch_size, image_size, train=False, subset="validation", with_indices=True,
                               drop_last=False)
        try:
            model.eval()
            loss_sum, correct, count = 0.0, 0, 0
            with torch.no_grad(), step.autocast():
                for x, y, idx in val:
                    out = model(x).float()
                    loss_sum += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
                    correct += int((out.argmax(1) == y).sum())
                    count += int(y.shape[0])
                    seen_val[idx.cpu().numpy()] = True
        finally:
            val.close()
        result = TrialResult(images=sum(n for _, n in losses), steps=len(losses), train_loss=train_loss,
                             val_loss=loss_sum / count, val_accuracy=correct / count, lr=lr,
                             initial_digest=digest, val_images=count,
                             train_records=np.flatnonzero(seen_train), val_records=np.flatnonzero(seen_val))
        log(f"trial batch={batch_size} size={image_size}: {result.images} images in {result.steps} steps "
            f"(lr {lr:g}): train loss {train_loss:.3f}, val loss {result.val_loss:.3f}, "
            f"val top-1 {result.val_accuracy:.1%} on {count} images")
        return result
    finally:
        model = step = None  # noqa: F841
        batches.close()
        train.close()
