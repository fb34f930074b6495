"""3-D segmentation of volumes (MRI orbit) with the inflated 3-D encoder."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.segmentation3d.writer import (
    StructureVolumesWriter,
    VolumeDiceWriter,
    dice_per_structure,
    label_indices,
)

__all__ = ["FAMILY", "VolumeDiceWriter", "StructureVolumesWriter", "label_indices", "dice_per_structure"]

FAMILY = register_family(Family(
    "segmentation3d",
    "3-D segmentation of volumes (MRI orbit) with the inflated 3-D encoder.",
    spatial_dims=3,
    served_as="segmentation",
))
