"""Per-iteration schedules and optimiser-side helpers for iBOT pretraining.

Schedules are plain numpy arrays indexed by the global iteration (0-based), built once from the recipe
(`IBOTSchedules.build(recipe, ...)`, as DINOv2 builds its schedules once in train.py), so a resumed run picks
up exactly where it stopped from `engine.state.iteration` alone. The trainer reads every value of an
iteration from them, the teacher temperatures included, and hands the temperature to the losses.

VisionFM's recipe (values in `IBOTRecipe`): lr = base x total_batch / 256, linear warm-up then cosine to the
minimum; weight decay and teacher EMA momentum cosine; teacher temperatures linear over the first epochs,
constant within an epoch; gradients clipped per parameter tensor; the head's last layer frozen for the first
epochs (it is the layer that can lock into a collapsed solution before the rest of the network has learned
anything).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from visionfm_core.ssl.recipe import DEFAULT_RECIPE, IBOTRecipe

__all__ = [
    "cosine_schedule",
    "teacher_temp_schedule",
    "scaled_lr",
    "IBOTSchedules",
    "ScheduleValues",
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


def scaled_lr(
    total_batch: int, base: float = DEFAULT_RECIPE.base_lr, reference_batch: int = DEFAULT_RECIPE.lr_reference_batch
) -> float:
    """Linear scaling rule: base x total_batch / reference_batch (total over all processes)."""
    return base * total_batch / reference_batch


class ScheduleValues(NamedTuple):
    """The scheduled values of one iteration."""

    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    patch_teacher_temp: float


@dataclass
class IBOTSchedules:
    """Per-iteration lr, weight decay, teacher momentum and teacher temperatures (CLS and patch)."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    patch_teacher_temp: np.ndarray
    iters_per_epoch: int
    warmup_epochs: float = 0.0

    @classmethod
    def build(cls, recipe: IBOTRecipe, iters_per_epoch: int, total_batch: int) -> "IBOTSchedules":
        """`recipe.epochs * iters_per_epoch` values of each schedule. The lr peak is `recipe.base_lr` scaled to
        `total_batch` (images per optimizer step over all processes); a warm-up longer than the run is cut. The
        teacher temperatures change per epoch (constant within one), as in the original."""
        r, epochs = recipe, recipe.epochs
        if epochs < 1 or iters_per_epoch < 1:
            raise ValueError(f"need at least one epoch and one iteration per epoch, got {epochs} x {iters_per_epoch}")
        warmup_epochs = min(r.warmup_epochs, epochs)

        def per_iteration(per_epoch: np.ndarray) -> np.ndarray:
            return np.repeat(per_epoch, iters_per_epoch)

        return cls(
            lr=cosine_schedule(r.total_lr(total_batch), r.min_lr, epochs, iters_per_epoch, warmup_epochs),
            weight_decay=cosine_schedule(r.weight_decay, r.weight_decay_end, epochs, iters_per_epoch),
            momentum=cosine_schedule(r.momentum_teacher, r.momentum_teacher_end, epochs, iters_per_epoch),
            teacher_temp=per_iteration(
                teacher_temp_schedule(r.warmup_teacher_temp, r.teacher_temp, r.warmup_teacher_temp_epochs, epochs)
            ),
            patch_teacher_temp=per_iteration(
                teacher_temp_schedule(
                    r.warmup_teacher_patch_temp, r.teacher_patch_temp, r.warmup_teacher_temp_epochs, epochs
                )
            ),
            iters_per_epoch=iters_per_epoch,
            warmup_epochs=warmup_epochs,
        )

    def __len__(self) -> int:
        return len(self.lr)

    def at(self, iteration: int) -> ScheduleValues:
        """The values at a 0-based global iteration; the last values hold beyond the end."""
        i = min(max(int(iteration), 0), len(self.lr) - 1)
        return ScheduleValues(
            float(self.lr[i]),
            float(self.weight_decay[i]),
            float(self.momentum[i]),
            float(self.teacher_temp[i]),
            float(self.patch_teacher_temp[i]),
        )


def param_groups(model: nn.Module) -> list[dict]:
    """Two AdamW parameter groups, as the original: with weight decay, and without it for biases and 1-D tensors
    (LayerNorm weights) only. cls_token, pos_embed and the mask token (masked_embed) are decayed like any other
    weight, as in VisionFM/iBOT/DINO pretraining (timm's `no_weight_decay()` list is deliberately not used here;
    the task bundles' fine-tuning optimiser, `visionfm_core.engine.optim`, keeps using it).

    The first group carries `apply_wd=True`: the trainer writes the weight-decay schedule into the
    groups that have it and leaves the other at 0. Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float = DEFAULT_RECIPE.clip_grad) -> torch.Tensor:
    """Scale each parameter's gradient so that its own L2 norm is at most `clip` (not one global
    norm: a single exploding tensor does not shrink everyone else's update).

    Returns the pre-clipping norms (1-D tensor, one per parameter with a gradient), without a host sync.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))
    coefs = (clip / (norms + 1e-6)).clamp_(max=1.0)
    torch._foreach_mul_(grads, list(coefs.to(grads[0].dtype).unbind()))
    return norms


def cancel_last_layer_gradients(
    model: nn.Module, epoch: int, freeze_epochs: int = DEFAULT_RECIPE.freeze_last_layer_epochs
) -> None:
    """Drop the gradients of the head's `last_layer` during the first `freeze_epochs` (0-based `epoch`).

    Setting them to None (not zero) also keeps AdamW from applying momentum or weight decay to them.
    """
    if epoch >= freeze_epochs:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
