"""The OCT layer family: retinal layer and fluid segmentation of OCT cubes, slice-wise (2.5-D).

The 2-D VisionFM OCT encoder and its dense decoder run on every B-scan (`SliceWiseTaskModel`: the slices of a cube
folded into the batch); training takes random one-B-scan crops of the cubes, and validation, evaluation and inference
slide a one-slice window over whole cubes (batched over slices, sliding in-plane over B-scans wider than the
window). Outputs: a NIfTI label map at the input's geometry and en-face thickness maps per layer
(`visionfm_core.tasks.oct_layers.LayerThicknessWriter`).
"""

from __future__ import annotations


from visionfm_core.data.synthetic.oct_samples import OCT_LAYER_CLASSES, OCT_SPACING_MM
from visionfm_core.modalities import get_modality

from .common import image_input, metadata, model_card, sentence_case
from .task import TaskParts, family_bundles, with_dense_decoder
from .volume_common import MEAN_DICE, ONE_HOT, VOLUME_DATALIST, load_volume

TEST_DATA = ("The tests use synthetic OCT cubes with known retinal layers, speckle and fluid pockets "
             "(visionfm_core.data.synthetic.oct_samples); no real OCT cube installs offline.")

DESCRIPTIONS = {
    "oct_layer_segmentation": {
        "modality": "OCT",
        "title": "OCT retinal layer and fluid segmentation",
        "classes": OCT_LAYER_CLASSES,
        "dataset_dir": "/workspace/data/oct_layers",
        "infer_dir": "/workspace/data/oct_cubes",
        "data_licences": ["Duke DME dataset, Chiu et al. 2015 (free for research use, cite the paper)",
                          "Duke AMD/normal SD-OCT dataset, Farsiu et al. 2014 (free for research use)",
                          "AROI dataset, Melinscak et al. 2021 (research use on request)"],
    },
}

SLICES = "visionfm_core.tasks.oct_layers"
KEYS = ["image", "label"]


def load(keys) -> list[dict]:
    # dtype None: VolumeIntensityd must see the stored dtype (uint8 is divided by 255, others use percentiles)
    return [dict(t, dtype=None) for t in load_volume(keys)]


def check_volume() -> dict:
    """NaN, constant or empty cubes stop with the file named; an axial spacing far from the training cubes' warns."""
    return {"_target_": "visionfm_core.data.io.volumes.ValidateVolumed", "keys": "image",
            "expected_spacing": "@expected_spacing", "spacing_tolerance": 3.0}


def to_encoder_input() -> list[dict]:
    """[0, 1] intensities -> the encoder's 3 channels (grey copies or neighbouring B-scans) -> VisionFM OCT
    normalisation (per channel; grey modalities repeat one value)."""
    return [
        {"_target_": f"{SLICES}.VolumeIntensityd", "keys": "image"},
        {"_target_": f"{SLICES}.SliceContextd", "keys": "image", "context": "@context_slices"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True,
         "subtrahend": "$list(visionfm_core.encoders.normalisation_stats(@encoder, @modality)[0])",
         "divisor": "$list(visionfm_core.encoders.normalisation_stats(@encoder, @modality)[1])"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]


def sliding_window() -> dict:
    return {"_target_": "SlidingWindowInferer", "roi_size": ["@image_size", "@image_size", 1],
            "sw_batch_size": "@slice_batch_size", "overlap": ["@sw_overlap", "@sw_overlap", 0], "mode": "@sw_mode",
            "cval": "@pad_value"}


def label_map(output_dir: str) -> list[dict]:
    """softmax -> argmax -> the label map as NIfTI at the input's geometry (same shape and affine: nothing was
    resampled, the sliding window covers the whole cube)."""
    return [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "visionfm_core.data.dense.ChannelArgmaxd", "keys": "pred"},  # AsDiscreted(argmax), 10x faster
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": output_dir, "output_postfix": "seg",
         "output_ext": ".nii.gz", "output_dtype": "uint8", "resample": False, "separate_folder": False,
         "print_log": False},
    ]


