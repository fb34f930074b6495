"""The OCT layer family: retinal layer and fluid segmentation of OCT cubes, slice-wise (2.5-D).

The 2-D VisionFM OCT encoder and the UNETR decoder run on every B-scan (`SliceWiseTaskModel`: the slices of a cube
folded into the batch); training takes random one-B-scan crops of the cubes, and validation, evaluation and inference
slide a one-slice window over whole cubes (batched over slices, sliding in-plane over B-scans wider than the
window). Outputs: a NIfTI label map at the input's geometry and en-face thickness maps per layer
(`visionfm_core.thickness.LayerThicknessWriter`).
"""

from __future__ import annotations


from visionfm_core.data.oct_samples import OCT_LAYER_CLASSES, OCT_SPACING_MM
from visionfm_core.modalities import get_modality

from .common import LICENCE_AND_REFERENCES, RUN_NOTES, image_input, metadata
from .task import TaskParts, family_bundles
from .volume_common import MEAN_DICE, ONE_HOT, VOLUME_DATALIST, load_volume

TEST_DATA = ("The tests use synthetic OCT cubes with known retinal layers, speckle and fluid pockets "
             "(visionfm_core.data.oct_samples); no real OCT cube installs offline.")

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

SLICES = "visionfm_core.models.slicewise"
KEYS = ["image", "label"]


def load(keys) -> list[dict]:
    # dtype None: VolumeIntensityd must see the stored dtype (uint8 is divided by 255, others use percentiles)
    return [dict(t, dtype=None) for t in load_volume(keys)]


def check_volume() -> dict:
    """NaN, constant or empty cubes stop with the file named; an axial spacing far from the training cubes' warns."""
    return {"_target_": "visionfm_core.data.volumes.ValidateVolumed", "keys": "image",
            "expected_spacing": "@expected_spacing", "spacing_tolerance": 3.0}


def to_encoder_input() -> list[dict]:
    """[0, 1] intensities -> the encoder's 3 channels (grey copies or neighbouring B-scans) -> VisionFM OCT
    normalisation (per channel; grey modalities repeat one value)."""
    return [
        {"_target_": f"{SLICES}.VolumeIntensityd", "keys": "image"},
        {"_target_": f"{SLICES}.SliceContextd", "keys": "image", "context": "@context_slices"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True,
         "subtrahend": "$list(visionfm_core.modalities.get_modality(@modality).mean)",
         "divisor": "$list(visionfm_core.modalities.get_modality(@modality).std)"},
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
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": output_dir, "output_postfix": "seg",
         "output_ext": ".nii.gz", "output_dtype": "uint8", "resample": False, "separate_folder": False,
         "print_log": False},
    ]


def writer(output_dir: str) -> dict:
    return {"_target_": "visionfm_core.thickness.LayerThicknessWriter", "output_dir": output_dir,
            "class_names": "@class_names", "write_png": "@thickness_png"}


def parts(d: dict) -> TaskParts:
    with_labels = [*load(KEYS), check_volume(), {"_target_": f"{SLICES}.ValidateLabelVolumed", "keys": "label",
                                 "num_classes": "@num_classes"}, *to_encoder_input()]
    one_hot, dice = ONE_HOT, MEAN_DICE
    return TaskParts(
        infer_datalist=VOLUME_DATALIST,
        head="segmentation",
        num_outputs="@num_classes",
        head_kwargs={"feature_size": "@feature_size"},
        network={"_target_": f"{SLICES}.SliceWiseTaskModel", "head": "segmentation", "num_outputs": "@num_classes",
                 "arch": "@arch", "patch_size": "@patch_size", "img_size": "@image_size", "modality": "@modality",
                 "slice_batch_size": "@slice_batch_size"},
        ids={"image_size": 512, "class_names": list(d["classes"]), "num_classes": "$len(@class_names)",
             "feature_size": 32, "context_slices": False, "slice_batch_size": 16, "crops_per_volume": 4,
             "sw_overlap": 0.25, "sw_mode": "gaussian",
             # windows hanging over a B-scan's edge are padded with black, as training crops are
             "pad_value": {"_target_": f"{SLICES}.black_level", "modality": "@modality"},
             "thickness_png": True,
             # mm (axial, lateral, between B-scans) the cubes are expected at: axial spacing more than 3x off warns
             # (vendors differ laterally and between B-scans, so those are not checked)
             "expected_spacing": [OCT_SPACING_MM[0], None, None]},
        dataset_dir=d["dataset_dir"],
        train_transforms=with_labels,
        random_transforms=[
            # B-scans narrower or shallower than the window: padded with black (labels with background)
            {"_target_": "SpatialPadd", "keys": "image", "spatial_size": ["@image_size", "@image_size", -1],
             "value": "@pad_value"},
            {"_target_": "SpatialPadd", "keys": "label", "spatial_size": ["@image_size", "@image_size", -1]},
            {"_target_": "RandSpatialCropSamplesd", "keys": KEYS, "roi_size": ["@image_size", "@image_size", 1],
             "num_samples": "@crops_per_volume", "random_size": False},
            # left-right flips only: an upside-down B-scan is no realistic image
            {"_target_": "RandFlipd", "keys": KEYS, "prob": 0.5, "spatial_axis": 1},
        ],
        loss={"_target_": "DiceCELoss", "softmax": True, "to_onehot_y": True, "batch": True},
        train_postprocessing=[{"_target_": "Activationsd", "keys": "pred", "softmax": True}, one_hot],
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
    )


