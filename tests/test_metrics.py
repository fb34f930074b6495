"""Classification metrics: hand-computed values, absent classes, and the ignite EpochMetric wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from visionfm_core.metrics import METRIC_NAMES, ClassificationMetric, classification_metrics

# 4 samples, 3 classes; argmax predictions [0, 1, 2, 0] against labels [0, 1, 2, 1].
PROBS = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
LABELS = np.array([0, 1, 2, 1])
# By hand:
#   accuracy 3/4.
#   AUROC one-vs-rest: class 0 -> 1, class 2 -> 1, class 1 -> positives {0.7, 0.3} vs negatives {0.1, 0.3}:
#     pairs 0.7>0.1, 0.7>0.3, 0.3>0.1, 0.3=0.3 (half) -> 3.5/4; macro (1 + 0.875 + 1) / 3.
#   AUPR class 1: ranked 0.7 (pos) then the 0.3 tie (1 pos, 1 neg): 0.5 * 1 + 0.5 * 2/3; macro (1 + 5/6 + 1) / 3.
#   quadratic kappa: observed weighted disagreement 1 (one 1->0 error), expected 20/4 -> 1 - 1/5.
#   F1: class 0 2/3, class 1 2/3, class 2 1 -> 7/9.
EXPECTED = {
    "accuracy": 0.75,
    "auroc": (1 + 0.875 + 1) / 3,
    "aupr": (1 + 5 / 6 + 1) / 3,
    "kappa": 0.8,
    "f1": 7 / 9,
}


def test_hand_computed_values():
    got = classification_metrics(PROBS, LABELS)
    assert set(got) == set(METRIC_NAMES)
    for name, value in EXPECTED.items():
        assert got[name] == pytest.approx(value), name
        assert isinstance(got[name], float)


def test_perfect_predictions_and_tensor_inputs():
    labels = torch.tensor([0, 1, 2, 3, 4, 2])
    probs = torch.nn.functional.one_hot(labels, 5).float() * 0.9 + 0.02
    got = classification_metrics(probs, labels)
    assert got == {"accuracy": 1.0, "auroc": 1.0, "aupr": 1.0, "kappa": 1.0, "f1": 1.0}
    assert classification_metrics(probs, torch.nn.functional.one_hot(labels, 5)) == got  # one-hot labels


def test_absent_classes_are_skipped():
    # 3 classes but class 2 never appears in the labels: macro over classes 0 and 1 only, no crash
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1]])
    labels = np.array([0, 0, 1, 1])
    got = classification_metrics(probs, labels)
    # class 0: positives {0.7, 0.4} vs negatives {0.2, 0.1} -> 1; class 1: positives {0.3, 0.8} vs {0.2, 0.5} -> 3/4
    assert got["auroc"] == pytest.approx((1 + 0.75) / 2)
    assert got["accuracy"] == pytest.approx(0.5)

    single = classification_metrics(probs, np.array([1, 1, 1, 1]))
    assert math.isnan(single["auroc"]) and math.isnan(single["aupr"])
    assert single["accuracy"] == pytest.approx(0.5)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"labels must be in 0..2"):
        classification_metrics(PROBS, np.array([0, 1, 3, 1]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        classification_metrics(PROBS[:, 0], LABELS)


def run_engine(batches, names=METRIC_NAMES, **kwargs) -> dict:
    engine = Engine(lambda e, batch: batch)
    for name in names:
        ClassificationMetric(name, **kwargs).attach(engine, name)
    return engine.run(batches, max_epochs=2).metrics  # 2 epochs: state is reset between epochs


def test_ignite_metric_matches_function():
    probs, labels = torch.tensor(PROBS, dtype=torch.float32), torch.tensor(LABELS)
    batches = [(probs[:3], labels[:3]), (probs[3:], labels[3:])]
    metrics = run_engine(batches)
    for name, value in EXPECTED.items():
        assert metrics[name] == pytest.approx(value), name

    onehot = [(p, torch.nn.functional.one_hot(y, 3).float()) for p, y in batches]  # AsDiscrete(to_onehot) labels
    assert run_engine(onehot) == pytest.approx(metrics)


def test_ignite_metric_with_monai_style_outputs():
    # MONAI evaluators output decollated per-sample dicts; from_engine-style transforms give per-sample lists
    probs, labels = torch.tensor(PROBS, dtype=torch.float32), torch.tensor(LABELS)
    outputs = [[{"pred": p, "label": y} for p, y in zip(probs, labels)]]

    def from_engine(items):
        return [d["pred"] for d in items], [d["label"] for d in items]

    metrics = run_engine(outputs, names=["auroc", "kappa"], output_transform=from_engine)
    assert metrics["auroc"] == pytest.approx(EXPECTED["auroc"]) and metrics["kappa"] == pytest.approx(0.8)


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="Unknown classification metric 'auc'.*accuracy, auroc, aupr, kappa, f1"):
        ClassificationMetric("auc")
