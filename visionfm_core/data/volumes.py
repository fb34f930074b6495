"""Reading volumes (OCT cubes, MRI): one MONAI ``ImageReader`` for NIfTI, DICOM series and multi-frame DICOM.

Layout: spatial axes (i, j, k) with k the slice axis; for an OCT cube slice k is B-scan k, shown to the 2-D
encoder as an image with i as rows (axial depth) and j as columns (lateral). The affine maps (i, j, k) to RAS mm.
"""

from __future__ import annotations

from monai.data import NibabelReader

__all__ = ["EyeVolumeReader"]


class EyeVolumeReader(NibabelReader):
    """MONAI reader for volumes; ``LoadImaged(keys, reader=EyeVolumeReader())``. (NIfTI only for now.)"""