def bundle_metadata(name: str, d: dict) -> dict:
    m, classes = d["modality"], d["classes"]
    shape = ["16*n", "16*n", "*"]
    meta = metadata(
        name=f"VisionFM {d['title']}",
        task="Segmentation of 7 retinal layers (Duke DME definition) and fluid in OCT cubes, B-scan by B-scan",
        description="The VisionFM ViT-B/16 OCT encoder with a UNETR-style 2-D decoder applied to every B-scan of an "
                    "OCT cube (slice-wise, 2.5-D: slices batched, optionally with the neighbouring B-scans as context "
                    "channels). Outputs a label map at the cube's own geometry (NIfTI) and en-face thickness maps "
                    "per layer. No trained weights ship with this bundle.",
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
    mod = get_modality(d["modality"])
    layers = ", ".join(d["classes"][1:-1])
    si, sj, sk = OCT_SPACING_MM
    return f"""# {name}

{d['title'][0].upper() + d['title'][1:]} with the VisionFM OCT encoder (ViT-B/16) and a UNETR-style 2-D decoder applied
to every B-scan of an OCT cube, as a MONAI bundle. Generated from `scripts/bundlegen/oct_layers.py` (edit that, not
these files).

## Model overview
- **Network**: `visionfm_core.models.slicewise.SliceWiseTaskModel`: the 2-D segmentation model of
  `fundus_vessel_segmentation` (encoder + decoder on blocks 3, 5, 7, 11 and the image, `feature_size` 32) run on the
  B-scans of a cube: (B, 3, I, J, K) -> the K slices folded into the batch, `slice_batch_size` at a time ->
  (B, {len(d['classes'])}, I, J, K). Its weights are exactly those of a 2-D model.
- **Classes**: background, the 7 layers of the Duke DME dataset (Chiu et al. 2015: {layers}) and fluid.
- **Loss**: Dice + cross-entropy (softmax, Dice over the batch). AdamW, lr 1e-3 x batch / 256, weight decay 0.05,
  cosine schedule; encoder frozen by default (`--freeze_encoder False` fine-tunes it at 0.1 x the decoder's lr).
  The best epoch is chosen by mean Dice (background excluded) on the **validation** split only.

## Slice-wise (2.5-D) or true 3-D?
This bundle is slice-wise; `mri_orbit_segmentation` is true 3-D (a 3-D ViT inflated from the 2-D weights).
- Slice-wise reuses the pretrained 2-D OCT encoder **exactly as pretrained** (same input, same weights), and its cost
  is linear in the number of B-scans. It is the right choice when B-scans are far apart relative to the in-plane
  resolution, as in typical OCT cubes (49-128 B-scans 60-250 um apart against 4-12 um pixels: a voxel of this
  synthetic geometry is {si * 1000:.1f} x {sj * 1000:.1f} um in-plane but B-scans are {sk * 1000:.0f} um apart), and when
  training labels exist per B-scan (public OCT layer datasets label single B-scans).
- True 3-D suits near-isotropic volumes (MRI), where anatomy continues smoothly across slices and a 3-D window
  sees it.
- Context channels (`context_slices`, default false): true puts B-scans k-1, k, k+1 into the encoder's 3 channels
  (edges repeat the first and last B-scan) instead of 3 grey copies of B-scan k. The pretrained encoder only saw grey
  copies, so keep false with a frozen encoder; try true when fine-tuning on dense cubes (B-scans <= ~60 um apart).

## Data
A MONAI datalist with `training`, `validation` and `test` lists of `{{"image": cube, "label": label map}}`; cubes as
NIfTI (`visionfm convert-oct` writes them from Heidelberg .e2e/.vol, Topcon .fda and Zeiss .img files), a DICOM series
folder or a multi-frame DICOM, read by `visionfm_core.data.volumes.EyeVolumeReader` into (I axial, J lateral, K
B-scans) with the affine. Label maps have the cube's shape and class indices 0-{len(d['classes']) - 1}
({', '.join(f'{i} {c}' for i, c in enumerate(d['classes']))}); another shape, other values or a 2-D image stop with a
message naming the file.

## Preprocessing
Intensity to [0, 1] (8-bit data / 255; float data already in [0, 1] kept; anything else: percentiles 0.5-99.5 to
0-1) -> 3 channels (`SliceContextd`) -> the VisionFM OCT mean {round(mod.mean[0], 4)} and std {round(mod.std[0], 4)}.
Training: B-scans padded with black to at least `image_size` ({512}) -> `crops_per_volume` random
`image_size` x `image_size` x 1 crops per cube -> left-right flips.

## Inference on whole cubes
`SlidingWindowInferer(roi_size=[image_size, image_size, 1], sw_batch_size=slice_batch_size, overlap=[sw_overlap,
sw_overlap, 0], mode=sw_mode)`: a one-B-scan window, batched over B-scans, sliding in-plane (Gaussian blending) over
B-scans larger than the window. Then softmax -> argmax, and per cube:
- `<name>_seg.nii.gz`: the label map, uint8, with the cube's shape and affine (spacing and orientation) - it overlays
  on the input in 3D Slicer, ITK-SNAP or OHIF;
- `<name>_thickness.npy`: float32 (classes - 1, J, K), the thickness in um of each layer and of fluid at every A-scan
  (voxels of the class along the axial axis x the axial spacing from the affine);
- `<name>_thickness_<class>.png`: en-face maps (columns lateral, rows B-scans with B-scan 0 at the top, stretched so
  both directions have the same scale), viridis from 0 to the map's maximum, with a colour bar; range and spacing
  are also in the PNG metadata (`thickness_png: false` skips them);
- `thickness.csv` (written when the run completes): per cube the mean thickness of each class in um.
With labels (evaluate.json) also `dice.csv` (Dice per class per cube and the thickness error against the label's
thickness in um) and `metrics.json` (their means).

## Commands (from the bundle folder)
```
python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/duke_dme \\
    --pretrained_encoder /weights/oct_encoder.pt
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir /data/duke_dme
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /data/oct_cubes
torchrun --standalone --nnodes=1 --nproc_per_node=4 -m monai.bundle run \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir /data/duke_dme
```

## Export
`python -m monai.bundle ckpt_export network_def --filepath model.ts --ckpt_file models/model.pt --meta_file
configs/metadata.json --config_file configs/inference.json` scripts the network (`torch.jit.script`); it takes any
(B, 3, I, J, K) with I and J multiples of 16. ONNX export is tested too (traced at one input shape).

{RUN_NOTES}
## Performance
No trained weights ship with this bundle and no public OCT dataset could be used where it was built (no network):
**no real-data performance is claimed**. The tests train it on synthetic cubes with known layers, speckle and fluid
(`visionfm_core.data.oct_samples`) for correctness only. Speed (seconds per cube at 16, 32 and 64 B-scans, linear in
the number of B-scans): `scripts/bench_volume.py`.

## Limitations
- Research use only; not a medical device.
- Each B-scan is segmented on its own (with context channels, with its two neighbours): layer surfaces are not
  forced to be smooth or ordered across B-scans.
- Thickness is measured along the image's axial axis (A-scans), not perpendicular to a tilted retina.

{LICENCE_AND_REFERENCES}
"""


def bundles() -> dict[str, dict[str, str]]:
    return family_bundles(DESCRIPTIONS, parts, bundle_metadata, readme, TEST_DATA)
