"""Networks with more than one input: progression forecasting (image + interval) and per-patient fusion."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from bundle_harness import REPO, TINY
from harness_forecasting import write_forecasting_dataset
from harness_fusion import write_fusion_dataset
from visionfm_core.data import eval_transforms, make_phantom
from visionfm_core.data.multi_input import FusionInputsd, load_forecasting_datalist, load_fusion_datalist
from visionfm_core.metrics import forecasting_metrics
from visionfm_core.models import SinusoidalIntervalEncoding, VisionFMForecastingModel, VisionFMFusionModel
from visionfm_core.models.fusion import _weights_per_modality
from tests_common import assert_close_to_scale

SMALL = {"arch": "vit_tiny", "img_size": 32}


# --- interval encoding and the forecasting network ----------------------------------------------------------------


def test_interval_encoding_distinct_bounded_and_covers_6500_days():
    enc = SinusoidalIntervalEncoding(64)
    days = torch.arange(1, 6501, dtype=torch.float32)
    codes = enc(days)
    assert codes.shape == (6500, 64) and torch.isfinite(codes).all()
    assert codes.abs().max() <= 1.0
    # neighbouring days differ, and the slowest cosine falls monotonically over the whole range: all distinct
    assert (codes[1:] - codes[:-1]).norm(dim=1).min() > 1e-3
    slowest_cos = codes[:, 32]
    assert (slowest_cos[1:] < slowest_cos[:-1]).all() and slowest_cos[-1] == pytest.approx(-1.0, abs=1e-6)
    assert not torch.allclose(enc(torch.tensor([6500.0])), enc(torch.tensor([1.0])))
    assert enc(torch.tensor([[30.0], [60.0]])).shape == (2, 64)  # (B, 1) is read as (B,)
    with pytest.raises(ValueError, match="even number"):
        SinusoidalIntervalEncoding(63)


@pytest.fixture(scope="module")
def pair_model():
    torch.manual_seed(0)
    return VisionFMForecastingModel(pair=True, **SMALL).eval()


def test_pair_mode_shares_the_encoder_and_orders_the_visits(pair_model):
    assert sum(k.startswith("backbone.encoder.") for k in pair_model.state_dict()) > 0
    assert not any("encoder" in k for k in pair_model.state_dict() if not k.startswith("backbone."))
    base, follow = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    days = torch.tensor([365.0, 6500.0])
    with torch.no_grad():
        out = pair_model(torch.cat([base, follow], 1), days)
        swapped = pair_model(torch.cat([follow, base], 1), days)
        other_interval = pair_model(torch.cat([base, follow], 1), torch.tensor([30.0, 30.0]))
        # the batched pass equals encoding each visit on its own
        separate = torch.cat([pair_model.backbone(base), pair_model.backbone(follow)], -1)
        assert_close_to_scale(pair_model.image_features(torch.cat([base, follow], 1)), separate)
    assert out.shape == (2, 1)
    assert not torch.allclose(out, swapped) and not torch.allclose(out, other_interval)
    with pytest.raises(ValueError, match="expected 6 image channels"):
        pair_model(base, days)
    scripted = torch.jit.script(pair_model)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert_close_to_scale(scripted(torch.cat([base, follow], 1), days), out)


def test_forecasting_trains_with_a_frozen_encoder():
    torch.manual_seed(0)
    model = VisionFMForecastingModel(hidden="linear", **SMALL).train()
    logits = model(torch.rand(4, 3, 32, 32), torch.tensor([30.0, 300.0, 3000.0, 6500.0]))
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([10.0]))(logits, torch.tensor([[0.], [1.], [0.], [1.]]))
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="hidden must be 'mlp' or 'linear'"):
        VisionFMForecastingModel(hidden="deep", **SMALL)


def test_forecasting_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 40), rng.random(40)
    m = forecasting_metrics(p, y)
    pred = p >= 0.5
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["aupr"] == pytest.approx(average_precision_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(pred[y == 1].mean())
    assert m["specificity"] == pytest.approx((~pred)[y == 0].mean())
    one_class = forecasting_metrics([0.2, 0.7], [0, 0])
    assert math.isnan(one_class["auroc"]) and math.isnan(one_class["sensitivity"])
    with pytest.raises(ValueError, match="0 or 1"):
        forecasting_metrics([0.2, 0.7], [0, 2])


# --- forecasting datalists: bad input -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forecasting_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    return root, write_forecasting_dataset(root)


def _with(path, split, index, **changes):
    """A copy of the datalist next to it with one entry changed (`...` deletes a key); its path."""
    data = json.loads(open(path).read())
    data[split][index].update(changes)
    for key, value in changes.items():
        if value is ...:
            del data[split][index][key]
    changed = f"{path[:-5]}_changed.json"
    with open(changed, "w") as f:
        json.dump(data, f)
    return changed


@pytest.mark.parametrize("changes, message", [
    ({"interval_days": 0}, r"interval_days 0 is outside \(0, 6500\]"),
    ({"interval_days": 7000}, r"interval_days 7000 is outside \(0, 6500\]"),
    ({"interval_days": "two years"}, "is not a number of days"),
    ({"interval_days": ...}, "has no \"interval_days\""),
    ({"label": 2}, "label 2 is outside 0..1"),
])
def test_forecasting_datalist_errors_name_the_entry_and_image(forecasting_data, changes, message):
    root, path = forecasting_data
    data = _with(path, "training", 3, **changes)
    with pytest.raises(ValueError, match=message) as e:
        load_forecasting_datalist(data, "training")
    assert "'training' entry 3" in str(e.value)


def test_pair_mode_needs_a_followup(forecasting_data):
    root, path = forecasting_data
    entries = load_forecasting_datalist(path, "training", pair=True)
    assert all(e["followup"].endswith("followup.png") and isinstance(e["interval_days"], float) for e in entries)
    data = _with(path, "validation", 2, followup=None)
    assert load_forecasting_datalist(data, "validation")[2]["followup"] == ""  # fine without pair mode
    with pytest.raises(ValueError, match=r"'validation' entry 2 \(image .*validation_02_baseline.png\) has no "
                                         r"\"followup\" image"):
        load_forecasting_datalist(data, "validation", pair=True)
    assert len(load_forecasting_datalist(root, "test")) == 4  # a folder holding datalist.json


# --- fusion network -----------------------------------------------------------------------------------------------


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


# --- fusion data --------------------------------------------------------------------------------------------------


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
        load_fusion_datalist(_with(path, "training", 2, fundus=None, oct=...), "training", ["Fundus", "OCT"])
    with pytest.raises(ValueError, match="Patient P9 has no image at all"):
        FusionInputsd(["Fundus", "OCT"], 32)({"patient_id": "P9", "fundus": "", "oct": None})
    with pytest.raises(ValueError, match=r"'test' entry 1 \(patient test_1\): oct image .*nowhere.png does not exist"):
        load_fusion_datalist(_with(path, "test", 1, oct="nowhere.png"), "test", ["Fundus", "OCT"])
    with pytest.raises(ValueError, match=r"patient validation_0\): label 3 is not an integer class index in 0..2"):
        load_fusion_datalist(_with(path, "validation", 0, label=3), "validation", ["Fundus", "OCT"], num_classes=3)
    with pytest.raises(ValueError, match=r"is for modalities \['Fundus', 'OCT'\], but the network takes "
                                         r"\['Fundus', 'FFA'\]"):
        load_fusion_datalist(path, "test", ["Fundus", "FFA"])


# --- the bundles' inference tables --------------------------------------------------------------------------------


def _infer(bundle: str, dataset: str, tmp, **overrides) -> list[dict]:
    """inference.json with a freshly initialised tiny network saved as the checkpoint; the CSV rows it wrote."""
    folder = REPO / "bundles" / bundle
    cfg = str(folder / "configs" / "inference.json")
    torch.manual_seed(0)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(cfg)
    parser.update({**TINY, **overrides})
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp / "model.pt")
    wf = ConfigWorkflow(config_file=cfg, workflow_type="infer", dataset_dir=dataset, ckpt_path=str(tmp / "model.pt"),
                        output_dir=str(tmp / "out"), **TINY, **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    with open(tmp / "out" / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_fusion_bundle_predicts_every_patient_missing_modalities_included(fusion_data, tmp_path):
    root, path = fusion_data
    fundus = json.loads(open(path).read())["test"][0]["fundus"]
    warn = _with(path, "test", 0, oct=fundus)  # a colour photo under oct: a warning, not a failure
    rows = _infer("multimodal_disease_classification", warn, tmp_path, class_names=["a", "b", "c"])
    assert [r["patient_id"] for r in rows] == [f"test_{i}" for i in range(4)]
    assert [r["present"] for r in rows] == ["fundus+oct", "fundus", "fundus+oct", "oct"]
    assert all(abs(sum(float(r[f"prob_{c}"]) for c in "abc") - 1) < 1e-4 for r in rows)
    assert rows[0]["warning"].startswith("oct: looks like a colour photograph") and rows[1]["warning"] == ""
    assert rows[1]["oct"] == "" and rows[0]["label"] == "0"


def test_forecasting_bundle_writes_probability_per_interval(forecasting_data, tmp_path):
    root, path = forecasting_data
    grey = np.repeat(make_phantom("OCT", 48, 0)[..., :1], 3, axis=2)
    Image.fromarray(grey).save(root / "grey_followup.png")  # a grey scan as a follow-up photo: warned about
    rows = _infer("fundus_glaucoma_forecasting", _with(path, "test", 1, followup="grey_followup.png"), tmp_path,
                  pair=True)
    assert list(rows[0]) == ["image", "followup", "interval_days", "probability", "prediction", "label", "warning"]
    assert len(rows) == 4 and rows[0]["interval_days"] == "6500.0"
    assert all(0 <= float(r["probability"]) <= 1 and r["prediction"] == str(int(float(r["probability"]) >= 0.5))
               for r in rows)
    assert rows[0]["followup"].endswith("test_00_followup.png") and rows[0]["warning"] == ""
    assert rows[1]["warning"].startswith("followup is greyscale")
