"""The `encoder` setting of the bundles: every bundle that owns an encoder has one (default visionfm, behaviour
unchanged), the network and the normalisation follow it, and a classification bundle trains and infers on another
family's published weights."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from bundle_harness import REPO, TINY, train_one_epoch, write_classification_dataset
from visionfm_core.encoders import build_encoder, normalisation_stats

BUNDLES = REPO / "bundles"


def parsed(bundle: str, name: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / f"{name}.json"))
    parser.update(overrides)
    return parser


def test_every_bundle_with_an_encoder_has_the_setting():
    owners = 0
    for configs in sorted(BUNDLES.glob("*/configs")):
        for name in ("train.json", "inference.json"):
            path = configs / name
            if not path.is_file():
                continue
            text = path.read_text()
            if "@encoder" in text:
                owners += 1
                config = json.loads(text)
                assert config["encoder"] == "visionfm", f"{path}: the default encoder must stay visionfm"
    # every task bundle (train and inference) and the pretraining bundles' embedding inference
    assert owners >= 2 * 18 + 7


def test_network_and_normalisation_follow_the_encoder():
    parser = parsed("oct_bscan_classification", "inference", encoder="retfound_mae", arch="vit_tiny",
                    image_size=32)
    net = parser.get_parsed_content("network_def")
    assert net.encoder.family == "retfound_mae" and net.encoder.patch_size == 16
    normalise = [t for t in parser.get_parsed_content("preprocessing").transforms
                 if type(t).__name__ == "ModalityNormalized"][0]
    assert np.allclose(normalise.mean.ravel(), normalisation_stats("retfound_mae")[0])
    default = parsed("oct_bscan_classification", "inference")
    net = default.get_parsed_content("network_def")  # the defaults: VisionFM's ViT-B/16, OCT statistics
    assert net.encoder.family == "visionfm" and net.encoder.embed_dim == 768 and net.encoder.patch_size == 16
    normalise = [t for t in default.get_parsed_content("preprocessing").transforms
                 if type(t).__name__ == "ModalityNormalized"][0]
    assert np.allclose(normalise.mean.ravel(), normalisation_stats("visionfm", "OCT")[0])


def test_a_patch14_encoder_names_the_valid_image_sizes():
    parser = parsed("fundus_dr_classification", "train", encoder="dinov2_vits14", arch="vit_tiny", image_size=32)
    with pytest.raises(RuntimeError) as e:  # MONAI's "failed to instantiate", caused by ours
        parser.get_parsed_content("network_def")
    assert "img_size 32 is not a multiple of the dinov2_vits14 encoder's patch size 14: use 28 or 42 " \
           "(bundles: --image_size 28)" in str(e.value.__cause__)


def test_volume_bundle_normalises_for_the_encoder():
    parser = parsed("oct_volume_classification", "inference", encoder="dinov2_vits14")
    normalise = [t for t in parser.get_parsed_content("preprocessing").transforms
                 if type(t).__name__ == "NormalizeIntensityd"][0]
    assert np.allclose(normalise.normalizer.subtrahend, normalisation_stats("dinov2_vits14")[0])


@pytest.mark.slow  # a bundle trained and run end to end
def test_classification_bundle_trains_and_infers_on_retfound_weights(tmp_path):
    from monai.bundle import ConfigWorkflow

    bundle = BUNDLES / "fundus_glaucoma_classification"
    configs = bundle / "configs"
    classes = json.loads((configs / "train.json").read_text())["default_class_names"]
    datalist = write_classification_dataset(tmp_path / "data", "Fundus", classes)
    # RETFound's published layout: {"model": encoder with its final norm, no fc_norm, + the MAE decoder}
    encoder = build_encoder("vit_tiny", img_size=32, encoder="retfound_mae")
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("fc_norm")}
    state.update({"norm.weight": torch.ones(192), "norm.bias": torch.zeros(192),
                  "decoder_embed.weight": torch.zeros(16, 192)})
    weights = tmp_path / "RETFound_cfp_weights.pth"
    torch.save({"model": state, "epoch": 1}, weights)
    train_one_epoch(configs, tmp_path, datalist, encoder="retfound_mae", pretrained_encoder=str(weights))
    source = json.loads((tmp_path / "models" / "encoder_source.json").read_text())["encoders"][0]
    assert source["encoder"] == "retfound_mae" and source["entry"] == "model"
    out = tmp_path / "infer"
    infer = ConfigWorkflow(config_file=str(configs / "inference.json"), workflow_type="infer",
                           dataset_dir=str(Path(tmp_path / "data" / "test")), ckpt_path=str(tmp_path / "models" / "model.pt"),
                           output_dir=str(out), encoder="retfound_mae", **TINY)
    infer.initialize()
    infer.run()
    infer.finalize()
    assert (out / "predictions.csv").is_file()
    # the trained model does not load as another family: its layout is named
    wrong = ConfigWorkflow(config_file=str(configs / "inference.json"), workflow_type="infer",
                           dataset_dir=str(tmp_path / "data" / "test"), ckpt_path=str(tmp_path / "models" / "model.pt"),
                           output_dir=str(tmp_path / "wrong"), **TINY)
    with pytest.raises(SystemExit) as e:  # one line naming the file and the keys (SafeCheckpointLoader)
        wrong.initialize()
        wrong.run()
    assert "model.pt does not fit the bundle's network" in str(e.value) and "fc_norm" in str(e.value)
