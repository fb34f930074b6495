"""The landmark family: encoder + the UNETR-style decoder giving one heatmap per landmark; soft-argmax points.

Datalist items are `{"image": path, "landmarks": [[x, y], ...]}` in pixels of the original image (x right, y
down). The trainer's target (`label`) is them scaled to the network input; predictions and targets are mapped back
to the original image, where the radial error is measured.
"""

from __future__ import annotations

from visionfm_core.modalities import get_modality

from .common import LICENCE_AND_REFERENCES, RUN_NOTES, images, metadata
from .task import TaskParts, family_bundles, load_image, normalise

TEST_DATA = "The tests use synthetic images with the landmarks drawn in (visionfm_core.data)."

DESCRIPTIONS = {
    "fundus_landmark_detection": {
        "modality": "Fundus",
        "title": "fundus optic-disc and fovea localisation",
        "landmarks": ["optic_disc", "fovea"],
        "landmark_text": "the optic-disc centre and the fovea",
        "datasets": "IDRiD (localisation task), or any CSV of coordinates",
        "converter": "idrid-landmarks /data/IDRiD",
        "dataset_dir": "/workspace/data/idrid_localisation",
        "infer_dir": "/workspace/data/fundus_images",
        "image_size": 512,
        "data_licences": ["IDRiD (CC BY 4.0)"],
    },
    "ubm_angle_landmark_detection": {
        "modality": "UBM",
        "title": "UBM anterior-chamber-angle landmark detection",
        "landmarks": ["angle_point_1", "angle_point_2", "angle_point_3"],
        # the original names no landmarks; users rename them with --landmark_names
        "landmark_text": "the 3 anterior-chamber-angle landmarks of the original VisionFM UBM protocol",
        "datasets": "your own UBM images annotated in a CSV of coordinates",
        "converter": "landmark-csv /data/ubm/landmarks.csv",
        "dataset_dir": "/workspace/data/ubm_angle",
        "infer_dir": "/workspace/data/ubm_images",
        "image_size": 512,
        "data_licences": ["no public UBM landmark dataset is referenced; your own data's terms apply"],
    },
}


def parts(d: dict) -> TaskParts:
    resize = {"_target_": "visionfm_core.data.EyeResized", "keys": "image",
              "spatial_size": ["@image_size", "@image_size"], "mode": "bilinear"}
    with_points = [
        *load_image(),
        {"_target_": "visionfm_core.data.ValidateLandmarksd", "keys": "landmarks", "image_key": "image",
         "num_landmarks": "@num_landmarks", "names": "@landmark_names"},
        resize,
        # the target the loss sees ("label"): the points in pixels of the network input
        {"_target_": "visionfm_core.data.ScaleLandmarksd", "keys": "landmarks", "image_key": "image",
         "output_key": "label"},
        *normalise(),
    ]
    to_points = {"_target_": "visionfm_core.data.HeatmapsToLandmarksd", "keys": "pred", "image_key": "image",
                 "output_key": "points"}
    # postprocessing writes keys the batch already has back into the batch, not the engine output: the original
    # points reach the metric and the writer as a new key
    target_points = {"_target_": "CopyItemsd", "keys": "landmarks", "names": "target_points",
                     "allow_missing_keys": True}
    mre = {"_target_": "visionfm_core.metrics.RadialErrorMetric",
           "output_transform": "$monai.handlers.from_engine(['points', 'target_points'])"}
    writer = {"_target_": "visionfm_core.handlers.LandmarkWriter", "landmark_names": "@landmark_names",
              "pixel_size_mm": "@pixel_size_mm", "target_key": "target_points"}
    return TaskParts(
        agreement="landmarks",
        head="landmarks",
        num_outputs="@num_landmarks",
        head_kwargs={"feature_size": "@feature_size"},
        ids={"image_size": d["image_size"], "num_landmarks": len(d["landmarks"]), "landmark_names": d["landmarks"],
             "feature_size": 32, "heatmap_sigma": 2.0, "pixel_size_mm": None},
        dataset_dir=d["dataset_dir"],
        train_transforms=with_points,
        loss={"_target_": "visionfm_core.models.HeatmapLandmarkLoss", "sigma": "@heatmap_sigma"},
        train_postprocessing=[to_points, target_points],
        val_key_metric={"val_mean_radial_error": mre},
        lower_is_better=True,
        batch_size=8,
        eval_writer={**writer, "output_dir": "@eval_dir"},
        infer_transforms=[*load_image(), resize, *normalise()],
        infer_postprocessing=[to_points, target_points],
        infer_writer={**writer, "output_dir": "@output_dir"},
    )


