"""Segmentation head: the UNETR decoder giving per-pixel class logits."""

from __future__ import annotations

from visionfm_core.models.decoders import DenseHead
from visionfm_core.models.heads import register_head

__all__ = ["SegmentationHead"]


@register_head("segmentation")
class SegmentationHead(DenseHead):
    """Segmentation logits (B, C, H, W) at the input resolution from a 2-D UNETR decoder; (B, C, I, J, K) from the
    3-D decoder on a 3-D encoder."""
