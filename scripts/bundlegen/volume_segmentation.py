"""The 3-D segmentation family (mri_orbit_segmentation): the inflated 3-D VisionFM encoder + a 3-D UNETR decoder.

Volumes are read as (C, I, J, K) with their affine, reoriented to RAS and resampled to `pixdim`; training takes random
`roi_size` cubes balanced between structures and background; validation, evaluation and inference slide a `roi_size`
window over the whole volume (Gaussian blending) and put the prediction back on the input's own grid (`Invertd`), so
the label map has the input's shape, affine and spacing.
"""

from __future__ import annotations


from visionfm_core.modalities import get_modality

from .common import LICENCE_AND_REFERENCES, RUN_NOTES, metadata
from .task import TaskParts, family_bundles
from .volume_common import MEAN_DICE, ONE_HOT, VOLUME_DATALIST, load_volume

# NaN or constant volumes stop with the file named; a spacing over 2x from the training spacing is a warning
VALIDATE = {"expected_spacing": "@pixdim", "spacing_tolerance": 2.0, "warning_key": "volume_warning"}

TEST_DATA = ("The tests use small synthetic orbit phantoms (visionfm_core.data.mri_samples: globe, optic nerve, four "
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
         "subtrahend": "$list(visionfm_core.modalities.get_modality(@modality).mean)",
         "divisor": "$list(visionfm_core.modalities.get_modality(@modality).std)"},
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
    return {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}


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
        eval_writer={"_target_": "visionfm_core.segmentation3d.VolumeDiceWriter", "output_dir": "@eval_dir",
                     "class_names": "@class_names"},
        infer_transforms=infer_in,
        infer_inferer=sliding_window(),
        infer_postprocessing=[softmax(), back_to_input_grid("@preprocessing"), argmax(), save_label_map()],
        infer_writer={"_target_": "visionfm_core.segmentation3d.StructureVolumesWriter", "output_dir": "@output_dir",
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
    mod = get_modality(d["modality"])
    return f"""# {name}

3-D segmentation of orbital structures (globe, optic nerve, extraocular muscles, orbital fat) in MRI volumes with the
VisionFM MRI encoder inflated to 3-D and a 3-D UNETR decoder, as a MONAI bundle. Generated from the volume
segmentation template (`scripts/bundlegen/volume_segmentation.py`; edit that, not these files).

## Model overview
- **Encoder**: `visionfm_core.models.vit3d.VisionTransformer3D`, the VisionFM ViT-B/16 blocks (same weights, same
  names) on 16 x 16 x 16 patches of the volume (`VisionFMTaskModel(..., spatial_dims=3)`; `depth_patch` sets the
  patch along the slice axis). Frozen by default (`freeze_encoder`).
- **Inflation rule** (2-D MRI weights -> 3-D, applied by `visionfm_core.weights.load_encoder_weights`):
  the 2-D patch kernel is spread evenly over the depth of the 3-D patch (`W3[..., d] = W2 / depth_patch`, bias
  unchanged); the 2-D position embeddings (resampled in-plane) are shared by every depth position; a learned depth
  embedding starts at zero, so at load time the model sees depth only through content. The CLS key gets an
  attention-logit bias log(number of depth positions), as if the CLS token were repeated once per depth: the CLS
  keeps the share of attention it had in 2-D. Consequence (tested): on a volume made of one slice repeated, the
  inflated encoder gives the 2-D encoder's CLS embedding of that slice (to 1e-4).
- **Decoder**: MONAI's UNETR decoder in 3-D on blocks 3, 5, 7 and 11 (NCDHW maps from `forward_intermediates`) plus
  the volume itself (`feature_size` 16 base channels); 5 softmax outputs. Loss DiceCE; AdamW, lr 1e-3 x batch / 256,
  cosine schedule; the best epoch by mean foreground Dice on the **validation** split.

## 3-D path or slice-wise?
Use this 3-D path for near-isotropic volumes (MRI at about 1 mm, 3-D sequences) whose structures run across slices
(the optic nerve, the muscles): the encoder sees 3-D context in every token. Use the slice-wise bundles
(`oct_layer_segmentation`, `oct_volume_classification`) for OCT cubes and thick-slice stacks, where each B-scan is a
complete image like those the 2-D encoder was pretrained on and the slice spacing is many times the in-plane one;
they also cost linearly in the number of slices.

## Data
A MONAI datalist (`datalist.json`) with `training`, `validation` and `test` lists of `{{"image": volume, "label":
label map}}` (NIfTI, or DICOM series folders), label values 0 background, 1 globe, 2 optic_nerve,
3 extraocular_muscles, 4 orbital_fat, on the image's grid.

## Preprocessing
MONAI `LoadImaged` (`visionfm_core.data.volumes.EyeVolumeReader`, channel first, affine kept) -> `Orientationd` RAS
-> `Spacingd` to `pixdim` (default 1 mm isotropic; labels nearest) -> intensity to [0, 1] by the 0.5 / 99.5
percentiles (MRI has no absolute scale), clipped -> the grey channel copied to 3 channels (the encoder was
pretrained on 3-channel images, grey MRI slices repeated on all three) -> normalised with the VisionFM MRI mean
{round(mod.mean[0], 4)} and std {round(mod.std[0], 4)}. Training: `RandCropByPosNegLabeld` cubes of `roi_size`
(96^3, `image_size`), left-right flips, small intensity scaling and shifts.

## Inference
`SlidingWindowInferer` with a `roi_size` window, `sw_overlap` 0.25, Gaussian blending (`sw_mode`), `sw_batch_size`
windows at a time -> softmax -> `Invertd` (the probabilities back on the input's grid) -> argmax -> `SaveImaged`:
`<name>_seg.nii.gz`, a uint8 label map with the input's shape, affine and spacing (opens on the input in 3D Slicer,
ITK-SNAP, OHIF). `volumes.csv`: per volume its grid and the volume (mL) of each structure. evaluate.json: `dice.csv`
(per volume, Dice of each structure on the input's grid) and `metrics.json` (mean Dice per structure, `mean_dice`).

## Commands (from the bundle folder)
```
python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/orbit_mri \\
    --pretrained_encoder /weights/mri_encoder.pt
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir /data/orbit_mri
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /data/new_volumes
torchrun --standalone --nnodes=1 --nproc_per_node=4 -m monai.bundle run \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir /data/orbit_mri
```
`--pretrained_encoder` takes a **2-D** MRI encoder (`models/encoder.pt` of the MRI pretraining bundle, or
`VFM_MRI_weights.pth` converted by `visionfm import-weights`): it is inflated to 3-D when loaded (the header's
modality, architecture and patch size are checked); a 3-D encoder file loads as is. `--pixdim "[0.5,0.5,0.5]"`,
`--image_size 128` and `--sw_overlap 0.5` change the working resolution, window and overlap.

{RUN_NOTES}
## Performance
No trained weights ship with this bundle and no labelled orbital MRI could be used where it was built (no network):
**no real-data performance is claimed**. The tests train it on synthetic orbit phantoms and run it on real MRI
volumes that install offline (nibabel's `anatomical.nii`, nilearn's MNI152 template) for geometry only: the label
map must have the input's shape, spacing, orientation and affine. Speed: `scripts/bench_volume.py`.

## Limitations
- Research use only; not a medical device.
- MONAI Label with monai 1.6.1 fails on bundles whose inference has `Spacingd` on `image` (its `image_path` key;
  see the project's MONAI Label notes); serve with monai 1.5.2 until that is fixed.
- A volume far from `pixdim` (e.g. 5 mm slices) is resampled anyway: expect poor results on thick slices.

{LICENCE_AND_REFERENCES}
"""


def bundles() -> dict[str, dict[str, str]]:
    return family_bundles(DESCRIPTIONS, parts, bundle_metadata, readme, TEST_DATA)
