"""Networks with more than one input: progression forecasting (image + interval) and per-patient fusion."""

import json

import pytest
import torch

from visionfm_core.data import eval_transforms
from visionfm_core.tasks.fusion import (
    FusionInputsd,
    VisionFMFusionModel,
    load_fusion_datalist,
)
from visionfm_core.tasks.fusion.model import _weights_per_modality

from bundle_harness import infer_with_random_weights
from harness_fusion import write_fusion_dataset
from tests_common import assert_close_to_scale, datalist_with_change

SMALL = {"arch": "vit_tiny", "img_size": 32}


@pytest.fixture(scope="module")
def fusion_models():
    models = {}
    for fusion in ("concat", "attention", "pooled"):
        torch.manual_seed(0)
        models[fusion] = VisionFMFusionModel(3, fusion=fusion, fusion_dim=32, modality_dropout=0.5, **SMALL)
    return models


PRESENT = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize("fusion", ["concat", "attention", "pooled"])
def test_fusion_forward_backward_and_absent_pixels_do_not_matter(fusion_models, fusion):
    model = fusion_models[fusion]
    x = torch.rand(3, 6, 32, 32)
    changed = x.clone()
    changed[1, 3:] = 100 * torch.randn(3, 32, 32)  # patient 1 has no OCT, patient 2 no fundus
    changed[2, :3] = -7.0
    for training in (True, False):
        model.train(training)
        torch.manual_seed(1)  # the same modality dropout draws for both inputs
        out = model(x, PRESENT)
        torch.manual_seed(1)
        out_changed = model(changed, PRESENT.bool())
        assert out.shape == (3, 3) and torch.isfinite(out).all()
        assert_close_to_scale(out, out_changed, msg=f"{fusion}, training={training}")
    model.train()
    torch.nn.functional.cross_entropy(model(x, PRESENT), torch.tensor([0, 1, 2])).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert all(p.grad is None for enc in model.encoders for p in enc.parameters())  # frozen encoders
    model.zero_grad()


@pytest.mark.parametrize("fusion", ["attention", "pooled"])  # concat: scripted and exported in test_bundles.py
def test_fusion_modes_script(fusion_models, fusion):
    model = fusion_models[fusion].eval()
    x = torch.rand(3, 6, 32, 32)
    scripted = torch.jit.script(model)
    with torch.no_grad(), torch.jit.optimized_execution(False):  # no profiling runs: the same result, faster
        assert_close_to_scale(scripted(x, PRESENT), model(x, PRESENT))


def test_modality_dropout_never_drops_every_present_modality(fusion_models):
    model = fusion_models["concat"].train()
    present = torch.tensor([[True, True], [True, False], [False, True]]).repeat(200, 1)
    torch.manual_seed(0)
    kept = model._kept(present)
    assert (kept.sum(1) >= 1).all() and not (kept & ~present).any()
    assert (kept != present).any()  # something was dropped
    assert torch.equal(model.eval()._kept(present), present)  # never at evaluation


def test_pooled_mode_averages_one_shared_head_over_present_modalities(fusion_models):
    model = fusion_models["pooled"].eval()
    x = torch.rand(2, 6, 32, 32)
    with torch.no_grad():
        features = model.encode(x)
        per_modality = [model.head(f) for f in features]
        out = model(x, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    assert_close_to_scale(out[0], (per_modality[0][0] + per_modality[1][0]) / 2)
    assert_close_to_scale(out[1], per_modality[0][1])


def test_fusion_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="fusion must be one of concat, attention, pooled"):
        VisionFMFusionModel(2, fusion="sum", **SMALL)
    with pytest.raises(ValueError, match="one encoder weights file per modality"):
        _weights_per_modality("/w/fundus.pt", ["Fundus", "OCT"])
    with pytest.raises(ValueError, match=r"not among the modalities \['Fundus', 'OCT'\]"):
        _weights_per_modality({"FFA": "/w/ffa.pt"}, ["Fundus", "OCT"])
    assert _weights_per_modality({"fundus": "/w/f.pt"}, ["Fundus", "OCT"]) == {"Fundus": "/w/f.pt", "OCT": None}
    assert _weights_per_modality(["/w/f.pt", None], ["Fundus", "OCT"]) == {"Fundus": "/w/f.pt", "OCT": None}


