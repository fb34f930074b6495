"""Reading files: photos and DICOM (`readers`, MONAI's `EyeImageReader`), volumes (`volumes`: NIfTI, DICOM series,
multi-frame DICOM) and vendor OCT formats (`oct_convert`)."""

__all__: list[str] = []
