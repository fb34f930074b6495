"""The 2-D segmentation family: encoder + the dense decoder (light by default, or UNETR) on 4 intermediate blocks
and the image.

Photos are rescaled so their short side is `working_size`; training takes random `image_size` crops of that, and
validation, evaluation and inference slide an `image_size` window over the whole photo (Gaussian blending) and put
the probabilities back on the photo's own grid (`Invertd`).
"""

from __future__ import annotations

from .common import images, metadata, modality_text, model_card, sentence_case
from .task import TaskParts, family_bundles, importable, with_dense_decoder, load_image, load_label_map, normalise

TEST_DATA = ("The tests use synthetic phantoms with vessels drawn in (visionfm_core.data) and the CC0 photograph "
             "skimage.data.retina() from scikit-image.")

DESCRIPTIONS = {
    "fundus_vessel_segmentation": {
        "modality": "Fundus",
        "title": "fundus retinal vessel segmentation",
        "target": "retinal vessels",
        "classes": ["vessel"],
        "datasets": "DRIVE, STARE, CHASE_DB1, HRF",
        "converters": ("drive", "stare", "chase", "hrf"),
        "dataset_dir": "/workspace/data/drive",
        "infer_dir": "/workspace/data/fundus_images",
        "working_size": 576,
        "data_licences": ["DRIVE (research use; registration at the Grand Challenge site)",
                          "STARE (free for research use, cite Hoover et al.)",
                          "CHASE_DB1 (CC BY 4.0)", "HRF (CC BY 4.0)"],
    },
}

MASKS = ["label", "fov"]  # the field-of-view mask is optional: datasets without one are scored on the whole image


def resize_short(keys, mode: str) -> dict:
    block = {"_target_": "visionfm_core.data.EyeResizeShortSided", "keys": keys, "short_side": "@working_size",
             "mode": mode}
    if keys == MASKS:
        block["allow_missing_keys"] = True
    return block


def validate_masks() -> dict:
    return {"_target_": "visionfm_core.tasks.segmentation.ValidateMaskd", "keys": MASKS, "image_key": "image",
            "allow_missing_keys": True}


def sliding_window() -> dict:
    return {"_target_": "SlidingWindowInferer", "roi_size": ["@image_size", "@image_size"],
            "sw_batch_size": "@sw_batch_size", "overlap": "@sw_overlap", "mode": "@sw_mode"}


def to_probabilities() -> dict:
    return {"_target_": "Activationsd", "keys": "pred", "sigmoid": "$@num_classes == 1",
            "softmax": "$@num_classes > 1"}


def back_to_input_grid(transform: str) -> dict:
    return {"_target_": "Invertd", "keys": "pred", "transform": transform, "orig_keys": "image",
            "nearest_interp": False, "to_tensor": True}


def writer(output_dir: str) -> dict:
    return {"_target_": "visionfm_core.tasks.segmentation.SegmentationWriter", "output_dir": output_dir,
            "threshold": "@threshold"}


