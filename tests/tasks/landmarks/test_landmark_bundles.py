"""What users rely on in the vessel segmentation and landmark bundles, beyond the generic model-zoo checks."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from monai.bundle import run
from PIL import Image

from visionfm_core.data import real_fundus_photo
from visionfm_core.data.synthetic.dense_samples import write_landmark_dataset

from bundle_harness import REPO, TINY, train_one_epoch
from tests_common import chain_text

VESSELS = REPO / "bundles" / "fundus_vessel_segmentation" / "configs"
LANDMARKS = REPO / "bundles" / "fundus_landmark_detection" / "configs"
UBM = REPO / "bundles" / "ubm_angle_landmark_detection" / "configs"
LOG = str(VESSELS / "logging.conf")


@pytest.fixture(scope="module")
def landmarks(tmp_path_factory):
    root = tmp_path_factory.mktemp("landmarks")
    datalist = write_landmark_dataset(root / "data", n=6, size=64, modality="Fundus", names=("optic_disc", "fovea"))
    train_one_epoch(LANDMARKS, root, datalist, feature_size=8)
    return root, datalist


def test_landmark_inference_evaluation_and_overlay(landmarks, tmp_path):
    root, datalist = landmarks
    run(config_file=[str(LANDMARKS / "train.json"), str(LANDMARKS / "evaluate.json")], logging_file=LOG,
        dataset_dir=str(root / "data"), datalist=datalist, ckpt_dir=str(root / "models"),
        eval_dir=str(tmp_path / "eval"), feature_size=8, pixel_size_mm=0.01, **TINY)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert "optic_disc" in flat and "fovea" in flat and "mm" in flat
    run(config_file=str(LANDMARKS / "inference.json"), logging_file=LOG, dataset_dir=str(root / "data" / "images"),
        ckpt_path=str(root / "models" / "model.pt"), output_dir=str(tmp_path / "out"), feature_size=8, **TINY)
    rows = list(csv.DictReader(open(tmp_path / "out" / "landmarks.csv")))
    assert rows and len(rows) == len(list((root / "data" / "images").iterdir()))
    first = rows[0]
    w, h = Image.open(first["image"]).size
    assert 0 <= float(first["optic_disc_x"]) < w and 0 <= float(first["fovea_y"]) < h
    stem = os.path.splitext(os.path.basename(first["image"]))[0]
    assert Image.open(tmp_path / "out" / f"{stem}_overlay.png").size == (w, h)


def test_landmark_outside_the_image_is_refused(landmarks, tmp_path):
    root, datalist = landmarks
    content = json.loads(open(datalist).read())
    item = dict(content["training"][0], landmarks=[[5.0, 5.0], [500.0, 3.0]])
    (root / "data" / "outside.json").write_text(json.dumps(dict(content, training=[item, *content["training"][1:]])))
    with pytest.raises(Exception) as info:
        run(config_file=str(LANDMARKS / "train.json"), logging_file=LOG, dataset_dir=str(root / "data"),
            datalist=str(root / "data" / "outside.json"), ckpt_dir=str(tmp_path / "models"),
            output_dir=str(tmp_path / "runs"), feature_size=8, **TINY, **{"train::trainer::max_epochs": 1})
    text = chain_text(info.value)
    assert os.path.basename(item["image"]) in text and "fovea" in text
    assert not (tmp_path / "models" / "model.pt").exists()


def test_ubm_bundle_trains_on_grey_angle_images(tmp_path):
    names = json.loads((UBM / "inference.json").read_text())["landmark_names"]
    datalist = write_landmark_dataset(tmp_path / "data", n=6, size=64, modality="UBM", names=names)
    train_one_epoch(UBM, tmp_path, datalist, feature_size=8)
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("head.") for k in state)


def test_landmark_inference_on_the_real_photo(landmarks, tmp_path):
    """The 1411 px photo: points come back in its own pixels, inside it, and the overlay has its size."""
    root, _ = landmarks
    photo = (real_fundus_photo().transpose(1, 2, 0) * 255).astype(np.uint8)
    (tmp_path / "photos").mkdir()
    Image.fromarray(photo).save(tmp_path / "photos" / "retina.jpg")
    run(config_file=str(LANDMARKS / "inference.json"), logging_file=LOG, dataset_dir=str(tmp_path / "photos"),
        ckpt_path=str(root / "models" / "model.pt"), output_dir=str(tmp_path / "out"), feature_size=8, **TINY)
    (row,) = json.loads((tmp_path / "out" / "landmarks.json").read_text())
    text = json.dumps(row)
    assert "optic_disc" in text and "fovea" in text
    rows = list(csv.DictReader(open(tmp_path / "out" / "landmarks.csv")))
    for name in ("optic_disc", "fovea"):
        assert 0 <= float(rows[0][f"{name}_x"]) < 1411 and 0 <= float(rows[0][f"{name}_y"]) < 1411
    assert Image.open(tmp_path / "out" / "retina_overlay.png").size == (1411, 1411)
