"""Landmark head: the UNETR decoder giving one heatmap per landmark."""

from __future__ import annotations

from visionfm_core.models.decoders import DenseHead
from visionfm_core.models.heads import register_head

__all__ = ["LandmarkHeatmapHead"]


@register_head("landmarks")
class LandmarkHeatmapHead(DenseHead):
    """One heatmap of logits per landmark (B, L, H, W) at the input resolution, from the same UNETR decoder;
    `soft_argmax_2d` turns them into (x, y) points and `HeatmapLandmarkLoss` trains them."""
