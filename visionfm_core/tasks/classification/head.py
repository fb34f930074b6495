"""The classification heads: VisionFM's head on the CLS tokens of the last blocks, and a CLS-only variant."""

from __future__ import annotations

import torch
from torch import nn

from visionfm_core.models.heads import init_linear, last_blocks, register_head

__all__ = ["ClassificationHead", "CLSClassificationHead"]


class ClassificationHead(nn.Module):
    """BN -> Linear(in, in/2) -> GELU -> Dropout -> Linear(in/2, D) -> GELU -> Dropout -> Linear(D, K).

    `in_dim` is n_last_blocks x D (4 x 768 = 3072 for ViT-B): the CLS tokens of the last 4 blocks.
    Linear weights start at N(0, 0.01) and biases at 0, as in the original protocol.
    """

    def __init__(self, in_dim: int, num_classes: int, embed_dim: int | None = None, dropout: float = 0.1):
        super().__init__()
        embed_dim = embed_dim or in_dim // 4
        self.layers = nn.Sequential(
            nn.BatchNorm1d(in_dim),
            nn.Linear(in_dim, in_dim // 2),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(in_dim // 2, embed_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(embed_dim, num_classes),
        )
        init_linear(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_head("classification")
class CLSClassificationHead(ClassificationHead):
    """Logits (B, K) from the CLS tokens of the last `n_last_blocks` blocks, concatenated (keys `layers.*`)."""

    uses_patch_maps = False

    def __init__(self, encoder: nn.Module, num_outputs: int, n_last_blocks: int = 4, dropout: float = 0.1):
        super().__init__(n_last_blocks * encoder.embed_dim, num_outputs, encoder.embed_dim, dropout)
        self.block_indices = last_blocks(encoder, n_last_blocks)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat(features, dim=-1))