@pytest.fixture(scope="module")
def fusion_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    return root, write_fusion_dataset(root, num_classes=3, size=40)


def test_fusion_inputs_load_normalise_and_flag_each_modality(fusion_data):
    root, path = fusion_data
    entries = load_fusion_datalist(path, "training", ["Fundus", "OCT"], num_classes=3)
    assert entries[1]["oct"] == "" and entries[3]["fundus"] == "" and entries[0]["oct"].endswith(".png")
    transform = FusionInputsd(["Fundus", "OCT"], 32)
    both, no_oct, no_fundus = transform(entries[0]), transform(entries[1]), transform(entries[3])
    assert both["image"].shape == (6, 32, 32) and both["present"].tolist() == [1.0, 1.0]
    assert no_oct["present"].tolist() == [1.0, 0.0] and (no_oct["image"][3:] == 0).all()
    assert no_fundus["present"].tolist() == [0.0, 1.0] and (no_fundus["image"][:3] == 0).all()
    # each modality exactly as its own bundle would read and normalise it
    for m, key, channels in (("Fundus", "fundus", slice(0, 3)), ("OCT", "oct", slice(3, 6))):
        expected = eval_transforms(m, 32, keys="image")({"image": entries[0][key]})["image"]
        assert torch.allclose(both["image"][channels], torch.as_tensor(expected), atol=1e-5)
    assert both["modality_warning"] == ""
    # a colour photo where the OCT goes: predicted anyway, with a warning naming the key
    wrong = dict(entries[0], oct=entries[0]["fundus"])
    assert transform(wrong)["modality_warning"].startswith("oct: looks like a colour photograph")


def test_fusion_datalist_errors(fusion_data):
    root, path = fusion_data
    with pytest.raises(ValueError, match=r"'training' entry 2 \(patient training_2\) has no image at all"):
        load_fusion_datalist(datalist_with_change(path, "training", 2, fundus=None, oct=...), "training", ["Fundus", "OCT"])
    with pytest.raises(ValueError, match="Patient P9 has no image at all"):
        FusionInputsd(["Fundus", "OCT"], 32)({"patient_id": "P9", "fundus": "", "oct": None})
    with pytest.raises(ValueError, match=r"'test' entry 1 \(patient test_1\): oct image .*nowhere.png does not exist"):
        load_fusion_datalist(datalist_with_change(path, "test", 1, oct="nowhere.png"), "test", ["Fundus", "OCT"])
    with pytest.raises(ValueError, match=r"patient validation_0\): label 3 is not an integer class index in 0..2"):
        load_fusion_datalist(datalist_with_change(path, "validation", 0, label=3), "validation", ["Fundus", "OCT"], num_classes=3)
    with pytest.raises(ValueError, match=r"is for modalities \['Fundus', 'OCT'\], but the network takes "
                                         r"\['Fundus', 'FFA'\]"):
        load_fusion_datalist(path, "test", ["Fundus", "FFA"])


def test_fusion_bundle_predicts_every_patient_missing_modalities_included(fusion_data, tmp_path):
    root, path = fusion_data
    fundus = json.loads(open(path).read())["test"][0]["fundus"]
    warn = datalist_with_change(path, "test", 0, oct=fundus)  # a colour photo under oct: a warning, not a failure
    rows = infer_with_random_weights("multimodal_disease_classification", warn, tmp_path, class_names=["a", "b", "c"])
    assert [r["patient_id"] for r in rows] == [f"test_{i}" for i in range(4)]
    assert [r["present"] for r in rows] == ["fundus+oct", "fundus", "fundus+oct", "oct"]
    assert all(abs(sum(float(r[f"prob_{c}"]) for c in "abc") - 1) < 1e-4 for r in rows)
    assert rows[0]["warning"].startswith("oct: looks like a colour photograph") and rows[1]["warning"] == ""
    assert rows[1]["oct"] == "" and rows[0]["label"] == "0"
