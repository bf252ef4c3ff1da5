"""Mixup and CutMix as an ImageLoader ``batch_transform``: plain torch, soft targets.

    from scripts.mixup_cutmix import MixupCutmix
    loader = ImageLoader("photos.packed", batch_size=256,
                         batch_transform=MixupCutmix(num_classes=1000, mixup_alpha=0.2, cutmix_alpha=1.0))
    for images, soft_targets in loader:        # soft_targets: float [B, 1000], rows sum to 1
        loss = torch.sum(-soft_targets * model(images).log_softmax(-1), dim=-1).mean()

Every random number comes from the ``generator`` the loader passes, seeded from (seed,
epoch, rank, batch): a rerun, or a run resumed from ``loader.state_dict()``, mixes the same
pairs with the same coefficients. Like timm's ``Mixup``: one coefficient per batch, the
batch mixed with its reverse, CutMix chosen with probability ``switch_prob`` when both are
on, and the CutMix coefficient corrected to the area of the box actually pasted.
docs/imageloader.md#batch-transforms shows how to plug torchvision's ``transforms.v2``
(``MixUp``, ``CutMix``) or kornia instead.
"""

from __future__ import annotations

import torch

__all__ = ["MixupCutmix"]


def _beta(alpha: float, generator: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw made only of ``generator``'s uniforms (Johnk's method:
    X = U**(1/a), Y = V**(1/a), accepted when X + Y <= 1; X / (X + Y) is then exactly Beta).
    torch's own Beta/Gamma samplers take no generator. 64 candidates per round: at alpha <= 1
    at least half are accepted, so one round nearly always suffices."""
    while True:
        u = torch.rand((2, 64), generator=generator, device=generator.device, dtype=torch.float64)
        x, y = u[0] ** (1 / alpha), u[1] ** (1 / alpha)
        ok = torch.nonzero((x + y <= 1) & (x + y > 0))
        if len(ok):
            k = int(ok[0, 0])
            return float(x[k] / (x[k] + y[k]))


class MixupCutmix:
    """``batch_transform(images, targets, generator) -> (mixed images, soft targets)``.

    ``targets`` are class indices (int64 ``[B]``) or already soft / multi-hot (float ``[B, C]``).
    ``label_smoothing`` spreads that much of each target over all classes first (timm's default 0.1).
    """

    def __init__(self, num_classes: int, *, mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.0):
        if mixup_alpha < 0 or cutmix_alpha < 0 or not (mixup_alpha or cutmix_alpha):
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0, and one of them > 0")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.switch_prob, self.label_smoothing = switch_prob, label_smoothing

    def _soft(self, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if targets.dim() == 1:
            soft = torch.nn.functional.one_hot(targets, self.num_classes).to(dtype)
        else:
            soft = targets.to(dtype)
        if self.label_smoothing:
            soft = soft * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return soft

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator):
        dtype = images.dtype if images.is_floating_point() else torch.float32
        soft = self._soft(targets, dtype)
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha == 0
            or float(torch.rand((), generator=generator, device=generator.device)) < self.switch_prob)
        lam = _beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha, generator)
        flipped = images.flip(0)
        if use_cutmix:
            h, w = images.shape[-2:]
            cut = (1 - lam) ** 0.5
            ch, cw = int(h * cut), int(w * cut)
            cy = int(torch.randint(0, h, (), generator=generator, device=generator.device))
            cx = int(torch.randint(0, w, (), generator=generator, device=generator.device))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            images = images.clone()
            images[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)      # the area actually pasted
        else:
            images = images * lam + flipped * (1 - lam)
        return images, soft * lam + soft.flip(0) * (1 - lam)
