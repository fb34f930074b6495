"""Segmentation heads: our dense decoder (UNETR or light) giving per-pixel class logits, and the original release's
two decoders (`original_unetr`, `original_linear_seg`) so its trained decoders run unchanged."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from visionfm_core.models.decoders import DenseHead, OriginalUNETRHead, original_dense_blocks
from visionfm_core.models.heads import register_head

__all__ = ["SegmentationHead", "OriginalUNETRSegmentationHead", "OriginalLinearSegmentationHead"]


@register_head("segmentation")
class SegmentationHead(DenseHead):
    """Segmentation logits (B, C, H, W) at the input resolution from a 2-D decoder (`decoder="light"`, the default,
    or `"unetr"`); (B, C, I, J, K) from the 3-D UNETR decoder on a 3-D encoder."""


@register_head("original_unetr")
class OriginalUNETRSegmentationHead(OriginalUNETRHead):
    """The original release's UNETR-style segmentation decoder (`visionfm import-weights --bundle` writes its
    checkpoints for this head): logits (B, K, H, W); one output is a sigmoid map, several a softmax."""


@register_head("original_linear_seg")
class OriginalLinearSegmentationHead(nn.Module):
    """The original release's linear segmentation head (`linSeg`): the patch maps of the same 4 blocks as its UNETR
    decoder, concatenated (4D channels), a 1x1 conv `conv_seg` to K logits, then bilinear upsampling by the patch
    size (16; align_corners False, as its `nn.Upsample`) to the input's H, W.
    `feature_size` and `decoder` are the bundle's options for its own decoder and are not used: this head has no
    decoder."""

    uses_patch_maps = True

    def __init__(self, encoder: nn.Module, num_outputs: int, feature_size: int = 32, decoder: str | None = None):
        super().__init__()
        self.block_indices = original_dense_blocks(encoder)
        self.conv_seg = nn.Conv2d(4 * encoder.embed_dim, num_outputs, kernel_size=1)
        self.scale = float(encoder.patch_size)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        logits = self.conv_seg(torch.cat(features, dim=1))
        return F.interpolate(logits, scale_factor=self.scale, mode="bilinear", align_corners=False)
