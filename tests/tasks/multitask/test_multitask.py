"""Multi-task head and biomarker regression: masked losses, metrics against scikit-learn/scipy, standardisation
statistics restored at inference, and the bad-input errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from sklearn.metrics import f1_score, roc_auc_score

from visionfm_core.tasks.multitask import (
    MULTITASK_TASKS,
    MultiTaskLoss,
    MultiTaskMetric,
    MultiTaskProbabilitiesd,
    load_multitask_datalist,
    multitask_metrics,
)

from harness_multitask import write_images
from tests_common import assert_close_to_scale


def random_multitask(n=40, seed=0, missing=0.3):
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(size=(n, 13)).astype(np.float32))
    labels = np.concatenate([rng.integers(0, 5, (n, 1)), rng.integers(0, 2, (n, 8))], axis=1).astype(np.float32)
    labels[rng.random((n, 9)) < missing] = -1
    labels[:5, 0] = np.arange(5)[:n]  # every grade present
    return logits, torch.from_numpy(labels)


def test_masked_loss_equals_the_loss_over_present_labels():
    logits, labels = random_multitask(12)
    weights = [1, 2, 1, 1, 5, 1, 1, 3]
    loss = MultiTaskLoss(grade_weight=5.0, binary_weights=weights)(logits, labels)
    known = labels[:, 0] >= 0
    expected = 5.0 * F.cross_entropy(logits[known, :5], labels[known, 0].long())
    for t in range(8):
        k = labels[:, 1 + t] >= 0
        expected = expected + weights[t] * F.binary_cross_entropy_with_logits(logits[k, 5 + t], labels[k, 1 + t])
    assert_close_to_scale(loss, expected)

    # a task (and the grade) with no label in the batch contributes 0, never NaN; gradients stay finite
    labels[:, 0] = -1
    labels[:, 3] = -1
    logits.requires_grad_(True)
    loss = MultiTaskLoss()(logits, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, :5] == 0).all() and (logits.grad[:, 7] == 0).all()
    assert MultiTaskLoss()(logits, torch.full((12, 9), -1.0)).item() == 0.0


def test_probabilities_softmax_then_sigmoid():
    logits, _ = random_multitask(5)
    out = MultiTaskProbabilitiesd(keys="pred")({"pred": logits[0]})["pred"]
    assert torch.allclose(out[:5].sum(), torch.tensor(1.0)) and torch.allclose(out[5:], torch.sigmoid(logits[0, 5:]))


def test_multitask_metrics_match_sklearn():
    logits, labels = random_multitask(60, seed=1)
    probs = MultiTaskProbabilitiesd(keys="pred")({"pred": logits})["pred"].numpy()
    y = labels.numpy().copy()
    metrics = multitask_metrics(probs, y)
    known = y[:, 0] >= 0
    grade = y[known, 0].astype(int)
    p_grade = probs[known, :5]
    assert metrics["dr_grade_auroc"] == pytest.approx(
        roc_auc_score(grade, p_grade / p_grade.sum(1, keepdims=True), multi_class="ovr", average="macro"))
    assert metrics["dr_grade_f1"] == pytest.approx(f1_score(grade, p_grade.argmax(1), average="macro"))
    # the original's grade figures: the disease grades 1-4 only, one-vs-rest over every graded image
    assert metrics["dr_grade_auroc_1_4"] == pytest.approx(
        np.mean([roc_auc_score(grade == k, p_grade[:, k]) for k in range(1, 5)]))
    assert metrics["dr_grade_f1_1_4"] == pytest.approx(
        f1_score(grade, p_grade.argmax(1), labels=[1, 2, 3, 4], average="macro"))
    assert metrics["dr_grade_f1_1_4"] != pytest.approx(metrics["dr_grade_f1"])  # healthy does count in the other
    aurocs, f1s = [metrics["dr_grade_auroc"]], [metrics["dr_grade_f1"]]
    for t, task in enumerate(MULTITASK_TASKS[1:]):
        k = y[:, 1 + t] >= 0
        assert metrics[f"{task}_num_labelled"] == int(k.sum())
        assert metrics[f"{task}_auroc"] == pytest.approx(roc_auc_score(y[k, 1 + t], probs[k, 5 + t]))
        assert metrics[f"{task}_f1"] == pytest.approx(f1_score(y[k, 1 + t], probs[k, 5 + t] >= 0.5))
        aurocs.append(metrics[f"{task}_auroc"])
        f1s.append(metrics[f"{task}_f1"])
    assert metrics["macro_auroc"] == pytest.approx(np.mean(aurocs))
    assert metrics["macro_f1"] == pytest.approx(np.mean(f1s))

    # a task with no label: nan, left out of the macro means
    y[:, 2] = -1
    metrics2 = multitask_metrics(probs, y)
    assert math.isnan(metrics2["glaucoma_auroc"]) and metrics2["glaucoma_num_labelled"] == 0
    assert metrics2["macro_auroc"] == pytest.approx(np.mean([a for i, a in enumerate(aurocs) if i != 2]))
    y[:, 0] = -1  # no grade at all: the grade figures are nan too
    assert math.isnan(multitask_metrics(probs, y)["dr_grade_auroc_1_4"])

    # the ignite metric over batches of decollated samples gives the same epoch value
    metric = MultiTaskMetric("macro_auroc")
    engine = Engine(lambda e, b: b)
    metric.attach(engine, "auroc")
    batches = [([torch.as_tensor(p) for p in probs[i:i + 8]], [torch.as_tensor(t) for t in labels.numpy()[i:i + 8]])
               for i in range(0, 60, 8)]
    assert engine.run(batches).metrics["auroc"] == pytest.approx(metrics["macro_auroc"])


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    write_images(folder, 2, seed=3)
    return folder


@pytest.mark.parametrize("labels, message", [
    ({"dr_grade": 5}, r"entry 1 \(.*img_3_001.png\): label dr_grade=5 must be an integer DR grade 0-4"),
    ({"glaucoma": 2}, r"entry 1 .*label glaucoma=2 must be 0, 1 or null"),
    ({"glacoma": 1}, r"entry 1 .*unknown task name\(s\) \['glacoma'\]"),
    ({"dr": None}, r"'training' entry 1 .*no known label for any task"),
])
def test_multitask_bad_input(image_dir, labels, message):
    datalist = {"training": [{"image": str(image_dir / "img_3_000.png"), "labels": {"dr_grade": 0}},
                             {"image": str(image_dir / "img_3_001.png"), "labels": labels}]}
    with pytest.raises(ValueError, match=message):
        load_multitask_datalist(datalist, "training")
