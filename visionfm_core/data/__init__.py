"""Data for VisionFM: image and volume readers (`io`), public-dataset converters (`datasets`), built-in samples and
phantoms (`synthetic`), and the MONAI transforms, the one resize and the datalists every family uses.

Family-specific transforms (masks, landmarks, multi-task labels, regression targets, visit pairs) live with their
family under `visionfm_core.tasks`.
"""

from visionfm_core.data.datalist import (
    CLASS_NAMES_FILE,
    datalist_class_names,
    folder_to_datalist,
    inference_datalist,
    load_datalist,
    retfound_to_datalist,
    save_class_names,
    trained_class_names,
)
from visionfm_core.data.datasets.classification import (
    DR_GRADES,
    MULTITASK_LABELS,
    aptos_to_datalist,
    csv_to_datalist,
    idrid_grading_to_datalist,
    jsiec_to_datalist,
    kermany_to_datalist,
    messidor2_to_datalist,
    octid_to_datalist,
    papila_to_datalist,
    refuge_to_datalist,
    report_datalist,
    retfound_split_datalist,
    stratified_group_split,
    summarize_datalist,
)
from visionfm_core.data.datasets.converters import (
    chase_to_datalist,
    drive_to_datalist,
    hrf_to_datalist,
    idrid_landmarks_to_datalist,
    landmark_csv_to_datalist,
    split_train_val_test,
    stare_to_datalist,
)
from visionfm_core.data.io.oct_convert import OCT_FORMATS, OCTConversionError, convert_oct
from visionfm_core.data.io.readers import (
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    EyeImageReader,
    ImageReadError,
    count_slices,
    list_images,
    read_image,
)
from visionfm_core.data.io.volumes import EyeVolumeReader, ValidateVolumed, VolumeReadError, read_volume, volume_datalist
from visionfm_core.data.modality_check import ModalityCheckd, chroma, modality_mismatch
from visionfm_core.data.resize import (
    PREPROCESSING_MODES,
    EyeResize,
    EyeResized,
    EyeResizeShortSided,
    decode_size_for,
    resize,
    resize_mode_for,
)
from visionfm_core.data.synthetic.dense_samples import (
    LANDMARK_NAMES,
    make_landmark_phantom,
    make_vessel_phantom,
    write_landmark_dataset,
    write_vessel_dataset,
)
from visionfm_core.data.synthetic.phantoms import make_phantom, write_phantom_folder
from visionfm_core.data.synthetic.samples import make_fundus_phantom, real_fundus_photo, write_demo_dataset
from visionfm_core.data.transforms import (
    EyeChannelsd,
    LabelMapd,
    LoadEyeImaged,
    ModalityNormalized,
    ValidateLabeld,
    eval_transforms,
)
from visionfm_core.data.unlabelled import SkippedImagesReport, UnlabelledImageDataset, check_modality_of_images

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
    "resize_mode_for",
    "decode_size_for",
    "PREPROCESSING_MODES",
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
    "make_vessel_phantom",
    "make_landmark_phantom",
    "write_vessel_dataset",
    "write_landmark_dataset",
    "LANDMARK_NAMES",
    # public datasets -> datalists, with the leak-free seeded splits
    "drive_to_datalist",
    "stare_to_datalist",
    "chase_to_datalist",
    "hrf_to_datalist",
    "idrid_landmarks_to_datalist",
    "landmark_csv_to_datalist",
    "split_train_val_test",
    "stratified_group_split",
    "idrid_grading_to_datalist",
    "aptos_to_datalist",
    "messidor2_to_datalist",
    "octid_to_datalist",
    "kermany_to_datalist",
    "refuge_to_datalist",
    "papila_to_datalist",
    "jsiec_to_datalist",
    "retfound_split_datalist",
    "csv_to_datalist",
    "summarize_datalist",
    "report_datalist",
    "DR_GRADES",
    "MULTITASK_LABELS",
    # pretraining folders
    "UnlabelledImageDataset",
    "SkippedImagesReport",
    "check_modality_of_images",
    # does an image look like the bundle's modality (inference: a per-image warning)
    "ModalityCheckd",
    "modality_mismatch",
    "chroma",
    # volumes: NIfTI, DICOM series, multi-frame DICOM (EyeVolumeReader), their checks, vendor OCT -> NIfTI
    "EyeVolumeReader",
    "VolumeReadError",
    "ValidateVolumed",
    "read_volume",
    "volume_datalist",
    "convert_oct",
    "OCTConversionError",
    "OCT_FORMATS",
]
