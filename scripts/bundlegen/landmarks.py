"""The landmark family: encoder + the dense decoder (light by default, or UNETR) giving one heatmap per landmark;
soft-argmax points.

Datalist items are `{"image": path, "landmarks": [[x, y], ...]}` in pixels of the original image (x right, y
down). The trainer's target (`label`) is them scaled to the network input; predictions and targets are mapped back
to the original image, where the radial error is measured.
"""

from __future__ import annotations

from .common import images, metadata, modality_text, model_card, sentence_case
from .task import (
    TaskParts,
    family_bundles,
    importable,
    load_image,
    normalise,
    with_dense_decoder,
)

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
        {"_target_": "visionfm_core.tasks.landmarks.ValidateLandmarksd", "keys": "landmarks", "image_key": "image",
         "num_landmarks": "@num_landmarks", "names": "@landmark_names"},
        resize,
        # the target the loss sees ("label"): the points in pixels of the network input
        {"_target_": "visionfm_core.tasks.landmarks.ScaleLandmarksd", "keys": "landmarks", "image_key": "image",
         "output_key": "label"},
        *normalise(),
    ]
    to_points = {"_target_": "visionfm_core.tasks.landmarks.HeatmapsToLandmarksd", "keys": "pred", "image_key": "image",
                 "output_key": "points"}
    # postprocessing writes keys the batch already has back into the batch, not the engine output: the original
    # points reach the metric and the writer as a new key
    target_points = {"_target_": "CopyItemsd", "keys": "landmarks", "names": "target_points",
                     "allow_missing_keys": True}
    mre = {"_target_": "visionfm_core.tasks.landmarks.RadialErrorMetric",
           "output_transform": "$monai.handlers.from_engine(['points', 'target_points'])"}
    writer = {"_target_": "visionfm_core.tasks.landmarks.LandmarkWriter", "landmark_names": "@landmark_names",
              "pixel_size_mm": "@pixel_size_mm", "target_key": "target_points"}
    return importable(with_dense_decoder(TaskParts(
        agreement="landmarks",
        head="landmarks",
        num_outputs="@num_landmarks",
        head_kwargs={"feature_size": "@feature_size"},
        ids={"image_size": d["image_size"], "num_landmarks": len(d["landmarks"]), "landmark_names": d["landmarks"],
             "feature_size": 32, "heatmap_sigma": 2.0, "pixel_size_mm": None},
        dataset_dir=d["dataset_dir"],
        train_transforms=with_points,
        loss={"_target_": "visionfm_core.tasks.landmarks.HeatmapLandmarkLoss", "sigma": "@heatmap_sigma"},
        train_postprocessing=[to_points, target_points],
        val_key_metric={"val_mean_radial_error": mre},
        lower_is_better=True,
        batch_size=8,
        eval_writer={**writer, "output_dir": "@eval_dir"},
        infer_transforms=[*load_image(), resize, *normalise()],
        # photos over twice the input are read reduced (in 8 bits); points are mapped back to the file's pixels
        infer_decode_size="$2 * @image_size",
        infer_postprocessing=[to_points, target_points],
        infer_writer={**writer, "output_dir": "@output_dir"},
    )))


def bundle_metadata(name: str, d: dict) -> dict:
    m, names = d["modality"], d["landmarks"]
    return metadata(
        family="landmarks",
        name=f"VisionFM {d['title']}",
        task=f"Localisation of {d['landmark_text']} in {images(m)}",
        description=f"A VisionFM ViT-B/16 {images(m, False)} encoder with a light 2-D dense decoder (UNETR as an "
                    f"option) giving one heatmap per landmark ({', '.join(names)}); sub-pixel coordinates by "
                    "soft-argmax, mapped back to the original image. No trained weights ship with this bundle.",
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
    """docs/README.md from visionfm_core/tasks/landmarks/model_card.md."""
    names = d["landmarks"]
    return model_card("landmarks", name=name, **modality_text(d["modality"]), Title=sentence_case(d["title"]),
                      landmark_text=d["landmark_text"], landmark_list=", ".join(f"`{n}`" for n in names),
                      landmark_names=str(names), converter=d["converter"], size=d["image_size"])


def bundles() -> dict[str, dict[str, str]]:
    return family_bundles(DESCRIPTIONS, parts, bundle_metadata, readme, TEST_DATA)
