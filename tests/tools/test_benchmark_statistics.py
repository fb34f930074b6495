"""The benchmark's statistics: DeLong against a brute-force computation, bootstrap by patient, paired tests."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from tests_common import assert_close_to_scale
from visionfm_core.ssl.monitor import knn_accuracy, knn_scores
from visionfm_core.tasks.classification.metrics import classification_metrics
from visionfm_core.tools.benchmark.statistics import (
    auc_components,
    bootstrap_indices,
    bootstrap_metrics,
    delong_test,
    macro_auroc_influence,
    paired_bootstrap,
)
from visionfm_core.tools.benchmark.transforms import RandResizedCropd


def brute_force_delong(a, b, positive):
    """DeLong et al. 1988 written out: the m x n comparison matrix, structural components, sample covariances."""
    def components(s):
        pos, neg = s[positive], s[~positive]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(), psi.mean(1), psi.mean(0)

    (ta, v10a, v01a), (tb, v10b, v01b) = components(a), components(b)
    s10, s01 = np.cov(np.stack([v10a, v10b])), np.cov(np.stack([v01a, v01b]))
    cov = s10 / positive.sum() + s01 / (~positive).sum()
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (ta - tb) / np.sqrt(var)
    return ta, tb, var, z, 2 * norm.sf(abs(z))


def test_fast_delong_matches_the_brute_force_computation_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.4
    a = np.round(y * 0.8 + rng.normal(size=60), 1)  # rounded: many ties, counted one half
    b = np.round(y * 0.3 + rng.normal(size=60), 1)
    auc, v10, v01 = auc_components(a, y)
    pos, neg = a[y], a[~y]
    assert_close_to_scale(v10, ((pos[:, None] > neg) + 0.5 * (pos[:, None] == neg)).mean(1))
    probs_a, probs_b = np.stack([1 - a, a], 1), np.stack([1 - b, b], 1)  # binary: class 1's column ranks
    result = delong_test(probs_a, probs_b, y.astype(int))
    ta, tb, var, z, p = brute_force_delong(a, b, y)
    assert result["auroc_a"] == pytest.approx(ta, rel=1e-12) and result["auroc_b"] == pytest.approx(tb, rel=1e-12)
    assert result["z"] == pytest.approx(z, rel=1e-9) and result["p"] == pytest.approx(p, rel=1e-9)
    half = norm.ppf(0.975) * np.sqrt(var)
    assert result["low"] == pytest.approx(ta - tb - half, rel=1e-9)


def test_macro_auroc_is_the_reported_auroc_and_its_delong_variance_agrees_with_the_bootstrap():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    logits_a = rng.normal(size=(400, 4)) + 1.5 * np.eye(4)[y]
    logits_b = logits_a + rng.normal(scale=1.0, size=(400, 4))  # correlated with a, as two encoders are
    pa, pb = (torch.softmax(torch.tensor(x), 1).numpy() for x in (logits_a, logits_b))
    auc, psi = macro_auroc_influence(pa, y)
    assert auc == pytest.approx(classification_metrics(pa, y)["auroc"], rel=1e-12)
    delong_var = np.sum((psi - macro_auroc_influence(pb, y)[1]) ** 2)
    diffs = [macro_auroc_influence(pa[i], y[i])[0] - macro_auroc_influence(pb[i], y[i])[0]
             for i in bootstrap_indices(400, n_boot=400, seed=0)]
    # two estimates of one variance (the bootstrap's own error with 400 draws is about 7 %)
    assert delong_var == pytest.approx(np.var(diffs), rel=0.3)


def test_bootstrap_by_patient_keeps_each_patients_images_together():
    groups = np.repeat(np.arange(10), 3)  # 10 patients, 3 images each
    for idx in bootstrap_indices(30, groups, n_boot=20, seed=3):
        assert len(idx) == 30
        counts = np.bincount(idx, minlength=30).reshape(10, 3)
        assert (counts == counts[:, :1]).all()  # a patient's three images are drawn together, or not at all
    assert not all((np.bincount(i, minlength=30).reshape(10, 3) == np.bincount(i, minlength=30).reshape(10, 3)[:, :1])
                   .all() for i in bootstrap_indices(30, None, n_boot=20, seed=3))


def test_bootstrap_interval_contains_the_value_and_narrows_with_more_images():
    rng = np.random.default_rng(2)

    def width(n):
        y = rng.integers(0, 3, n)
        p = torch.softmax(torch.tensor(rng.normal(size=(n, 3)) + np.eye(3)[y]), 1).numpy()
        m = bootstrap_metrics(p, y, n_boot=100, seed=0)
        for v in m.values():
            assert v["low"] <= v["value"] <= v["high"] or np.isnan(v["value"])
        return m["auroc"]["high"] - m["auroc"]["low"]

    assert width(400) < width(40)


def test_paired_bootstrap_sees_a_real_difference_and_no_difference_between_equals():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    good = torch.softmax(torch.tensor(rng.normal(size=(300, 2)) + 2.5 * np.eye(2)[y]), 1).numpy()
    poor = torch.softmax(torch.tensor(rng.normal(size=(300, 2))), 1).numpy()
    r = paired_bootstrap(good, poor, y, n_boot=100, seed=0)  # no resample at or below 0: the smallest p, 2 / 101
    assert r["accuracy"]["low"] > 0 and r["accuracy"]["p"] == pytest.approx(2 / 101) and r["f1"]["difference"] > 0
    same = paired_bootstrap(good, good, y, n_boot=20, seed=0)
    assert same["kappa"]["difference"] == 0 and same["kappa"]["p"] == 1.0
    assert delong_test(good, good, y)["p"] == 1.0 and delong_test(good, poor, y)["p"] < 1e-6
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(good, poor[:10], y)


def test_knn_scores_are_class_probabilities_whose_argmax_is_the_knn_vote():
    torch.manual_seed(0)
    feats, labels = torch.randn(40, 8), torch.randint(0, 3, (40,))
    scores = knn_scores(feats[:30], labels[:30], feats[30:], num_classes=3, k=5)
    assert scores.shape == (10, 3) and torch.allclose(scores.sum(1), torch.ones(10))
    acc = (scores.argmax(1) == labels[30:]).float().mean().item()
    assert acc == knn_accuracy(feats[:30], labels[:30], feats[30:], labels[30:], k=5)


def test_random_resized_crop_draws_inside_the_image_and_resizes():
    img = torch.rand(3, 40, 60)
    t = RandResizedCropd("image", size=16)
    t.set_random_state(0)
    for _ in range(20):
        out = t({"image": img})["image"]
        top, left, h, w = t._box
        assert out.shape == (3, 16, 16) and 0 <= out.min() and out.max() <= 1
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.08 * 2400 * 0.9 <= h * w <= 2400  # the area drawn in scale (0.08, 1), up to rounding
    whole = RandResizedCropd("image", size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    square = torch.rand(3, 32, 32)
    expected = torch.nn.functional.interpolate(square[None], size=(16, 16), mode="bicubic", antialias=True)[0]
    assert_close_to_scale(whole({"image": square})["image"], expected.clamp(0, 1))
