"""Landmark head: the dense decoder (light or UNETR) giving one heatmap per landmark."""

from __future__ import annotations

from visionfm_core.models.decoders import DenseHead, OriginalUNETRHead
from visionfm_core.models.heads import register_head

__all__ = ["LandmarkHeatmapHead", "OriginalLandmarkHead"]


@register_head("landmarks")
class LandmarkHeatmapHead(DenseHead):
    """One heatmap of logits per landmark (B, L, H, W) at the input resolution, from the same dense decoder;
    `soft_argmax_2d` turns them into (x, y) points and `HeatmapLandmarkLoss` trains them."""


@register_head("original_landmarks")
class OriginalLandmarkHead(OriginalUNETRHead):
    """The original release's landmark decoder: its UNETR-style decoder (the segmentation one), one heatmap of logits
    per landmark (B, L, H, W); the original turns them into points with a spatial softmax and the arg-max."""