def writer(output_dir: str) -> dict:
    return {"_target_": "visionfm_core.tasks.oct_layers.LayerThicknessWriter", "output_dir": output_dir,
            "class_names": "@class_names", "write_png": "@thickness_png"}


def parts(d: dict) -> TaskParts:
    # label volumes may mark voxels nobody annotated with IGNORE_LABEL (255): left out of loss, crops and scores
    with_labels = [*load(KEYS), check_volume(), {"_target_": f"{SLICES}.ValidateLabelVolumed", "keys": "label",
                                                 "num_classes": "@num_classes", "ignore_index": "@ignore_label"},
                   *to_encoder_input()]
    ignored = {"_target_": f"{SLICES}.MaskIgnoredd", "pred_key": "pred", "label_key": "label",
               "ignore_index": "@ignore_label"}
    one_hot, dice = ONE_HOT, MEAN_DICE
    return with_dense_decoder(TaskParts(
        infer_datalist=VOLUME_DATALIST,
        head="segmentation",
        num_outputs="@num_classes",
        head_kwargs={"feature_size": "@feature_size"},
        network={"_target_": f"{SLICES}.SliceWiseTaskModel", "head": "segmentation", "num_outputs": "@num_classes",
                 "encoder": "@encoder", "arch": "@arch", "patch_size": "@patch_size", "img_size": "@image_size",
                 "modality": "@modality",
                 "slice_batch_size": "@slice_batch_size"},
        ids={"image_size": 512, "class_names": list(d["classes"]), "num_classes": "$len(@class_names)",
             # B-scans per network call: 4 ran 21 % faster per B-scan than 16 on a 2-core CPU (bf16, 512 px; the
             # activations of 16 B-scans overflow the caches); raise it on a GPU
             "feature_size": 32, "context_slices": False, "slice_batch_size": 4, "crops_per_volume": 4,
             "sw_overlap": 0.25, "sw_mode": "gaussian",
             # windows hanging over a B-scan's edge are padded with black, as training crops are
             "pad_value": {"_target_": f"{SLICES}.black_level", "modality": "@modality"},
             "thickness_png": True, "ignore_label": 255,
             # mm (axial, lateral, between B-scans) the cubes are expected at: axial spacing more than 3x off warns
             # (vendors differ laterally and between B-scans, so those are not checked)
             "expected_spacing": [OCT_SPACING_MM[0], None, None]},
        dataset_dir=d["dataset_dir"],
        train_transforms=with_labels,
        random_transforms=[
            # crops only from B-scans with an annotation (a cube without any is refused)
            {"_target_": f"{SLICES}.KeepAnnotatedSlicesd", "keys": KEYS, "label_key": "label",
             "ignore_index": "@ignore_label"},
            # B-scans narrower or shallower than the window: padded with black (labels with background)
            {"_target_": "SpatialPadd", "keys": "image", "spatial_size": ["@image_size", "@image_size", -1],
             "value": "@pad_value"},
            {"_target_": "SpatialPadd", "keys": "label", "spatial_size": ["@image_size", "@image_size", -1]},
            {"_target_": "RandSpatialCropSamplesd", "keys": KEYS, "roi_size": ["@image_size", "@image_size", 1],
             "num_samples": "@crops_per_volume", "random_size": False},
            # left-right flips only: an upside-down B-scan is no realistic image
            {"_target_": "RandFlipd", "keys": KEYS, "prob": 0.5, "spatial_axis": 1},
        ],
        # DiceCELoss(softmax, to_onehot_y, batch) over the annotated voxels only
        loss={"_target_": f"{SLICES}.MaskedDiceCELoss", "ignore_index": "@ignore_label"},
        train_postprocessing=[{"_target_": "Activationsd", "keys": "pred", "softmax": True}, ignored, one_hot],
        val_key_metric={"val_mean_dice": dice},
        val_inferer=sliding_window(),
        val_batch_size=1,
        base_lr=1e-3,
        weight_decay=0.05,
        batch_size=2,
        eval_overrides={
            "validate::postprocessing": {"_target_": "Compose", "transforms": label_map("@eval_dir")},
            "validate::evaluator::key_val_metric": None,
        },
        eval_writer=writer("@eval_dir"),
        infer_transforms=[*load("image"), check_volume(), *to_encoder_input()],
        infer_inferer=sliding_window(),
        infer_postprocessing=label_map("@output_dir"),
        infer_writer=writer("@output_dir"),
        infer_batch_size=1,
        agreement="mask",  # reduced precision vs fp32: Dice between the two label maps
    ))


