"""The classification heads: VisionFM's head on the CLS tokens of the last blocks, and the original release's own
head (`original_classification`), so its fine-tuned models and linear probes run unchanged."""

from __future__ import annotations

import torch
from torch import nn

from visionfm_core.models.heads import init_linear, last_blocks, register_head

__all__ = ["ClassificationHead", "CLSClassificationHead", "OriginalClassificationHead", "POOLING_MODES",
           "original_pooling"]


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


# the original's `avgpool_patchtokens`: 0 = the CLS tokens of the last n blocks, 1 = the mean patch token of the
# last block, 2 = both; every token after the encoder's final norm
POOLING_MODES = (0, 1, 2)


def original_pooling(features: list[torch.Tensor], avgpool_patchtokens: int,
                     num_prefix_tokens: int = 1) -> torch.Tensor:
    """The original's image feature from the normalised token sequences (B, prefix + N, D) of its blocks: mode 0 the
    CLS tokens concatenated (n x D), 1 the last block's mean patch token (D), 2 both (n x D + D)."""
    mean_patch = features[-1][:, num_prefix_tokens:].mean(dim=1)
    if avgpool_patchtokens == 1:
        return mean_patch
    x = torch.cat([tokens[:, 0] for tokens in features], dim=-1)
    if avgpool_patchtokens == 2:
        x = torch.cat([x, mean_patch], dim=-1)
    return x


@register_head("original_classification")
class OriginalClassificationHead(nn.Module):
    """The original VisionFM `ClsHead`, its tensors under the original's names: `channel_bn` (batch norm, eps 1e-6,
    momentum 0.99, on the feature as a (B, C, 1, 1) map in the original: a 1-D batch norm here, the same numbers
    and keys), then `classifier`: with `layers=3`, Linear(C, C/2), GELU, Dropout, Linear(C/2, C/4), GELU, Dropout,
    Linear(C/4, K) (indices 0, 3, 6); `layers=2` Linear(C, C/4), GELU, Dropout, Linear(C/4, K); `layers=1`
    Linear(C, K).

    The feature C is the original's `avgpool_patchtokens`: 0 the CLS tokens of the last `n_last_blocks` blocks
    (n x D), 1 the mean of the last block's patch tokens (D), 2 both (n x D + D), all after the final norm, as
    the original's evaluation code computes them. Differs from `classification` (eps 1e-5, keys `layers.*`):
    `visionfm import-weights --bundle` writes checkpoints of the original for this head.
    """

    uses_patch_maps = False
    uses_tokens = True  # the whole normalised token sequences of its blocks (CLS and patches)

    def __init__(self, encoder: nn.Module, num_outputs: int, n_last_blocks: int = 4, avgpool_patchtokens: int = 0,
                 layers: int = 3, dropout: float = 0.1):
        super().__init__()
        if avgpool_patchtokens not in POOLING_MODES:
            raise ValueError(f"avgpool_patchtokens must be one of {POOLING_MODES} (the original's pooling modes), "
                             f"not {avgpool_patchtokens}")
        if layers not in (1, 2, 3):
            raise ValueError(f"layers must be 1, 2 or 3 (the original ClsHead's depths), not {layers}")
        dim = encoder.embed_dim
        in_dim = {0: n_last_blocks * dim, 1: dim, 2: (n_last_blocks + 1) * dim}[avgpool_patchtokens]
        self.block_indices = last_blocks(encoder, 1 if avgpool_patchtokens == 1 else n_last_blocks)
        self.avgpool_patchtokens = avgpool_patchtokens
        self.num_prefix_tokens = int(getattr(encoder, "num_prefix_tokens", 1))
        self.in_dim = in_dim
        self.channel_bn = nn.BatchNorm1d(in_dim, eps=1e-6, momentum=0.99)
        widths = {3: [in_dim, in_dim // 2, in_dim // 4, num_outputs], 2: [in_dim, in_dim // 4, num_outputs],
                  1: [in_dim, num_outputs]}[layers]
        blocks: list[nn.Module] = []
        for i in range(len(widths) - 1):
            blocks.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                blocks += [nn.GELU(), nn.Dropout(dropout)]
        self.classifier = nn.Sequential(*blocks)
        init_linear(self.classifier)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = original_pooling(features, self.avgpool_patchtokens, self.num_prefix_tokens)
        return self.classifier(self.channel_bn(x))
