"""Landmark coordinates read from one heatmap per landmark."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.landmarks.head import LandmarkHeatmapHead
from visionfm_core.tasks.landmarks.heatmaps import HeatmapLandmarkLoss, gaussian_heatmaps, soft_argmax_2d
from visionfm_core.tasks.landmarks.metrics import RadialErrorMetric, mean_radial_error
from visionfm_core.tasks.landmarks.transforms import (
    HeatmapsToLandmarksd,
    ScaleLandmarksd,
    ValidateLandmarksd,
    scale_points,
)
from visionfm_core.tasks.landmarks.writer import LandmarkWriter

__all__ = [
    "FAMILY",
    "LandmarkHeatmapHead",
    "soft_argmax_2d",
    "gaussian_heatmaps",
    "HeatmapLandmarkLoss",
    "scale_points",
    "ValidateLandmarksd",
    "ScaleLandmarksd",
    "HeatmapsToLandmarksd",
    "mean_radial_error",
    "RadialErrorMetric",
    "LandmarkWriter",
]

FAMILY = register_family(Family(
    "landmarks",
    "Landmark coordinates read from one heatmap per landmark.",
    served_as="landmarks",
))
