"""Landmark metrics: mean radial error in pixels of the original image, and in mm when the pixel size is known."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from visionfm_core.engine.metric_utils import to_numpy

__all__ = ["mean_radial_error", "RadialErrorMetric"]


def _points(x, name: str) -> np.ndarray:
    a = to_numpy(x).astype(np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name} must be shaped (L, 2) or (N, L, 2) as (x, y) points, got {a.shape}.")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite coordinates.")
    return a


def mean_radial_error(pred_points, target_points, pixel_size_mm=None,
                      success_radii_mm: tuple[float, ...] = (2.0, 4.0)) -> dict:
    """Mean radial (Euclidean) error between predicted and true landmarks, in pixels of the original images.

    Args:
        pred_points, target_points: (L, 2) or (N, L, 2) as (x, y), in original image pixels.
        pixel_size_mm: mm per pixel (isotropic), one number or one per image (N,); adds errors in mm and the
            success detection rates ``sdr_<r>mm`` (fraction of landmarks within r mm) for ``success_radii_mm``.

    Returns:
        ``{"mre_px", "mre_px_per_landmark" (list of L), "radial_errors_px" (N x L nested list), "num_images"}``
        plus, with a pixel size, ``"mre_mm"``, ``"mre_mm_per_landmark"`` and ``"sdr_<r>mm"``.
    """
    pred, target = _points(pred_points, "pred_points"), _points(target_points, "target_points")
    if pred.shape != target.shape:
        raise ValueError(f"pred_points {pred.shape} and target_points {target.shape} must have the same shape.")
    errors = np.hypot(*(pred - target).transpose(2, 0, 1))  # (N, L)
    out = {
        "mre_px": float(errors.mean()),
        "mre_px_per_landmark": errors.mean(axis=0).tolist(),
        "radial_errors_px": errors.tolist(),
        "num_images": int(errors.shape[0]),
    }
    if pixel_size_mm is not None:
        size = np.asarray(pixel_size_mm, dtype=np.float64).reshape(-1)
        if size.shape[0] not in (1, errors.shape[0]) or not (np.isfinite(size).all() and (size > 0).all()):
            raise ValueError(f"pixel_size_mm must be one positive number or one per image ({errors.shape[0]}), "
                             f"got {pixel_size_mm!r}.")
        errors_mm = errors * size[:, None] if size.shape[0] > 1 else errors * size[0]
        out["mre_mm"] = float(errors_mm.mean())
        out["mre_mm_per_landmark"] = errors_mm.mean(axis=0).tolist()
        for radius in success_radii_mm:
            out[f"sdr_{radius:g}mm"] = float((errors_mm <= radius).mean())
    return out


def _stack_points(points) -> torch.Tensor:
    """(B, L, 2) float64 from a batch tensor, one sample's (L, 2), or a list of per-sample (L, 2) (decollated)."""
    if isinstance(points, (list, tuple)):
        points = torch.stack([torch.as_tensor(p).as_subclass(torch.Tensor).detach().cpu() for p in points])
    points = torch.as_tensor(points).as_subclass(torch.Tensor).detach().cpu().to(torch.float64)
    return points[None] if points.ndim == 2 else points


class RadialErrorMetric(Metric):
    """An ignite metric: the mean radial error over an epoch, in pixels (or in mm with ``pixel_size_mm``); lower is
    better.

    ``update`` takes ``(pred_points, target_points)``: (B, L, 2) tensors, or lists of per-sample (L, 2) tensors as
    ``monai.handlers.from_engine(["points", "landmarks"])`` gives on decollated outputs. Sums and counts are
    all-reduced across processes, so every rank computes the same value.
    """

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu",
                 pixel_size_mm: float | None = None) -> None:
        self.pixel_size_mm = pixel_size_mm
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = 0

    @reinit__is_reduced
    def update(self, output) -> None:
        pred, target = (_stack_points(x) for x in output)
        if pred.shape != target.shape:
            raise ValueError(f"RadialErrorMetric: predicted points {tuple(pred.shape)} and targets "
                             f"{tuple(target.shape)} must have the same shape.")
        errors = torch.linalg.vector_norm(pred - target, dim=-1)
        self._sum += errors.sum().to(self._device)
        self._count += errors.numel()

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if self._count == 0:
            raise NotComputableError("RadialErrorMetric needs at least one landmark before it can be computed.")
        error = float(self._sum.item() / self._count)
        return error * float(self.pixel_size_mm) if self.pixel_size_mm is not None else error