def bundle_metadata(name: str, d: dict) -> dict:
    m, names = d["modality"], d["landmarks"]
    return metadata(
        name=f"VisionFM {d['title']}",
        task=f"Localisation of {d['landmark_text']} in {images(m)}",
        description=f"A VisionFM ViT-B/16 {images(m, False)} encoder with a UNETR-style 2-D decoder giving one "
                    f"heatmap per landmark ({', '.join(names)}); sub-pixel coordinates by soft-argmax, mapped back to "
                    "the original image. No trained weights ship with this bundle.",
        changelog="first release: VisionFM encoder with a heatmap decoder for landmark localisation; generated from "
                  "the landmark template",
        modality=m,
        data_source=f"{d['datasets'][0].upper() + d['datasets'][1:]}",
        image_classes=f"3-channel {images(m, False)}, resized to {d['image_size']}x{d['image_size']}, intensity in "
                      f"[0, 1] then normalised with the VisionFM {m} mean and std",
        label_classes=f"{len(names)} points (x, y) in pixels of the original image: {', '.join(names)}",
        pred_classes=f"{len(names)} heatmaps (logits of a spatial softmax), one per landmark",
        outputs={"type": "probabilities", "format": "heatmaps", "num_channels": len(names),
                 "spatial_shape": ["16*n", "16*n"], "dtype": "float32", "value_range": [-1000, 1000],
                 "is_patch_data": False, "channel_def": {str(i): n for i, n in enumerate(names)}},
        extra_packages={"pillow": "13.0.0"},
    )


def readme(name: str, d: dict) -> str:
    m, names = d["modality"], d["landmarks"]
    mod = get_modality(m)
    size = d["image_size"]
    return f"""# {name}

{d['title'][0].upper() + d['title'][1:]}: {d['landmark_text']} ({', '.join(f'`{n}`' for n in names)}) in
{images(m)}, with the VisionFM {m} encoder (ViT-B/16) and a heatmap decoder, as a MONAI bundle. Generated from the
landmark template (`scripts/bundlegen/landmarks.py`; edit that, not these files).

## Model overview
- **Encoder**: VisionFM ViT-B/16, frozen by default (`freeze_encoder`), position embeddings resampled to the
  {size} px input.
- **Decoder**: `visionfm_core.models.VisionFMTaskModel(head="landmarks")`: the UNETR-style decoder of the
  segmentation bundles on blocks 3, 5, 7 and 11 plus the image, one heatmap per landmark at the input resolution.
- **Loss**: spatial softmax over each heatmap and cross-entropy against a Gaussian target (sigma `heatmap_sigma` 2 px)
  at the annotated point (`HeatmapLandmarkLoss`; the original used a one-hot target). AdamW, lr 1e-3 x batch / 256,
  cosine schedule.
- **Points**: soft-argmax of each heatmap (sub-pixel), mapped back to the original image's pixels.
- **Model selection**: the lowest mean radial error on the **validation** split, in original-image pixels.

## Data
A MONAI datalist with `training`, `validation` and `test` lists of `{{"image": path, "landmarks": [[x, y], ...]}}`,
points in the order {names}, in pixels of the original image (x to the right, y down, pixel centres at integers):
```
visionfm prepare-data {d['converter']} --out /data/datalist.json
```
A CSV `image,<name>_x,<name>_y,...` converts with `visionfm prepare-data landmark-csv`. A landmark outside its
image, a missing or non-numeric coordinate, a wrong number of points or an empty folder stops with a message naming
the file and the landmark; nothing partial is written.

## Preprocessing
Read to 3 channels in [0, 1] (MONAI `LoadImaged` with `visionfm_core.data.EyeImageReader`) -> resize to {size} x {size}
(`EyeResized`, the same anti-aliased resize as pretraining; the points are scaled with it) -> normalise with the
VisionFM {m} mean {[round(v, 4) for v in mod.mean]} and std {[round(v, 4) for v in mod.std]}. No spatial augmentation
(flips would swap anatomical sides).

## Outputs
Inference writes `landmarks.csv` and `landmarks.json` (x, y of every landmark per image, original pixels) and
`<name>_overlay.png` (numbered markers on the image). Evaluation adds `metrics.json`: mean radial error per landmark
and overall, in pixels of the original image, and in mm when `--pixel_size_mm` is given.

## Commands (from the bundle folder)
```
python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/landmarks \\
    --pretrained_encoder /weights/{m.lower()}_encoder.pt
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir /data/landmarks
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /data/new_images
torchrun --standalone --nnodes=1 --nproc_per_node=4 -m monai.bundle run \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir /data/landmarks
```

## Export
`python -m monai.bundle ckpt_export network_def ...` scripts the network with `torch.jit.script`; ONNX export is
tested too.

{RUN_NOTES}
## Performance
No trained weights ship with this bundle and no public dataset could be used where it was built (no network):
**no real-data performance is claimed**. The tests train it on synthetic images with the landmarks drawn in.

## Limitations
- Research use only; not a medical device.
- One point per landmark per image; a landmark that is not visible cannot be marked as missing.

{LICENCE_AND_REFERENCES}
"""


def bundles() -> dict[str, dict[str, str]]:
    return family_bundles(DESCRIPTIONS, parts, bundle_metadata, readme, TEST_DATA)
