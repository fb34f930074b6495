"""Heatmap landmarks: sub-pixel points from heatmap logits and the loss that trains them.

Coordinates are (x, y) in pixels of the heatmap, x to the right and y down, with pixel centres at integer
coordinates: the centre of the top-left pixel is (0, 0) and a heatmap W wide spans x in [-0.5, W - 0.5].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["soft_argmax_2d", "gaussian_heatmaps", "HeatmapLandmarkLoss"]


def _check_heatmaps(heatmaps: torch.Tensor) -> None:
    if heatmaps.dim() != 4:
        raise ValueError(f"heatmaps must be (B, L, H, W), got shape {list(heatmaps.shape)}")


def soft_argmax_2d(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, L, H, W) heatmap logits -> (B, L, 2) points (x, y): the expected position under a spatial softmax.

    Sub-pixel and differentiable; for the logits of a peaked Gaussian it returns the Gaussian's centre.
    """
    _check_heatmaps(heatmaps)
    b, n, h, w = heatmaps.shape
    prob = torch.softmax(heatmaps.reshape(b, n, h * w).float(), dim=-1).reshape(b, n, h, w)
    xs = torch.arange(w, dtype=prob.dtype, device=prob.device)
    ys = torch.arange(h, dtype=prob.dtype, device=prob.device)
    x = (prob.sum(dim=2) * xs).sum(dim=-1)  # marginal over rows, then the mean column
    y = (prob.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


def _gaussian_log_maps(points: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """Log of Gaussians centred on `points` (B, L, 2), normalised over the H x W pixels: (B, L, H * W)."""
    xs = torch.arange(width, dtype=points.dtype, device=points.device)
    ys = torch.arange(height, dtype=points.dtype, device=points.device)
    dx2 = (xs.view(1, 1, 1, width) - points[..., 0, None, None]) ** 2
    dy2 = (ys.view(1, 1, height, 1) - points[..., 1, None, None]) ** 2
    logits = -(dx2 + dy2) / (2.0 * sigma * sigma)
    # normalised in log space: never 0/0, even for a point well outside the map
    return F.log_softmax(logits.reshape(points.shape[0], points.shape[1], height * width), dim=-1)


def gaussian_heatmaps(points: torch.Tensor, height: int, width: int, sigma: float = 2.0) -> torch.Tensor:
    """Target maps (B, L, H, W), each a Gaussian of std `sigma` pixels at a point (x, y) and summing to 1."""
    if points.dim() != 3 or points.shape[-1] != 2:
        raise ValueError(f"points must be (B, L, 2) as (x, y), got shape {list(points.shape)}")
    return _gaussian_log_maps(points.float(), height, width, sigma).exp().reshape(
        points.shape[0], points.shape[1], height, width)


class HeatmapLandmarkLoss(nn.Module):
    """Spatial-softmax cross-entropy between heatmap logits and a normalised Gaussian around each target point.

    `forward(pred (B, L, H, W), target_points (B, L, 2))`, points (x, y) in heatmap pixels. The mean over
    landmarks and images; a landmark whose target holds NaN (not visible / not annotated) is left out.
    The loss is minimal when the softmax of the heatmap equals the Gaussian, whose centre `soft_argmax_2d`
    then returns.
    """

    def __init__(self, sigma: float = 2.0):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, not {sigma}")
        self.sigma = sigma

    def forward(self, pred: torch.Tensor, target_points: torch.Tensor) -> torch.Tensor:
        _check_heatmaps(pred)
        b, n, h, w = pred.shape
        target_points = torch.as_tensor(target_points, device=pred.device)
        if target_points.shape != (b, n, 2):
            raise ValueError(f"target points must be (B, L, 2) = ({b}, {n}, 2) for heatmaps of shape "
                             f"{tuple(pred.shape)}, got {tuple(target_points.shape)}")
        points = target_points.float()
        visible = torch.isfinite(points).all(dim=-1)  # (B, L)
        points = torch.where(visible[..., None], points, torch.zeros_like(points))
        target = _gaussian_log_maps(points, h, w, self.sigma).exp()
        log_prob = F.log_softmax(pred.reshape(b, n, h * w).float(), dim=-1)
        per_landmark = -(target * log_prob).sum(dim=-1)  # (B, L)
        weights = visible.to(per_landmark.dtype)
        return (per_landmark * weights).sum() / weights.sum().clamp_min(1.0)
