"""What users rely on in the vessel segmentation and landmark bundles, beyond the generic model-zoo checks."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run
from PIL import Image

from visionfm_core import build_encoder, save_encoder_weights
from visionfm_core.data import real_fundus_photo
from visionfm_core.data.synthetic.dense_samples import write_landmark_dataset, write_vessel_dataset

from bundle_harness import DENSE, REPO, TINY, train_one_epoch
from tests_common import chain_text

VESSELS = REPO / "bundles" / "fundus_vessel_segmentation" / "configs"
LANDMARKS = REPO / "bundles" / "fundus_landmark_detection" / "configs"
LOG = str(VESSELS / "logging.conf")


@pytest.fixture(scope="module")
def vessels(tmp_path_factory):
    root = tmp_path_factory.mktemp("vessels")
    datalist = write_vessel_dataset(root / "data", n=6, size=64)
    train_one_epoch(VESSELS, root, datalist, **DENSE)
    return root, datalist


def test_vessel_inference_on_the_real_photo_keeps_its_size(vessels, tmp_path):
    """The 1411 px photo goes through the sliding window (48 px working scale, 32 px windows: several windows)
    and comes back as a mask, a probability map and an overlay of exactly the photo's size."""
    root, _ = vessels
    photo = (real_fundus_photo().transpose(1, 2, 0) * 255).astype(np.uint8)
    (tmp_path / "photos").mkdir()
    Image.fromarray(photo).save(tmp_path / "photos" / "retina.jpg")
    run(config_file=str(VESSELS / "inference.json"), logging_file=LOG, dataset_dir=str(tmp_path / "photos"),
        ckpt_path=str(root / "models" / "model.pt"), output_dir=str(tmp_path / "out"), **TINY, **DENSE)
    mask = np.asarray(Image.open(tmp_path / "out" / "retina_mask.png"))
    overlay = np.asarray(Image.open(tmp_path / "out" / "retina_overlay.png"))
    prob = np.asarray(Image.open(tmp_path / "out" / "retina_prob.png"))
    assert mask.shape == photo.shape[:2] == prob.shape[:2]
    assert overlay.shape == photo.shape
    assert set(np.unique(mask)) <= {0, 255}


def test_vessel_evaluation_scores_on_the_test_split_at_full_resolution(vessels, tmp_path):
    root, datalist = vessels
    run(config_file=[str(VESSELS / "train.json"), str(VESSELS / "evaluate.json")], logging_file=LOG,
        dataset_dir=str(root / "data"), datalist=datalist, ckpt_dir=str(root / "models"), eval_dir=str(tmp_path),
        **TINY, **DENSE)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"dice", "cldice", "auroc", "sensitivity", "specificity"} <= set(metrics)
    test_items = json.loads(open(datalist).read())["test"]
    rows = list(csv.DictReader(open(tmp_path / "segmentation.csv")))
    assert len(rows) == len(test_items)
    label = np.asarray(Image.open(os.path.join(os.path.dirname(datalist), test_items[0]["label"])))
    name = os.path.splitext(os.path.basename(test_items[0]["image"]))[0]
    assert np.asarray(Image.open(tmp_path / f"{name}_mask.png")).shape == label.shape[:2]


def test_vessel_mask_of_another_size_or_values_is_refused(vessels, tmp_path):
    root, datalist = vessels
    content = json.loads(open(datalist).read())
    data_dir = root / "data"
    item = dict(content["training"][0])
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(data_dir / "small_mask.png")
    rest = content["training"][1:]  # a whole batch, so the bad item is really loaded
    (data_dir / "bad_size.json").write_text(
        json.dumps(dict(content, training=[dict(item, label="small_mask.png"), *rest])))
    base = dict(logging_file=LOG, dataset_dir=str(data_dir), ckpt_dir=str(tmp_path / "models"),
                output_dir=str(tmp_path / "runs"), **TINY, **DENSE, **{"train::trainer::max_epochs": 1})
    with pytest.raises(Exception) as info:
        run(config_file=str(VESSELS / "train.json"), datalist=str(data_dir / "bad_size.json"), **base)
    assert "small_mask.png" in chain_text(info.value)
    image = np.asarray(Image.open(os.path.join(data_dir, item["image"])))
    Image.fromarray(np.full(image.shape[:2], 7, np.uint8)).save(data_dir / "sevens.png")
    (data_dir / "bad_values.json").write_text(json.dumps(dict(content, training=[dict(item, label="sevens.png"), *rest])))
    with pytest.raises(Exception) as info:
        run(config_file=str(VESSELS / "train.json"), datalist=str(data_dir / "bad_values.json"), **base)
    assert "sevens.png" in chain_text(info.value)
    assert not (tmp_path / "models" / "model.pt").exists()


def test_encoder_of_another_modality_is_refused_unless_allowed(tmp_path):
    save_encoder_weights(build_encoder("vit_tiny", img_size=32), tmp_path / "oct_encoder.pt", modality="OCT")
    parser = ConfigParser()
    parser.read_config(str(VESSELS / "train.json"))
    parser.update({**TINY, **DENSE, "pretrained_encoder": str(tmp_path / "oct_encoder.pt")})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("network_def")
    text = chain_text(info.value)
    assert "OCT" in text and "Fundus" in text and "oct_encoder.pt" in text
    parser = ConfigParser()
    parser.read_config(str(VESSELS / "train.json"))
    parser.update({**TINY, **DENSE, "pretrained_encoder": str(tmp_path / "oct_encoder.pt"),
                   "allow_modality_mismatch": True})
    assert parser.get_parsed_content("network_def") is not None


@pytest.mark.slow
@pytest.mark.parametrize("configs", [VESSELS, LANDMARKS], ids=["vessels", "landmarks"])
def test_multi_process_training_with_torchrun_on_cpu(configs, tmp_path):
    """2 processes, gloo: DDP (the decoder and, fine-tuned, the encoder), one model.pt written by rank 0."""
    if configs == VESSELS:
        datalist, extra = write_vessel_dataset(tmp_path / "data", n=6, size=64), DENSE
    else:
        datalist, extra = write_landmark_dataset(tmp_path / "data", n=6, size=64), {"feature_size": 8}
    overrides = {**TINY, **extra, "dataset_dir": tmp_path / "data", "datalist": datalist,
                 "ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "runs", "train::trainer::max_epochs": 1,
                 "freeze_encoder": False, "logging_file": LOG}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "--config_file",
           f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']"]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("encoder.blocks.") for k in state) and not any(k.startswith("module.") for k in state)
