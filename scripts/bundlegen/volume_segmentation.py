"""The 3-D segmentation family (mri_orbit_segmentation): the inflated 3-D VisionFM encoder + a 3-D UNETR decoder.

Volumes are read as (C, I, J, K) with their affine, reoriented to RAS and resampled to `pixdim`; training takes random
`roi_size` cubes balanced between structures and background; validation, evaluation and inference slide a `roi_size`
window over the whole volume (Gaussian blending) and put the prediction back on the input's own grid (`Invertd`), so
the label map has the input's shape, affine and spacing.
"""

from __future__ import annotations


from visionfm_core.modalities import get_modality

from .common import metadata, model_card
from .task import TaskParts, family_bundles
from .volume_common import MEAN_DICE, ONE_HOT, VOLUME_DATALIST, load_volume

# NaN or constant volumes stop with the file named; a spacing over 2x from the training spacing is a warning
VALIDATE = {"expected_spacing": "@pixdim", "spacing_tolerance": 2.0, "warning_key": "volume_warning"}

TEST_DATA = ("The tests use small synthetic orbit phantoms (visionfm_core.data.synthetic.mri_samples: globe, optic nerve, four "
             "extraocular muscles and orbital fat drawn as simple shapes) and, for inference on real volumes, "
             "nibabel's test volume anatomical.nii and nilearn's MNI152 template (brain MRI, not orbits).")

DESCRIPTIONS = {
    "mri_orbit_segmentation": {
        "modality": "MRI",
        "title": "orbital MRI segmentation",
        "classes": ["background", "globe", "optic_nerve", "extraocular_muscles", "orbital_fat"],
        "dataset_dir": "/workspace/data/orbit_mri",
        "infer_dir": "/workspace/data/orbit_mri/imagesTs",
        "data_licences": ["Your own labelled orbital MRI (T1 or T2), e.g. exported from 3D Slicer or ITK-SNAP"],
    },
}
KEYS = ["image", "label"]


def spatial(keys, modes) -> list[dict]:
    """Reorient to RAS and resample to `pixdim` mm (images linearly, label maps nearest)."""
    return [{"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": keys, "pixdim": "@pixdim", "mode": modes}]


