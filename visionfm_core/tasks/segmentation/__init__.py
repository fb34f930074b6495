"""Per-pixel label maps of photos (e.g. retinal vessels) through a UNETR decoder."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.segmentation.head import SegmentationHead
from visionfm_core.tasks.segmentation.metrics import SEGMENTATION_METRIC_NAMES, cldice, dice, segmentation_metrics
from visionfm_core.tasks.segmentation.transforms import ValidateMaskd
from visionfm_core.tasks.segmentation.writer import SegmentationWriter

__all__ = [
    "FAMILY",
    "SegmentationHead",
    "ValidateMaskd",
    "SEGMENTATION_METRIC_NAMES",
    "dice",
    "cldice",
    "segmentation_metrics",
    "SegmentationWriter",
]

FAMILY = register_family(Family(
    "segmentation",
    "Per-pixel label maps of photos (e.g. retinal vessels) through a UNETR decoder.",
    served_as="segmentation",
))
