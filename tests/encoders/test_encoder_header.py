"""The header of encoder.pt is checked by the task models (modality, architecture, patch size), and a frozen encoder
with random weights is said loudly and written into the run's outputs (encoder_source.json)."""

import json
import logging
import warnings

import pytest
import torch
from ignite.engine import Engine

from visionfm_core import build_encoder
from visionfm_core.tasks.fusion import VisionFMFusionModel
from visionfm_core.models import VisionFMTaskModel
from visionfm_core.engine.run_notes import EncoderSourceNote
from visionfm_core.ssl import IBOTRecipe, PretrainingCheckpoint
from visionfm_core.encoders import WeightsError, save_encoder_weights

TINY = {"arch": "vit_tiny", "img_size": 32}


@pytest.fixture(scope="module")
def pretrained_encoder(tmp_path_factory):
    """models/encoder.pt as a Fundus pretraining run writes it (PretrainingCheckpoint's export of the teacher)."""
    models = tmp_path_factory.mktemp("fundus_pretraining") / "models"
    torch.manual_seed(3)
    teacher = build_encoder("vit_tiny", img_size=32)
    engine = Engine(lambda e, batch: None)
    engine.recipe, engine.modality = IBOTRecipe(arch="vit_tiny", image_size=32, epochs=1), "Fundus"
    engine.checkpoint_dict = lambda: {"trainer": engine, "teacher": teacher}
    PretrainingCheckpoint(str(models)).attach(engine)
    engine.run([0], max_epochs=1)
    return models / "encoder.pt", teacher


def test_another_modality_of_a_pretraining_export_is_refused(pretrained_encoder):
    path, teacher = pretrained_encoder
    with pytest.raises(WeightsError) as info:
        VisionFMTaskModel("classification", 2, modality="OCT", pretrained=str(path), **TINY)
    message = str(info.value)
    assert str(path) in message and "Fundus" in message and "OCT" in message and "allow_modality_mismatch" in message
    model = VisionFMTaskModel("classification", 2, modality="OCT", pretrained=str(path),
                              allow_modality_mismatch=True, **TINY)  # the explicit override
    assert torch.equal(model.encoder.cls_token, teacher.cls_token)
    model = VisionFMTaskModel("classification", 2, modality="fundus", pretrained=str(path), **TINY)
    source = model.encoder_source
    assert source["weights"] == str(path) and source["declared_modality"] == "Fundus"
    assert {k: source["header"][k] for k in ("modality", "arch", "patch_size", "epoch")} == {
        "modality": "Fundus", "arch": "vit_tiny", "patch_size": 16, "epoch": 1}


def test_another_architecture_or_patch_size_in_the_header_is_refused_naming_both(tmp_path, pretrained_encoder):
    path, _ = pretrained_encoder
    with pytest.raises(WeightsError, match=r"encoder.pt holds an encoder of architecture vit_tiny \(this model: "
                                           r"vit_small\), according to its header.*--arch vit_tiny --patch_size 16"):
        VisionFMTaskModel("classification", 2, arch="vit_small", img_size=32, modality="Fundus", pretrained=str(path))
    p8 = tmp_path / "p8.pt"  # the header alone decides here (the tensors would fit)
    save_encoder_weights(build_encoder("vit_tiny", img_size=32), p8, modality="Fundus", arch="vit_tiny", patch_size=8)
    with pytest.raises(WeightsError, match=r"p8.pt holds an encoder of patch size 8 \(this model: 16\)"):
        VisionFMTaskModel("classification", 2, modality="Fundus", pretrained=str(p8), **TINY)


def test_a_frozen_random_encoder_is_warned_about_once_when_training_starts(caplog):
    model = VisionFMTaskModel("classification", 2, modality="Fundus", **TINY)
    assert model.encoder_source["weights"] is None and model.has_random_frozen_encoder()
    model.eval()  # inference and evaluation build the same network and load model.pt: no warning there
    with caplog.at_level(logging.WARNING, logger="visionfm_core.models.task"), \
            pytest.warns(UserWarning, match="Fundus encoder is frozen and has no pretrained weights"):
        model.train()
    assert "random features" in caplog.text and "--pretrained_encoder" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.train()  # once is enough
        VisionFMTaskModel("classification", 2, freeze_encoder=False, **TINY).train()  # fine-tuned: it learns
        trained = VisionFMTaskModel("classification", 2, **TINY)
        trained.load_state_dict(model.state_dict())  # e.g. a trained model.pt: the encoder has its weights
        trained.train()
        later = VisionFMTaskModel("classification", 2, **TINY)
        later.encoder.load_state_dict(build_encoder("vit_tiny", img_size=32).state_dict())
        later.train()
    assert "loaded" in trained.encoder_source and not trained.has_random_frozen_encoder()
    torch.jit.script(model)  # the provenance is no part of the scripted network


def test_encoder_source_note_is_written_into_the_run(tmp_path, pretrained_encoder):
    path, _ = pretrained_encoder
    network = VisionFMFusionModel(2, modalities=("Fundus", "OCT"), pretrained={"Fundus": str(path)},
                                  fusion_dim=16, **TINY)
    engine = Engine(lambda e, batch: None)
    EncoderSourceNote(str(tmp_path / "models"), network).attach(engine)
    with pytest.warns(UserWarning, match="OCT encoder is frozen"):
        engine.run([0], max_epochs=1)
    notes = json.loads((tmp_path / "models" / "encoder_source.json").read_text())["encoders"]
    fundus, oct_ = notes
    assert fundus["module"] == "encoders.0" and fundus["weights"] == str(path) and len(fundus["sha256"]) == 64
    assert fundus["header"]["modality"] == "Fundus" and fundus["freeze_encoder"] and "warning" not in fundus
    assert oct_["weights"] is None and oct_["initialisation"] == "random initialisation"
    assert "random features" in oct_["warning"]
