"""Data loading for VisionFM: image readers, MONAI transforms, datalists and built-in demo data."""

from visionfm_core.data.datalist import folder_to_datalist, inference_datalist, load_datalist, retfound_to_datalist
from visionfm_core.data.readers import IMAGE_EXTENSIONS, ImageReadError, count_slices, list_images, read_image
from visionfm_core.data.samples import make_fundus_phantom, real_fundus_photo, write_demo_dataset
from visionfm_core.data.transforms import LoadEyeImaged, ModalityNormalized, ValidateLabeld
from visionfm_core.data.phantoms import make_phantom, write_phantom_folder
from visionfm_core.data.unlabelled import SkippedImagesReport, UnlabelledImageDataset, check_modality_of_images

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "read_image",
    "list_images",
    "count_slices",
    "LoadEyeImaged",
    "ModalityNormalized",
    "ValidateLabeld",
    "load_datalist",
    "retfound_to_datalist",
    "folder_to_datalist",
    "inference_datalist",
    "real_fundus_photo",
    "make_fundus_phantom",
    "write_demo_dataset",
    "make_phantom",
    "write_phantom_folder",
    "UnlabelledImageDataset",
    "SkippedImagesReport",
    "check_modality_of_images",
]
