"""The train step that every measurement and trial runs: forward, loss, backward, optimizer step.

One definition, so the model-only timing, the end-to-end loop and the trial
train the same way: cross-entropy, ``sgd`` (momentum 0.9) or ``adamw``, and
with ``amp`` autocast (bf16 on CPU; bf16 on CUDA where supported, else fp16
with a gradient scaler). The optimizer's state is created by the first step,
so it counts in the memory measured around the steps.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from typing import Literal

import torch
from torch import nn

__all__ = ["DEFAULT_LR", "Optimizer", "TrainStep", "fresh_copy", "seeded", "state_digest"]

Optimizer = Literal["sgd", "adamw"]

# The learning rate when no --base-lr is given: the usual starting points for these optimizers.
DEFAULT_LR: dict[str, float] = {"sgd": 0.05, "adamw": 1e-3}


def seeded(seed: int, device: torch.device):
    """A context in which torch's RNG starts from ``seed``; the caller's RNG state is restored after."""
    devices = [device.index or 0] if device.type == "cuda" else []

    @contextlib.contextmanager
    def ctx():
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    return ctx()


def fresh_copy(base: nn.Module, device: torch.device) -> nn.Module:
    """An independent copy of ``base`` (same initial weights and buffers) on ``device``, in train mode."""
    return copy.deepcopy(base).to(device).train()


def state_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes and bytes): equal digests mean equal weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TrainStep:
    """``step(images, labels) -> loss`` (a 0-d tensor, not synchronized) for one model and optimizer."""

    def __init__(self, model: nn.Module, device: torch.device, *, optimizer: Optimizer, lr: float, amp: bool):
        self.model, self.device = model, device
        params = [p for p in model.parameters() if p.requires_grad]
        if optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        else:
            self.opt = torch.optim.AdamW(params, lr=lr)
        self.loss_fn = nn.CrossEntropyLoss()
        self.amp_dtype = None
        self.scaler = None
        if amp:
            if device.type == "cuda" and not torch.cuda.is_bf16_supported():
                self.amp_dtype = torch.float16
                self.scaler = torch.amp.GradScaler("cuda")
            else:
                self.amp_dtype = torch.bfloat16

    def autocast(self):
        """The forward pass's autocast context (a no-op without ``amp``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss_fn(self.model(images), labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        return loss.detach()
