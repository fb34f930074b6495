"""Task heads on top of the VisionFM encoder (the downstream protocols of the original paper)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClassificationHead"]


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
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
