"""Data loading for VisionFM: the MONAI image reader and transforms, the one resize, datalists and built-in data."""

from visionfm_core.data.datalist import folder_to_datalist, inference_datalist, load_datalist, retfound_to_datalist
from visionfm_core.data.datalist import CLASS_NAMES_FILE, datalist_class_names, save_class_names, trained_class_names
from visionfm_core.data.readers import (
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    EyeImageReader,
    ImageReadError,
    count_slices,
    list_images,
    read_image,
)
from visionfm_core.data.resize import EyeResize, EyeResized, EyeResizeShortSided, resize
from visionfm_core.data.samples import make_fundus_phantom, real_fundus_photo, write_demo_dataset
from visionfm_core.data.transforms import (
    EyeChannelsd,
    LabelMapd,
    LoadEyeImaged,
    ModalityNormalized,
    ValidateLabeld,
    eval_transforms,
)
from visionfm_core.data.phantoms import make_phantom, write_phantom_folder
from visionfm_core.data.converters import (
    chase_to_datalist,
    drive_to_datalist,
    hrf_to_datalist,
    idrid_landmarks_to_datalist,
    landmark_csv_to_datalist,
    split_train_val_test,
    stare_to_datalist,
)
from visionfm_core.data.dense import HeatmapsToLandmarksd, ScaleLandmarksd, ValidateLandmarksd, ValidateMaskd, scale_points
from visionfm_core.data.dense_samples import (
    LANDMARK_NAMES,
    make_landmark_phantom,
    make_vessel_phantom,
    write_landmark_dataset,
    write_vessel_dataset,
)
from visionfm_core.data.modality_check import ModalityCheckd, chroma, modality_mismatch
from visionfm_core.data.unreadable import SkipUnreadableDataset
from visionfm_core.data.unlabelled import SkippedImagesReport, UnlabelledImageDataset, check_modality_of_images
from visionfm_core.data.targets import (
    MultiTaskLabelsd,
    RegressionTargetsd,
    datalist_targets,
    load_multitask_datalist,
    load_regression_datalist,
    save_targets,
    target_stats,
    trained_targets,
)
from visionfm_core.data.volumes import (VOLUME_BUNDLES, EyeVolumeReader, ValidateVolumed, VolumeReadError, read_volume,
                                        volume_datalist)
from visionfm_core.data.oct_convert import OCT_FORMATS, OCTConversionError, convert_oct

__all__ = [
    # reading (EyeImageReader is also registered with MONAI as reader="EyeImageReader")
    "IMAGE_EXTENSIONS",
    "LABEL_EXTENSIONS",
    "ImageReadError",
    "EyeImageReader",
    "read_image",
    "list_images",
    "count_slices",
    # transforms after LoadImaged, and the evaluation preprocessing
    "EyeChannelsd",
    "LabelMapd",
    "LoadEyeImaged",
    "ModalityNormalized",
    "ValidateLabeld",
    "eval_transforms",
    # the one resize
    "resize",
    "EyeResize",
    "EyeResized",
    "EyeResizeShortSided",
    # datalists
    "load_datalist",
    "retfound_to_datalist",
    "folder_to_datalist",
    "inference_datalist",
    "datalist_class_names",
    "trained_class_names",
    "save_class_names",
    "CLASS_NAMES_FILE",
    # built-in data
    "real_fundus_photo",
    "make_fundus_phantom",
    "write_demo_dataset",
    "make_phantom",
    "write_phantom_folder",
    # dense tasks: masks, landmarks, public-dataset converters, synthetic data
    "ValidateMaskd",
    "ValidateLandmarksd",
    "ScaleLandmarksd",
    "HeatmapsToLandmarksd",
    "scale_points",
    "drive_to_datalist",
    "stare_to_datalist",
    "chase_to_datalist",
    "hrf_to_datalist",
    "idrid_landmarks_to_datalist",
    "landmark_csv_to_datalist",
    "split_train_val_test",
    "make_vessel_phantom",
    "make_landmark_phantom",
    "write_vessel_dataset",
    "write_landmark_dataset",
    "LANDMARK_NAMES",
    # pretraining folders
    "UnlabelledImageDataset",
    # inference keeps going past unreadable files (reported in unreadable.csv)
    "SkipUnreadableDataset",
    "SkippedImagesReport",
    "check_modality_of_images",
    # does an image look like the bundle's modality (inference: a per-image warning)
    "ModalityCheckd",
    "modality_mismatch",
    "chroma",
    # multi-task labels and regression targets (masked when unknown)
    "load_multitask_datalist",
    "MultiTaskLabelsd",
    "load_regression_datalist",
    "RegressionTargetsd",
    "datalist_targets",
    "target_stats",
    "save_targets",
    "trained_targets",
    # volumes: NIfTI, DICOM series, multi-frame DICOM (EyeVolumeReader), their checks, vendor OCT -> NIfTI
    "EyeVolumeReader",
    "VolumeReadError",
    "ValidateVolumed",
    "read_volume",
    "volume_datalist",
    "VOLUME_BUNDLES",
    "convert_oct",
    "OCTConversionError",
    "OCT_FORMATS",
]

# public classification datasets and generic CSVs -> datalists, with the leak-free seeded split
from visionfm_core.data import classification_datasets  # noqa: E402
from visionfm_core.data.classification_datasets import *  # noqa: E402,F401,F403

__all__ += classification_datasets.__all__