def parts(d: dict) -> TaskParts:
    image_in = [*load_image(), resize_short("image", "bilinear"), *normalise()]
    with_masks = [*load_image(), *load_label_map(MASKS, allow_missing=True), validate_masks(),
                  resize_short("image", "bilinear"), resize_short(MASKS, "nearest"), *normalise()]
    # evaluation scores at the photo's own resolution: the masks are not resized, the prediction is put back
    eval_in = [*load_image(), *load_label_map(MASKS, allow_missing=True), validate_masks(),
               resize_short("image", "bilinear"), *normalise()]
    binarise = {"_target_": "AsDiscreted", "keys": "pred", "threshold": "@threshold"}
    dice = {"_target_": "MeanDice", "include_background": True,
            "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}
    return importable(with_dense_decoder(TaskParts(
        agreement="mask",
        head="segmentation",
        num_outputs="@num_classes",
        head_kwargs={"feature_size": "@feature_size"},
        ids={"image_size": 512, "working_size": d["working_size"], "num_classes": len(d["classes"]),
             "class_names": d["classes"], "feature_size": 32, "threshold": 0.5, "sw_batch_size": 4,
             "sw_overlap": 0.25, "sw_mode": "gaussian"},
        dataset_dir=d["dataset_dir"],
        train_transforms=with_masks,
        random_transforms=[
            {"_target_": "RandSpatialCropd", "keys": MASKS + ["image"], "roi_size": ["@image_size", "@image_size"],
             "random_size": False, "allow_missing_keys": True},
            {"_target_": "RandFlipd", "keys": ["image"] + MASKS, "prob": 0.5, "spatial_axis": 1,
             "allow_missing_keys": True},
            {"_target_": "RandFlipd", "keys": ["image"] + MASKS, "prob": 0.5, "spatial_axis": 0,
             "allow_missing_keys": True},
            {"_target_": "RandRotate90d", "keys": ["image"] + MASKS, "prob": 0.5, "allow_missing_keys": True},
        ],
        loss={"_target_": "DiceFocalLoss", "sigmoid": "$@num_classes == 1", "softmax": "$@num_classes > 1",
              "to_onehot_y": "$@num_classes > 1"},
        train_postprocessing=[to_probabilities(), binarise],
        val_key_metric={"val_mean_dice": dice},
        val_inferer=sliding_window(),
        val_batch_size=1,
        base_lr=1e-3,
        weight_decay=0.05,
        batch_size=4,
        eval_overrides={
            "validate::preprocessing::transforms": eval_in,
            "validate::postprocessing": {"_target_": "Compose", "transforms": [
                to_probabilities(), back_to_input_grid("@validate::preprocessing")]},
            "validate::evaluator::key_val_metric": None,
        },
        eval_writer=writer("@eval_dir"),
        infer_transforms=image_in,
        # photos over twice the working size are read reduced (in 8 bits); the writer scales the probabilities
        # back to the photo's grid in 8 bits, so a huge photo never becomes a full-size float image
        infer_decode_size="$2 * @working_size",
        infer_inferer=sliding_window(),
        infer_postprocessing=[to_probabilities(), back_to_input_grid("@preprocessing")],
        infer_writer=writer("@output_dir"),
        infer_batch_size=1,
    )))


def bundle_metadata(name: str, d: dict) -> dict:
    m, classes = d["modality"], d["classes"]
    return metadata(
        family="segmentation",
        name=f"VisionFM {d['title']}",
        task=f"Segmentation of {d['target']} in {images(m)}",
        description=f"A VisionFM ViT-B/16 {images(m, False)} encoder with a light 2-D dense decoder (UNETR as an "
                    f"option; blocks 3, 5, 7 and 11 plus the image, 32 base channels) segmenting {d['target']}. "
                    "Trained on 512 x 512 crops with the encoder frozen (or fine-tuned), applied to whole photos "
                    "with a Gaussian-blended sliding window; masks, probability maps and overlays are written at the "
                    "photo's own resolution. No trained weights ship with this bundle.",
        changelog=f"first release: VisionFM encoder with a UNETR-style decoder for {d['target']}; generated from "
                  "the segmentation template",
        modality=m,
        data_source=f"Any {images(m)} with {d['target']} masks, e.g. {d['datasets']} (converted by "
                    "`visionfm prepare-data`)",
        image_classes=f"3-channel {images(m, False)}, intensity in [0, 1] then normalised with the VisionFM {m} "
                      "mean and std",
        label_classes=f"binary mask of {d['target']} (0 background, 1 or 255 {classes[0]}), same size as the image",
        pred_classes=f"probability of {classes[0]} per pixel",
        outputs={"type": "probabilities", "format": "segmentation", "num_channels": len(classes),
                 "spatial_shape": ["16*n", "16*n"], "dtype": "float32", "value_range": [0, 1],
                 "is_patch_data": False, "channel_def": {str(i): c for i, c in enumerate(classes)}},
        references=["Hatamizadeh A. et al. UNETR: Transformers for 3D Medical Image Segmentation. WACV 2022",
                    "Shit S. et al. clDice - a Novel Topology-Preserving Loss Function for Tubular Structure "
                    "Segmentation. CVPR 2021"],
        extra_packages={"scikit-image": "0.26.0", "pillow": "13.0.0"},
    )


def readme(name: str, d: dict) -> str:
    """docs/README.md from visionfm_core/tasks/segmentation/model_card.md."""
    return model_card("segmentation", name=name, **modality_text(d["modality"]), Title=sentence_case(d["title"]),
                      converters=" | ".join(d["converters"]), working_size=d["working_size"])


def bundles() -> dict[str, dict[str, str]]:
    return family_bundles(DESCRIPTIONS, parts, bundle_metadata, readme, TEST_DATA)
