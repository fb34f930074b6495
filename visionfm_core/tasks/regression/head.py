"""Biomarker regression: a head on the CLS tokens that predicts standardised targets, and its loss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from visionfm_core.models.heads import init_linear, last_blocks, register_head

__all__ = ["RegressionHead", "OriginalRegressionHead", "StandardisedSmoothL1Loss"]


@register_head("regression")
class RegressionHead(nn.Module):
    """Continuous outputs (B, K) in the targets' units from the last `n_last_blocks` CLS tokens, concatenated (4D).

    `hidden="mlp"`: BN -> Linear(4D, D) -> GELU -> Dropout -> Linear(D, K), the original biomarker head (default);
    `hidden="linear"`: BN -> Linear(4D, K), a linear probe (BN at eval time is a fixed affine map).

    The layers learn standardised targets z; the output is `z * target_std + target_mean`, so predictions are in
    the targets' units. `target_mean` / `target_std` are (K,) buffers (defaults 0 / 1): set them from the training
    split before training (`set_target_stats`); being in the state dict, the checkpoint restores them at inference.
    Train with :class:`StandardisedSmoothL1Loss`, which standardises predictions and targets with the same buffers.
    """

    uses_patch_maps = False

    def __init__(self, encoder: nn.Module, num_outputs: int, hidden: str = "mlp", n_last_blocks: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.block_indices = last_blocks(encoder, n_last_blocks)
        dim = encoder.embed_dim
        in_dim = n_last_blocks * dim
        if hidden == "mlp":
            layers = [nn.BatchNorm1d(in_dim), nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout),
                      nn.Linear(dim, num_outputs)]
        elif hidden == "linear":
            layers = [nn.BatchNorm1d(in_dim), nn.Linear(in_dim, num_outputs)]
        else:
            raise ValueError(f"regression head: hidden must be 'mlp' or 'linear', not {hidden!r}")
        self.layers = nn.Sequential(*layers)
        init_linear(self.layers)
        self.register_buffer("target_mean", torch.zeros(num_outputs))
        self.register_buffer("target_std", torch.ones(num_outputs))

    @torch.jit.unused
    def set_target_stats(self, mean, std) -> None:
        """Set the (K,) standardisation statistics (std must be > 0)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        k = self.target_mean.numel()
        if mean.numel() != k or std.numel() != k:
            raise ValueError(f"regression head has {k} outputs but got {mean.numel()} means and {std.numel()} stds")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"target statistics must be finite with std > 0, got mean {mean.tolist()}, "
                             f"std {std.tolist()}")
        self.target_mean.copy_(mean)
        self.target_std.copy_(std)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        z = self.layers(torch.cat(features, dim=-1))
        return z * self.target_std + self.target_mean


@register_head("original_regression")
class OriginalRegressionHead(nn.Module):
    """The original release's biomarker head (`RegHead`), under its tensor names, so its trained heads run unchanged:
    `channel_bn` (batch norm, eps 1e-6, momentum 0.99) on the CLS tokens of the last `n_last_blocks` blocks after
    the final norm (C = n x D, 3072 for ViT-B), then `classifier`: Linear(C, C/4), GELU, Dropout(0.1), Linear(C/4, K)
    (indices 0 and 3). Its outputs are the targets in their own units: the original trains on raw values, so this
    head has no standardisation buffers. `hidden` is the bundle's option; the original's head is the MLP."""

    uses_patch_maps = False

    def __init__(self, encoder: nn.Module, num_outputs: int, n_last_blocks: int = 4, hidden: str = "mlp",
                 dropout: float = 0.1):
        super().__init__()
        if hidden != "mlp":
            raise ValueError(f"original_regression is the original's MLP head; hidden={hidden!r} is another head")
        self.block_indices = last_blocks(encoder, n_last_blocks)
        in_dim = n_last_blocks * encoder.embed_dim
        self.channel_bn = nn.BatchNorm1d(in_dim, eps=1e-6, momentum=0.99)
        self.classifier = nn.Sequential(nn.Linear(in_dim, in_dim // 4), nn.GELU(), nn.Dropout(dropout),
                                        nn.Linear(in_dim // 4, num_outputs))
        init_linear(self.classifier)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.channel_bn(torch.cat(features, dim=-1)))


class StandardisedSmoothL1Loss(nn.Module):
    """SmoothL1 on standardised values: `(pred - mean) / std` against `(target - mean) / std`, with the mean and
    std buffers of a :class:`RegressionHead` (read at every call, so stats set after construction count).

    Missing targets are NaN in `target` (B, K): masked out; the loss is the mean over the present values, 0 (with
    a zero gradient, never NaN) when a batch has none. `head` may also be a whole `VisionFMTaskModel` (its `.head`
    is used) or a DDP wrapper of one.
    """

    def __init__(self, head: nn.Module, beta: float = 1.0):
        super().__init__()
        self.beta = float(beta)
        # a plain reference, not a submodule: the loss must not own (or move, or save) the network's head
        self.__dict__["_stats_of"] = head

    def _head(self) -> nn.Module:
        head = self._stats_of
        head = getattr(head, "module", head)  # DDP
        return getattr(head, "head", head)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        head = self._head()
        pred = pred.float()
        target = torch.as_tensor(target).as_subclass(torch.Tensor).to(pred.device, torch.float32)
        if target.shape != pred.shape:
            raise ValueError(f"StandardisedSmoothL1Loss: predictions {tuple(pred.shape)} and targets "
                             f"{tuple(target.shape)} must have the same shape")
        mean, std = head.target_mean.to(pred.device), head.target_std.to(pred.device)
        present = ~torch.isnan(target)
        z_target = (torch.where(present, target, mean.expand_as(target)) - mean) / std
        z_pred = (pred - mean) / std
        loss = F.smooth_l1_loss(z_pred, z_target, reduction="none", beta=self.beta) * present
        return loss.sum() / present.sum().clamp(min=1)
