"""Metrics: classification (hand-computed values, absent classes, the ignite EpochMetric wrapper), segmentation
(Dice, clDice, pixel metrics inside the FOV) and landmarks (mean radial error)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from visionfm_core.tasks.classification import (
    BINARY_METRIC_NAMES,
    METRIC_NAMES,
    ClassificationMetric,
    classification_metrics,
)

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
    with pytest.raises(ValueError, match="Unknown classification metric 'sensitivity_at_90_sensitivity'"):
        ClassificationMetric("sensitivity_at_90_sensitivity")


def binary_case(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    score[:6] = 0.5  # ties
    return np.stack([1 - score, score], axis=1), y, score


def test_binary_metrics_against_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    probs, y, score = binary_case()
    got = classification_metrics(probs, y)
    assert set(got) == set(METRIC_NAMES) | set(BINARY_METRIC_NAMES)
    assert got["auroc"] == pytest.approx(roc_auc_score(y, score))
    # the positive class's average precision, not a macro over both classes
    assert got["aupr"] == pytest.approx(average_precision_score(y, score))
    macro = (average_precision_score(y, score) + average_precision_score(1 - y, 1 - score)) / 2
    assert got["aupr"] != pytest.approx(macro)
    fpr, tpr, _ = roc_curve(y, score)
    assert got["sensitivity_at_90_specificity"] == pytest.approx(tpr[1 - fpr >= 0.9].max())
    assert got["specificity_at_90_sensitivity"] == pytest.approx((1 - fpr)[tpr >= 0.9].max())
    pred = probs.argmax(1) == 1
    assert got["sensitivity"] == pytest.approx((pred & (y == 1)).sum() / (y == 1).sum())
    assert got["specificity"] == pytest.approx((~pred & (y == 0)).sum() / (y == 0).sum())
    other = classification_metrics(probs, y, fixed_specificity=0.8, fixed_sensitivity=0.95)
    assert other["sensitivity_at_80_specificity"] == pytest.approx(tpr[1 - fpr >= 0.8].max())
    assert other["specificity_at_95_sensitivity"] == pytest.approx((1 - fpr)[tpr >= 0.95].max())


def test_binary_metrics_by_hand_and_undefined_cases():
    # scores of positives 0.9, 0.6, 0.3 and negatives 0.7, 0.2, 0.1, 0.05, 0.01
    score = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05, 0.01])
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    got = classification_metrics(np.stack([1 - score, score], 1), y)
    # specificity >= 0.9 allows no false positive (1 of 5 = 0.8): threshold 0.9 -> sensitivity 1/3
    assert got["sensitivity_at_90_specificity"] == pytest.approx(1 / 3)
    # sensitivity >= 0.9 needs all 3 positives: threshold 0.3 -> negatives above it: 0.7 -> specificity 4/5
    assert got["specificity_at_90_sensitivity"] == pytest.approx(0.8)
    assert got["sensitivity"] == pytest.approx(2 / 3) and got["specificity"] == pytest.approx(0.8)
    only_negatives = classification_metrics(np.stack([1 - score, score], 1), np.zeros(8, int))
    assert math.isnan(only_negatives["sensitivity"]) and math.isnan(only_negatives["sensitivity_at_90_specificity"])
    assert only_negatives["specificity"] == pytest.approx(5 / 8)  # 0.9, 0.7, 0.6 are called positive
    with pytest.raises(ValueError, match="fixed_specificity must be in"):
        classification_metrics(np.stack([1 - score, score], 1), y, fixed_specificity=90)


def _brute_force_fixed_points(score, positive, level=0.90):
    """Every decision threshold (each distinct score, and one above them all): the best sensitivity whose
    specificity reaches `level`, and the best specificity whose sensitivity reaches it."""
    best_sens = best_spec = 0.0
    for t in [*np.unique(score), np.inf]:
        called = score >= t
        sens, spec = called[positive].mean(), (~called[~positive]).mean()
        if spec >= level - 1e-12:
            best_sens = max(best_sens, sens)
        if sens >= level - 1e-12:
            best_spec = max(best_spec, spec)
    return best_sens, best_spec


def test_fixed_operating_points_equal_a_search_over_every_threshold_with_ties():
    """Tied scores put several ROC points on one line; the best one at 90 % must not be dropped with them."""
    rng = np.random.default_rng(0)
    for case in range(400):
        n = int(rng.integers(12, 60))
        positive = rng.random(n) < rng.uniform(0.2, 0.8)
        if positive.all() or not positive.any():
            continue
        score = rng.integers(0, int(rng.integers(2, 8)), n) / 8.0  # few distinct values: many ties
        got = classification_metrics(np.stack([1 - score, score], 1), positive.astype(int))
        sens, spec = _brute_force_fixed_points(score, positive)
        assert got["sensitivity_at_90_specificity"] == pytest.approx(sens), case
        assert got["specificity_at_90_sensitivity"] == pytest.approx(spec), case


def test_ignite_metric_binary_names():
    probs, y, _ = binary_case()
    batches = [(torch.tensor(probs[:25], dtype=torch.float32), torch.tensor(y[:25])),
               (torch.tensor(probs[25:], dtype=torch.float32), torch.tensor(y[25:]))]
    names = ["auroc", "sensitivity", "specificity_at_90_sensitivity", "sensitivity_at_95_specificity"]
    got = run_engine(batches, names=names)
    expected = classification_metrics(probs.astype(np.float32), y, fixed_specificity=0.95)
    for name in names:
        assert got[name] == pytest.approx(expected[name], abs=1e-6), name
    with pytest.raises(ValueError, match="binary tasks only"):  # a binary name on a 3-class task
        run_engine([(torch.tensor(PROBS, dtype=torch.float32), torch.tensor(LABELS))], names=["sensitivity"])
