"""Slice-wise retinal layer and fluid segmentation of OCT cubes, with thickness maps."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.oct_layers.annotations import (
    IGNORE_LABEL,
    KeepAnnotatedSlicesd,
    MaskedDiceCELoss,
    MaskIgnoredd,
)
from visionfm_core.tasks.oct_layers.model import (
    SliceContextd,
    SliceWiseTaskModel,
    ValidateLabelVolumed,
    VolumeIntensityd,
    black_level,
)
from visionfm_core.tasks.oct_layers.thickness import (
    PLAUSIBLE_AXIAL_UM,
    LayerThicknessWriter,
    axial_spacing_problem,
    dice_per_class,
    enface_png,
    thickness_maps,
    voxel_spacing_mm,
)

__all__ = [
    "FAMILY",
    "IGNORE_LABEL",
    "MaskedDiceCELoss",
    "KeepAnnotatedSlicesd",
    "MaskIgnoredd",
    "PLAUSIBLE_AXIAL_UM",
    "axial_spacing_problem",
    "SliceWiseTaskModel",
    "SliceContextd",
    "VolumeIntensityd",
    "ValidateLabelVolumed",
    "black_level",
    "voxel_spacing_mm",
    "thickness_maps",
    "dice_per_class",
    "enface_png",
    "LayerThicknessWriter",
]

FAMILY = register_family(Family(
    "oct_layers",
    "Slice-wise retinal layer and fluid segmentation of OCT cubes, with thickness maps.",
    spatial_dims=3,
    served_as="segmentation",
))