def bundle_metadata(name: str, d: dict) -> dict:
    m, classes = d["modality"], d["classes"]
    shape = ["16*n", "16*n", "*"]
    meta = metadata(
        family="oct_layers",
        name=f"VisionFM {d['title']}",
        task="Segmentation of 7 retinal layers (Duke DME definition) and fluid in OCT cubes, B-scan by B-scan",
        description="The VisionFM ViT-B/16 OCT encoder with a light 2-D dense decoder (UNETR as an option) "
                    "applied to every B-scan of an OCT cube (slice-wise, 2.5-D: slices batched, optionally with the "
                    "neighbouring B-scans as context channels). Outputs a label map at the cube's own geometry "
                    "(NIfTI) and en-face thickness maps per layer. No trained weights ship with this bundle.",
        changelog="first release: slice-wise OCT layer and fluid segmentation with thickness maps; generated from "
                  "the oct_layers template",
        modality=m,
        data_source="OCT cubes (NIfTI, DICOM series or multi-frame ophthalmic tomography DICOM; vendor files "
                    "through `visionfm convert-oct`) with per-B-scan layer labels, e.g. the Duke DME dataset",
        data_type="nifti, dicom",
        image_classes="OCT cube (I axial depth, J lateral, K B-scans), grey; intensity to [0, 1] (8-bit / 255, "
                      "otherwise percentiles 0.5-99.5), copied to 3 channels (or B-scans k-1, k, k+1 with "
                      "context_slices), normalised with the VisionFM OCT mean and std",
        label_classes=", ".join(f"{i} {c}" for i, c in enumerate(classes)) + " (label map of the cube's shape)",
        pred_classes=f"{len(classes)} class scores per voxel in the order of label_classes; the saved label map "
                     "holds their argmax",
        outputs={"type": "probabilities", "format": "segmentation", "num_channels": len(classes),
                 "spatial_shape": shape, "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                 "channel_def": {str(i): c for i, c in enumerate(classes)}},
        references=["Chiu S.J. et al. Kernel regression based segmentation of optical coherence tomography images "
                    "with diabetic macular edema. Biomedical Optics Express 2015; 6(4):1172-1194",
                    "Hatamizadeh A. et al. UNETR: Transformers for 3D Medical Image Segmentation. WACV 2022"],
        extra_packages=["nibabel", "pillow"],
    )
    meta["network_data_format"]["inputs"]["image"] = {**image_input(m), "spatial_shape": shape}
    return meta


def readme(name: str, d: dict) -> str:
    """docs/README.md from visionfm_core/tasks/oct_layers/model_card.md."""
    mod, classes = get_modality(d["modality"]), d["classes"]
    si, sj, sk = OCT_SPACING_MM
    return model_card(
        "oct_layers", name=name, Title=sentence_case(d["title"]), num_classes=len(classes),
        layers=", ".join(classes[1:-1]), axial_um=f"{si * 1000:.1f}", lateral_um=f"{sj * 1000:.1f}",
        bscan_gap_um=f"{sk * 1000:.0f}", last_class=len(classes) - 1,
        class_indices=", ".join(f"{i} {c}" for i, c in enumerate(classes)), mean=round(mod.mean[0], 4),
        std=round(mod.std[0], 4))


def bundles() -> dict[str, dict[str, str]]:
    return family_bundles(DESCRIPTIONS, parts, bundle_metadata, readme, TEST_DATA)
