"""Networks with more than one input: progression forecasting (image + interval) and per-patient fusion."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    roc_auc_score,
)

from visionfm_core.data import make_phantom
from visionfm_core.tasks.forecasting import (
    SinusoidalIntervalEncoding,
    VisionFMForecastingModel,
    forecasting_metrics,
    load_forecasting_datalist,
)

from bundle_harness import infer_with_random_weights
from harness_forecasting import write_forecasting_dataset
from tests_common import assert_close_to_scale, datalist_with_change

SMALL = {"arch": "vit_tiny", "img_size": 32}


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


def test_the_original_feature_is_the_mean_of_the_last_blocks_patch_tokens():
    torch.manual_seed(0)
    model = VisionFMForecastingModel(pair=True, feature="patch_mean", **SMALL).eval()
    base, follow = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = model.image_features(torch.cat([base, follow], 1))
        encoder = model.backbone.encoder
        expected = torch.cat([encoder.forward_features(base)[:, 1:].mean(1),
                              encoder.forward_features(follow)[:, 1:].mean(1)], -1)
        logits = model(torch.cat([base, follow], 1), torch.tensor([30.0, 90.0]))
    assert features.shape == (2, 2 * 192) and logits.shape == (2, 1)
    assert_close_to_scale(features, expected)
    scripted = torch.jit.script(model)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert_close_to_scale(scripted(torch.cat([base, follow], 1), torch.tensor([30.0, 90.0])), logits)
    with pytest.raises(ValueError, match="feature must be one of cls, patch_mean"):
        VisionFMForecastingModel(feature="mean", **SMALL)

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


@pytest.fixture(scope="module")
def forecasting_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    return root, write_forecasting_dataset(root)


@pytest.mark.parametrize("changes, message", [
    ({"interval_days": 0}, r"interval_days 0 is outside \(0, 6500\]"),
    ({"interval_days": 7000}, r"interval_days 7000 is outside \(0, 6500\]"),
    ({"interval_days": "two years"}, "is not a number of days"),
    ({"interval_days": ...}, "has no \"interval_days\""),
    ({"label": 2}, "label 2 is outside 0..1"),
])
def test_forecasting_datalist_errors_name_the_entry_and_image(forecasting_data, changes, message):
    root, path = forecasting_data
    data = datalist_with_change(path, "training", 3, **changes)
    with pytest.raises(ValueError, match=message) as e:
        load_forecasting_datalist(data, "training")
    assert "'training' entry 3" in str(e.value)


def test_pair_mode_needs_a_followup(forecasting_data):
    root, path = forecasting_data
    entries = load_forecasting_datalist(path, "training", pair=True)
    assert all(e["followup"].endswith("followup.png") and isinstance(e["interval_days"], float) for e in entries)
    data = datalist_with_change(path, "validation", 2, followup=None)
    assert load_forecasting_datalist(data, "validation")[2]["followup"] == ""  # fine without pair mode
    with pytest.raises(ValueError, match=r"'validation' entry 2 \(image .*validation_02_baseline.png\) has no "
                                         r"\"followup\" image"):
        load_forecasting_datalist(data, "validation", pair=True)
    assert len(load_forecasting_datalist(root, "test")) == 4  # a folder holding datalist.json


def test_forecasting_bundle_writes_probability_per_interval(forecasting_data, tmp_path):
    root, path = forecasting_data
    grey = np.repeat(make_phantom("OCT", 48, 0)[..., :1], 3, axis=2)
    Image.fromarray(grey).save(root / "grey_followup.png")  # a grey scan as a follow-up photo: warned about
    rows = infer_with_random_weights("fundus_glaucoma_forecasting", datalist_with_change(path, "test", 1, followup="grey_followup.png"), tmp_path,
                  pair=True)
    assert list(rows[0]) == ["image", "followup", "interval_days", "probability", "prediction", "label", "warning"]
    assert len(rows) == 4 and rows[0]["interval_days"] == "6500.0"
    assert all(0 <= float(r["probability"]) <= 1 and r["prediction"] == str(int(float(r["probability"]) >= 0.5))
               for r in rows)
    assert rows[0]["followup"].endswith("test_00_followup.png") and rows[0]["warning"] == ""
    assert rows[1]["warning"].startswith("followup is greyscale")
