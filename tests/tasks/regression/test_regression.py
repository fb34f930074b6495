"""Multi-task head and biomarker regression: masked losses, metrics against scikit-learn/scipy, standardisation
statistics restored at inference, and the bad-input errors."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.bundle import run
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from visionfm_core.models import VisionFMTaskModel
from visionfm_core.tasks.multitask import MultiTaskLabelsd
from visionfm_core.tasks.regression import (
    RegressionMetric,
    RegressionTargetsd,
    StandardisedSmoothL1Loss,
    load_regression_datalist,
    regression_metrics,
    target_stats,
    trained_targets,
)

from bundle_harness import REPO, TINY, config
from harness_multitask import write_images
from harness_regression import write_regression_dataset

REGRESSION = REPO / "bundles" / "fundus_biomarker_regression"


def test_regression_metrics_match_sklearn_and_scipy_with_missing_targets_masked():
    from scipy.stats import pearsonr

    rng = np.random.default_rng(0)
    y = np.stack([rng.normal(60, 10, 50), rng.normal(6, 1, 50), rng.normal(130, 15, 50)], axis=1)
    pred = y + rng.normal(0, [5, 0.5, 10], (50, 3))
    y[rng.random((50, 3)) < 0.3] = np.nan
    y[0] = [np.nan, 5.0, 0.0]  # a row with one target missing still counts for the others; y == 0 skipped in MRE
    metrics = regression_metrics(pred, y, ["age", "hba1c", "sbp"])
    for j, name in enumerate(["age", "hba1c", "sbp"]):
        k = ~np.isnan(y[:, j])
        assert metrics[f"{name}_num_values"] == k.sum()
        assert metrics[f"{name}_mae"] == pytest.approx(mean_absolute_error(y[k, j], pred[k, j]))
        assert metrics[f"{name}_rmse"] == pytest.approx(math.sqrt(mean_squared_error(y[k, j], pred[k, j])))
        assert metrics[f"{name}_r2"] == pytest.approx(r2_score(y[k, j], pred[k, j]))
        assert metrics[f"{name}_pearson_r"] == pytest.approx(pearsonr(y[k, j], pred[k, j])[0])
        nz = k & (y[:, j] != 0)
        assert metrics[f"{name}_mean_relative_error"] == pytest.approx(
            np.mean(np.abs(pred[nz, j] - y[nz, j]) / np.abs(y[nz, j])))
        assert metrics[f"{name}_normalised_mae"] == pytest.approx(
            np.mean(np.abs(pred[k, j] - y[k, j])) / np.mean(y[k, j]))
    assert metrics["hba1c_num_values"] == (~np.isnan(y[:, 1])).sum()  # row 0 was not dropped for hba1c
    assert metrics["macro_r2"] == pytest.approx(np.mean([metrics[f"{n}_r2"] for n in ["age", "hba1c", "sbp"]]))

    metric = RegressionMetric("macro_r2", target_names=["age", "hba1c", "sbp"])
    engine = Engine(lambda e, b: b)
    metric.attach(engine, "r2")
    batches = [(torch.as_tensor(pred[i:i + 16]), torch.as_tensor(y[i:i + 16])) for i in range(0, 50, 16)]
    assert engine.run(batches).metrics["r2"] == pytest.approx(metrics["macro_r2"])



def test_normalised_mae_is_the_original_ratio_of_means_not_the_mean_ratio():
    """y = 1, 10, 100, each predicted 1 too high: mean|e| / mean(y) = 1 / 37, mean(|e| / |y|) = 0.37."""
    metrics = regression_metrics(np.array([2.0, 11.0, 101.0]), np.array([1.0, 10.0, 100.0]), ["v"])
    assert metrics["v_normalised_mae"] == pytest.approx(1 / 37)
    assert metrics["v_mean_relative_error"] == pytest.approx((1 + 0.1 + 0.01) / 3)
    assert math.isnan(regression_metrics(np.array([1.0, -1.0]), np.array([2.0, -2.0]), ["v"])["v_normalised_mae"])

def test_standardised_loss_masks_missing_targets():
    torch.manual_seed(0)
    net = VisionFMTaskModel("regression", 3, arch="vit_tiny", img_size=32)
    net.head.set_target_stats([60.0, 6.0, 130.0], [10.0, 1.0, 15.0])
    loss_fn = StandardisedSmoothL1Loss(net)
    pred = torch.tensor([[62.0, 6.5, 120.0], [50.0, 7.0, 140.0]], requires_grad=True)
    target = torch.tensor([[70.0, float("nan"), 125.0], [float("nan"), float("nan"), 150.0]])
    mean, std = net.head.target_mean, net.head.target_std
    k = ~torch.isnan(target)
    expected = F.smooth_l1_loss(((pred - mean) / std)[k], ((target - mean) / std)[k])
    assert torch.allclose(loss_fn(pred, target), expected)
    empty = loss_fn(pred, torch.full((2, 3), float("nan")))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(pred.grad).all()
    # the network outputs values in units: z * std + mean, z from the layers
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        z = net.eval().head.layers(torch.cat(net.encode(x), dim=-1))
        assert torch.allclose(net(x), z * std + mean)
    assert {"head.target_mean", "head.target_std"} <= set(net.state_dict())


@pytest.fixture(scope="module")
def trained_regression(tmp_path_factory):
    """The regression bundle trained one epoch on two custom targets whose test values lie far from training's."""
    root = tmp_path_factory.mktemp("regression")
    targets = {"axial_length": ("mm", 24.0, 1.0), "iop": ("mmHg", 15.0, 3.0)}
    datalist = write_regression_dataset(root / "data", targets=targets, counts=(8, 4, 4))
    data = json.loads(open(datalist).read())
    for entry in data["test"] + data["validation"]:  # statistics must come from the training split only
        entry["targets"] = {k: (v + 1000 if v is not None else None) for k, v in entry["targets"].items()}
    open(datalist, "w").write(json.dumps(data))
    common = dict(**TINY, dataset_dir=str(root / "data"), datalist=datalist, ckpt_dir=str(root / "models"))
    run(config_file=config(REGRESSION, "train"), output_dir=str(root / "runs"), **common,
        **{"train::trainer::max_epochs": 1})
    run(config_file=config(REGRESSION, "inference"), **TINY, dataset_dir=str(root / "data" / "images" / "test"),
        ckpt_path=str(root / "models" / "model.pt"), output_dir=str(root / "infer"))
    return root, data


