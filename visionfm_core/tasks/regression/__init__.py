"""Biomarker regression: standardised targets predicted from an image, reported in their units."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.regression.head import RegressionHead, StandardisedSmoothL1Loss
from visionfm_core.tasks.regression.metrics import REGRESSION_METRIC_NAMES, RegressionMetric, regression_metrics
from visionfm_core.tasks.regression.transforms import (
    DEFAULT_TARGET_NAMES,
    DEFAULT_TARGET_UNITS,
    TARGETS_FILE,
    RegressionTargetsd,
    datalist_targets,
    load_regression_datalist,
    save_targets,
    target_stats,
    trained_targets,
)
from visionfm_core.tasks.regression.writer import RegressionWriter, TargetStatsHandler

__all__ = [
    "FAMILY",
    "RegressionHead",
    "StandardisedSmoothL1Loss",
    "TARGETS_FILE",
    "DEFAULT_TARGET_NAMES",
    "DEFAULT_TARGET_UNITS",
    "load_regression_datalist",
    "RegressionTargetsd",
    "datalist_targets",
    "target_stats",
    "save_targets",
    "trained_targets",
    "REGRESSION_METRIC_NAMES",
    "regression_metrics",
    "RegressionMetric",
    "RegressionWriter",
    "TargetStatsHandler",
]

FAMILY = register_family(Family(
    "regression",
    "Biomarker regression: standardised targets predicted from an image, reported in their units.",
    served_as="regression",
))