def intensity() -> list[dict]:
    """MRI has no absolute scale: percentiles 0.5/99.5 -> [0, 1]; the grey channel is copied to the 3 channels the
    encoder was pretrained on (grey MRI slices were shown to it as 3 equal channels); then the VisionFM MRI mean/std."""
    return [
        {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": "@lower_percentile",
         "upper": "@upper_percentile", "b_min": 0.0, "b_max": 1.0, "clip": True},
        {"_target_": "RepeatChanneld", "keys": "image", "repeats": 3},
        {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True,
         "subtrahend": "$list(visionfm_core.encoders.normalisation_stats(@encoder, @modality)[0])",
         "divisor": "$list(visionfm_core.encoders.normalisation_stats(@encoder, @modality)[1])"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]


def sliding_window() -> dict:
    return {"_target_": "SlidingWindowInferer", "roi_size": "@roi_size", "sw_batch_size": "@sw_batch_size",
            "overlap": "@sw_overlap", "mode": "@sw_mode"}


def softmax() -> dict:
    return {"_target_": "Activationsd", "keys": "pred", "softmax": True}


def back_to_input_grid(transform: str) -> dict:
    # probabilities are resampled back (linear), then argmax: smoother boundaries than resampling labels
    return {"_target_": "Invertd", "keys": "pred", "transform": transform, "orig_keys": "image",
            "nearest_interp": False, "to_tensor": True}


def argmax() -> dict:
    # AsDiscreted(argmax=True), ~10x faster on CPUs (visionfm_core.data.dense.ChannelArgmaxd)
    return {"_target_": "visionfm_core.data.dense.ChannelArgmaxd", "keys": "pred"}


def save_label_map() -> dict:
    # after Invertd the label map is on the input's grid: written as is (resample false) with the input's affine
    return {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
            "output_ext": ".nii.gz", "output_dtype": "uint8", "separate_folder": False, "resample": False,
            "print_log": False}


def parts(d: dict) -> TaskParts:
    train_in = [*load_volume(KEYS, validate=VALIDATE), *spatial(KEYS, ["bilinear", "nearest"]), *intensity(),
                {"_target_": "SpatialPadd", "keys": KEYS, "spatial_size": "@roi_size"}]
    # evaluation: the label stays on the input's grid; the prediction is put back there and scored against it
    eval_in = [*load_volume(KEYS, validate=VALIDATE), *spatial("image", "bilinear"), *intensity()]
    infer_in = [*load_volume("image", validate=VALIDATE), *spatial("image", "bilinear"), *intensity()]
    one_hot, dice = ONE_HOT, MEAN_DICE
    return TaskParts(
        infer_datalist=VOLUME_DATALIST,
        head="segmentation",
        num_outputs="@num_classes",
        head_kwargs={"spatial_dims": 3, "feature_size": "@feature_size"},
        ids={"image_size": 96, "roi_size": ["@image_size", "@image_size", "@image_size"],
             "pixdim": [1.0, 1.0, 1.0], "lower_percentile": 0.5, "upper_percentile": 99.5,
             "num_classes": len(d["classes"]), "class_names": d["classes"], "feature_size": 16, "num_samples": 2,
             "sw_batch_size": 2, "sw_overlap": 0.25, "sw_mode": "gaussian"},
        dataset_dir=d["dataset_dir"],
        train_transforms=train_in,
        random_transforms=[
            {"_target_": "RandCropByPosNegLabeld", "keys": KEYS, "label_key": "label", "spatial_size": "@roi_size",
             "pos": 1, "neg": 1, "num_samples": "@num_samples"},
            # left and right orbits mirror each other: flip left-right only (RAS axis 0)
            {"_target_": "RandFlipd", "keys": KEYS, "prob": 0.5, "spatial_axis": 0},
            {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5},
            {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": 0.1, "prob": 0.5},
        ],
        loss={"_target_": "DiceCELoss", "softmax": True, "to_onehot_y": True},
        train_postprocessing=[softmax(), one_hot],
        val_key_metric={"val_mean_dice": dice},
        val_transforms=[*load_volume(KEYS, validate=VALIDATE), *spatial(KEYS, ["bilinear", "nearest"]), *intensity()],
        val_inferer=sliding_window(),
        val_batch_size=1,
        base_lr=1e-3,
        weight_decay=0.05,
        batch_size=2,
        eval_overrides={
            "validate::preprocessing::transforms": eval_in,
            "validate::postprocessing": {"_target_": "Compose", "transforms": [
                softmax(), back_to_input_grid("@validate::preprocessing"), argmax()]},
            "validate::evaluator::key_val_metric": None,
        },
        eval_writer={"_target_": "visionfm_core.tasks.segmentation3d.VolumeDiceWriter", "output_dir": "@eval_dir",
                     "class_names": "@class_names"},
        infer_transforms=infer_in,
        infer_inferer=sliding_window(),
        infer_postprocessing=[softmax(), back_to_input_grid("@preprocessing"), argmax(), save_label_map()],
        infer_writer={"_target_": "visionfm_core.tasks.segmentation3d.StructureVolumesWriter", "output_dir": "@output_dir",
                      "class_names": "@class_names"},
        infer_batch_size=1,
        agreement="mask",
    )


def volume_input() -> dict:
    return {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 3,
            "spatial_shape": ["16*n", "16*n", "16*n"], "dtype": "float32", "value_range": [0, 1],
            "is_patch_data": True, "channel_def": {"0": "grey", "1": "grey", "2": "grey"}}


def bundle_metadata(name: str, d: dict) -> dict:
    classes = d["classes"]
    meta = metadata(
        family="segmentation3d",
        name=f"VisionFM {d['title']}",
        task="3-D segmentation of the globe, optic nerve, extraocular muscles and orbital fat in orbital MRI",
        description="The VisionFM MRI encoder (ViT-B/16) inflated to 3-D (16 x 16 x 16 patches; patch kernel spread "
                    "evenly over depth, in-plane position embeddings shared by every depth plus a zero-initialised "
                    "depth embedding) with a 3-D UNETR decoder, segmenting orbital structures in MRI volumes with "
                    "Gaussian-blended sliding-window inference. The label map is written on the input's own grid "
                    "(shape, affine, spacing). No trained weights ship with this bundle.",
        changelog="first release: inflated 3-D VisionFM encoder with a 3-D UNETR decoder; generated from the "
                  "volume segmentation template",
        modality=d["modality"],
        data_source="Your own orbital MRI volumes (NIfTI or DICOM series) with label maps of the four structures",
        image_classes="single-channel MRI volume, copied to 3 channels, intensity scaled to [0, 1] by the 0.5 and "
                      "99.5 percentiles, then normalised with the VisionFM MRI mean and std",
        label_classes="label map on the image's grid: 0 background, 1 globe, 2 optic nerve, 3 extraocular muscles, "
                      "4 orbital fat",
        pred_classes="softmax probabilities of the 5 classes per voxel (the label map is their argmax)",
        outputs={"type": "probabilities", "format": "segmentation", "num_channels": len(classes),
                 "spatial_shape": ["16*n", "16*n", "16*n"], "dtype": "float32", "value_range": [0, 1],
                 "is_patch_data": True, "channel_def": {str(i): c for i, c in enumerate(classes)}},
        references=["Hatamizadeh A. et al. UNETR: Transformers for 3D Medical Image Segmentation. WACV 2022",
                    "Carreira J., Zisserman A. Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset "
                    "(I3D: inflating 2-D filters into 3-D). CVPR 2017"],
        data_type="nifti, dicom",
    )
    meta["network_data_format"]["inputs"]["image"] = volume_input()
    return meta


def readme(name: str, d: dict) -> str:
    """docs/README.md from visionfm_core/tasks/segmentation3d/model_card.md."""
    mod = get_modality(d["modality"])
    return model_card("segmentation3d", name=name, mean=round(mod.mean[0], 4), std=round(mod.std[0], 4))


def bundles() -> dict[str, dict[str, str]]:
    return family_bundles(DESCRIPTIONS, parts, bundle_metadata, readme, TEST_DATA)