def test_standardisation_stats_restored_at_inference(trained_regression):
    root, data = trained_regression
    names = ["axial_length", "iop"]
    mean, std = target_stats(data["training"], names)
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert torch.allclose(state["head.target_mean"], torch.tensor(mean)), "stats are the training split's"
    assert torch.allclose(state["head.target_std"], torch.tensor(std))
    saved = json.loads((root / "models" / "targets.json").read_text())
    assert saved["target_names"] == names and saved["target_units"] == ["mm", "mmHg"]
    assert trained_targets(root / "models" / "model.pt") == {"names": names, "units": ["mm", "mmHg"]}
    # inference knew K = 2 and the names from models/targets.json, not the datalist, and predicts in units
    lines = (root / "infer" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "image,axial_length [mm],iop [mmHg],warning"
    values = np.array([[float(v) for v in line.split(",")[1:3]] for line in lines[1:]])
    assert len(values) == 4
    assert np.all(np.abs(values - np.array(mean)) < 5 * np.array(std)), values  # near the training mean in units
    records = json.loads((root / "infer" / "predictions.json").read_text())
    assert records[0]["units"] == {"axial_length": "mm", "iop": "mmHg"} and records[0]["warning"] == ""


def test_targets_transform_masks_missing():
    out = RegressionTargetsd(keys="targets", target_names=["a", "b", "c"])({"image": "x.png", "targets": {"a": 1,
                                                                                                       "c": None}})
    assert "targets" not in out and torch.equal(torch.isnan(out["label"]), torch.tensor([False, True, True]))
    labels = MultiTaskLabelsd(keys="labels")({"image": "x.png", "labels": {"dr_grade": 3, "amd": True}})["label"]
    assert labels.tolist() == [3, -1, -1, 1, -1, -1, -1, -1, -1]
    assert MultiTaskLabelsd(keys="labels")({"image": "x.png"})["label"].tolist() == [-1] * 9


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    write_images(folder, 2, seed=3)
    return folder


@pytest.mark.parametrize("targets, split, message", [
    ({"age": "sixty"}, "test", r"'test' entry 1 \(.*img_3_001.png\): target 'age' = 'sixty' is not a finite number"),
    ({"age": 60, "weight": 70}, "test", r"entry 1 .*unknown target name\(s\) \['weight'\]"),
    ({"age": None}, "training", r"'training' entry 1 \(.*img_3_001.png\): every target .* is missing"),
    ({"age": True}, "test", r"target 'age' = True is not a finite number"),
])
def test_regression_bad_input(image_dir, targets, split, message):
    datalist = {split: [{"image": str(image_dir / "img_3_000.png"), "targets": {"age": 61.0, "hba1c": 6.0}},
                        {"image": str(image_dir / "img_3_001.png"), "targets": targets}]}
    with pytest.raises(ValueError, match=message):
        load_regression_datalist(datalist, split, ["age", "hba1c"])


def test_regression_target_without_training_values(image_dir):
    datalist = {"training": [{"image": str(image_dir / "img_3_000.png"), "targets": {"age": 61.0}}]}
    with pytest.raises(ValueError, match=r"target\(s\) \['hba1c'\] have no value in the training split"):
        load_regression_datalist(datalist, "training", ["age", "hba1c"])
