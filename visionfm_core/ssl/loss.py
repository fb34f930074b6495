"""iBOT's two self-distillation losses, one module each, with the centre kept in a buffer.

- `DINOClsLoss`: cross-entropy between the teacher's centred, sharpened softmax of the CLS token on
  each global crop and the student's log-softmax on every *other* crop (a crop never predicts itself).
- `IBOTPatchLoss`: the same cross-entropy per masked patch token, between the teacher's view of a
  global crop (unmasked) and the student's view of the same crop (masked), averaged over the masked
  patches of each image, then over images and views. It takes only the masked tokens: the head and
  the softmax over 8192 prototypes never run on the patches that carry no loss.

Centring (subtract a running mean of the teacher's logits) and sharpening (a low teacher temperature)
are what keep self-distillation from collapsing: centring alone drifts to a uniform output, sharpening
alone to a one-hot output. The centre is updated with momentum 0.9 from the batch mean of the teacher
logits; under torch.distributed the sum and count are all-reduced asynchronously (started by
`update_center`, finished by `apply_center_update`), so the reduction overlaps the student's pass.

The losses own no schedule: the teacher temperature of the step is an argument of `softmax_center_teacher`
(as in DINOv2); the trainer reads it from `IBOTSchedules` for the current iteration.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from visionfm_core.ssl.recipe import DEFAULT_RECIPE

__all__ = ["DINOClsLoss", "IBOTPatchLoss", "patch_weights", "entropy"]


def _stack(x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.stack(list(x))


def patch_weights(masks: torch.Tensor) -> torch.Tensor:
    """Weight 1 / (masked patches of its image) for every masked token, in `masked_patch_index` order.

    `masks` is (n, N) or (n, h, w). Summing weight * per-token loss over tokens and dividing by n gives
    the mean over images of each image's mean over its masked patches (images without a mask add 0).
    """
    counts = masks.reshape(masks.shape[0], -1).sum(1)
    return (1.0 / counts.clamp(min=1).float()).repeat_interleave(counts)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the rows of `probs`."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1).mean()


class _CenteredDistillLoss(nn.Module):
    """Shared machinery: the centre buffer, its (async, all-reduced) update and the teacher softmax."""

    def __init__(
        self,
        out_dim: int,
        center_shape: tuple[int, ...],
        student_temp: float,
        center_momentum: float,
    ):
        super().__init__()
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(center_shape))
        self._pending: tuple[torch.Tensor, object] | None = None

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """softmax((t - centre) / teacher_temp) in float32, over the last dimension; `teacher_temp` is this
        step's value (`IBOTSchedules.at(iteration).teacher_temp` or `.patch_teacher_temp`)."""
        return F.softmax((teacher_logits.float() - self.center.reshape(1, -1)) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """Start the centre update from this batch's teacher logits (any shape (..., out_dim))."""
        self.apply_center_update()
        flat = teacher_logits.detach().float().reshape(-1, self.out_dim)
        # sum and count travel together: ranks may hold different numbers of (masked) tokens
        buf = torch.cat([flat.sum(0), flat.new_full((1,), flat.shape[0])])
        handle = dist.all_reduce(buf, async_op=True) if dist.is_available() and dist.is_initialized() else None
        self._pending = (buf, handle)

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """Finish a pending centre update (no-op when none is pending)."""
        if self._pending is None:
            return
        buf, handle = self._pending
        self._pending = None
        if handle is not None:
            handle.wait()
        count = buf[-1]
        batch_center = (buf[:-1] / count.clamp(min=1)).reshape(self.center.shape)
        new = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
        self.center.copy_(torch.where(count > 0, new, self.center))  # no tokens anywhere: keep it

    @torch.no_grad()
    def discard_center_update(self) -> None:
        """Drop a pending centre update (e.g. from a batch whose loss turned out non-finite)."""
        if self._pending is not None and self._pending[1] is not None:
            self._pending[1].wait()  # every rank joined the collective; just do not apply it
        self._pending = None

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.apply_center_update()  # a checkpoint never misses an update already started
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, student_temp={self.student_temp}, center_momentum={self.center_momentum}"


class DINOClsLoss(_CenteredDistillLoss):
    """CLS-token self-distillation loss (centre shape (1, out_dim))."""

    def __init__(
        self,
        out_dim: int = DEFAULT_RECIPE.out_dim,
        student_temp: float = DEFAULT_RECIPE.student_temp,
        center_momentum: float = DEFAULT_RECIPE.center_momentum,
    ):
        super().__init__(out_dim, (1, out_dim), student_temp, center_momentum)

    def forward(
        self,
        student_logits: torch.Tensor | Sequence[torch.Tensor],
        teacher_probs: torch.Tensor | Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Mean over (teacher crop i, student crop v != i) pairs of the batch-mean cross-entropy.

        student_logits: (S, B, K) raw logits of all S crops (global crops first, in teacher order);
        teacher_probs: (T, B, K) from `softmax_center_teacher` on the T global crops.
        """
        s = F.log_softmax(_stack(student_logits).float() / self.student_temp, dim=-1)
        t = _stack(teacher_probs)
        n_s, n_t = s.shape[0], t.shape[0]
        if n_s < n_t or n_s * n_t - n_t == 0:
            raise ValueError(f"need more student crops than the {n_t} teacher crop(s) and at least one pair; got {n_s}")
        # sum over all student crops, then take out each teacher crop's own view: O(S + T), not O(S * T)
        others = s.sum(0, keepdim=True) - s[:n_t]
        total = -(t * others).sum(-1).mean(-1).sum()
        return total / (n_s * n_t - n_t)


class IBOTPatchLoss(_CenteredDistillLoss):
    """Masked-patch self-distillation loss (centre shape (1, 1, out_dim))."""

    def __init__(
        self,
        patch_out_dim: int = DEFAULT_RECIPE.out_dim,
        student_temp: float = DEFAULT_RECIPE.student_temp,
        center_momentum: float = DEFAULT_RECIPE.center_momentum,
    ):
        super().__init__(patch_out_dim, (1, 1, patch_out_dim), student_temp, center_momentum)

    def forward(
        self,
        student_patch_logits: torch.Tensor,
        teacher_patch_probs: torch.Tensor,
        weights: torch.Tensor,
        n_images: int,
    ) -> torch.Tensor:
        """Loss over the M masked tokens of all global-crop images.

        student_patch_logits: (M, K) student logits at masked positions;
        teacher_patch_probs: (M, K) teacher probabilities (unmasked crop) at the same positions;
        weights: (M,) from `patch_weights(masks)`; n_images: number of global-crop images (views x B).
        Equals mean over views and images of each image's mean over its masked patches.
        """
        if student_patch_logits.shape[0] == 0:
            return student_patch_logits.sum() * 0.0  # no masked token in the batch: zero, graph kept
        s = F.log_softmax(student_patch_logits.float() / self.student_temp, dim=-1)
        per_token = -(teacher_patch_probs * s).sum(-1)
        return (per_token * weights.to(per_token.device, non_blocking=True)).sum() / n_images

