"""One label per image from the encoder's CLS tokens: screening and diagnosis."""

from visionfm_core.tasks.classification.head import ClassificationHead, CLSClassificationHead
from visionfm_core.tasks.classification.metrics import (
    BINARY_METRIC_NAMES,
    METRIC_NAMES,
    ClassificationMetric,
    classification_metrics,
    fixed_point_names,
)
from visionfm_core.tasks.classification.writer import ClassificationWriter
from visionfm_core.tasks.family import Family, register_family

__all__ = [
    "FAMILY",
    "ClassificationHead",
    "CLSClassificationHead",
    "METRIC_NAMES",
    "BINARY_METRIC_NAMES",
    "fixed_point_names",
    "classification_metrics",
    "ClassificationMetric",
    "ClassificationWriter",
]

FAMILY = register_family(Family(
    "classification",
    "One label per image from the encoder's CLS tokens: screening and diagnosis.",
    served_as="classification",
))
