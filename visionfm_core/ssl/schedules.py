"""Per-iteration schedules and optimiser-side helpers for iBOT pretraining.

Schedules are plain numpy arrays indexed by the global iteration (0-based), so a resumed run picks
up exactly where it stopped from `engine.state.iteration` alone.

VisionFM's recipe: lr = 7.5e-5 x total_batch / 256, linear warm-up then cosine to 2e-6; weight
decay cosine 0.04 -> 0.4; teacher EMA momentum cosine 0.996 -> 1.0; gradients clipped to norm 3.0
per parameter tensor; the head's last layer frozen for the first 3 epochs (it is the layer that can
lock into a collapsed solution before the rest of the network has learned anything).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "cosine_schedule",
    "teacher_temp_schedule",
    "scaled_lr",
    "IBOTSchedules",
    "param_groups",
    "clip_gradients",
    "cancel_last_layer_gradients",
]


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: float = 0,
    start_warmup: float = 0.0,
) -> np.ndarray:
    """`epochs * iters_per_epoch` values: linear `start_warmup` -> `base` over the warm-up, then a
    half cosine from `base` (first iteration after warm-up) to `final` (last iteration)."""
    total = int(epochs * iters_per_epoch)
    warm = min(int(round(warmup_epochs * iters_per_epoch)), total)
    warmup = start_warmup + (base - start_warmup) * np.arange(warm) / max(warm, 1)
    n = total - warm
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * np.arange(n) / max(n - 1, 1)))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def teacher_temp_schedule(start: float, end: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Per-epoch teacher temperature: linear `start` -> `end` over `warmup_epochs` epochs (reaching
    `end` at the last warm-up epoch), then `end`. Always `max(epochs, 1)` values."""
    epochs = max(int(epochs), 1)
    warm = min(int(warmup_epochs), epochs)
    return np.concatenate([np.linspace(start, end, warm), np.full(epochs - warm, end)]).astype(np.float64)


def scaled_lr(total_batch: int, base: float = 7.5e-5, reference_batch: int = 256) -> float:
    """Linear scaling rule: base x total_batch / reference_batch (total over all processes)."""
    return base * total_batch / reference_batch


@dataclass
class IBOTSchedules:
    """Per-iteration lr, weight decay and teacher momentum; see `build` for VisionFM's defaults."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    iters_per_epoch: int
    warmup_epochs: float = 0.0

    @classmethod
    def build(
        cls,
        epochs: int,
        iters_per_epoch: int,
        total_batch: int,
        base_lr: float = 7.5e-5,
        min_lr: float = 2e-6,
        warmup_epochs: float = 50,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
    ) -> "IBOTSchedules":
        """`base_lr` is per 256 images (scaled by `total_batch`); a warm-up longer than the run is cut."""
        if epochs < 1 or iters_per_epoch < 1:
            raise ValueError(f"need at least one epoch and one iteration per epoch, got {epochs} x {iters_per_epoch}")
        warmup_epochs = min(warmup_epochs, epochs)
        peak = scaled_lr(total_batch, base_lr)
        return cls(
            lr=cosine_schedule(peak, min_lr, epochs, iters_per_epoch, warmup_epochs),
            weight_decay=cosine_schedule(weight_decay, weight_decay_end, epochs, iters_per_epoch),
            momentum=cosine_schedule(momentum, momentum_end, epochs, iters_per_epoch),
            iters_per_epoch=iters_per_epoch,
            warmup_epochs=warmup_epochs,
        )

    def __len__(self) -> int:
        return len(self.lr)

    def at(self, iteration: int) -> tuple[float, float, float]:
        """(lr, weight decay, momentum) at a 0-based global iteration; the last values hold beyond the end."""
        i = min(max(int(iteration), 0), len(self.lr) - 1)
        return float(self.lr[i]), float(self.weight_decay[i]), float(self.momentum[i])


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    # collect every submodule's no_weight_decay() (e.g. the encoder's pos_embed), with its prefix
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names |= {f"{prefix}.{n}" if prefix else n for n in fn()}
    return names


def param_groups(model: nn.Module) -> list[dict]:
    """Two AdamW parameter groups: with weight decay, and without (biases, 1-D tensors such as
    LayerNorm weights, and names listed by any submodule's `no_weight_decay()`).

    The first group carries `apply_wd=True`: the trainer writes the weight-decay schedule into the
    groups that have it and leaves the other at 0. Frozen parameters are left out.
    """
    skip = _no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float = 3.0) -> torch.Tensor:
    """Scale each parameter's gradient so that its own L2 norm is at most `clip` (not one global
    norm: a single exploding tensor does not shrink everyone else's update).

    Returns the pre-clipping norms (1-D tensor, one per parameter with a gradient), without a host sync.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))
    coefs = (clip / (norms + 1e-6)).clamp_(max=1.0)
    for g, c in zip(grads, coefs.unbind()):
        g.mul_(c.to(g.dtype))
    return norms


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_epochs: int = 3) -> None:
    """Drop the gradients of the head's `last_layer` during the first `freeze_epochs` (0-based `epoch`).

    Setting them to None (not zero) also keeps AdamW from applying momentum or weight decay to them.
    """
    if epoch >= freeze_epochs:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
