"""Uncertainty of benchmark figures: bootstrap intervals (by patient when ids exist), DeLong's test for two AUROCs on
one test set, and a paired bootstrap for the other metrics.

DeLong (DeLong, DeLong & Clarke-Pearson 1988) with the fast midrank algorithm of Sun & Xu (IEEE SPL 2014): the
structural components V10 (per positive) and V01 (per negative) come from three rankings instead of the m x n
comparisons. Every figure here is written as a sum over images of a per-image influence, so a variance is a sum of
squares: for one AUROC and for the difference of two it is exactly DeLong's S10/m + S01/n; a multi-class macro
one-vs-rest AUROC (the benchmark's AUROC) averages the per-class influences, which gives the covariance between the
classes' AUROCs on shared images the same way.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

from visionfm_core.tasks.classification.metrics import METRIC_NAMES, classification_metrics

__all__ = ["auc_components", "auc_influence", "macro_auroc_influence", "delong_test", "bootstrap_indices",
           "bootstrap_metrics", "paired_bootstrap"]


def auc_components(scores, positive) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUROC, V10 per positive, V10 per negative) by midranks (Sun & Xu 2014); ties count one half."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    pos, neg = scores[positive], scores[~positive]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        raise ValueError(f"AUROC needs positives and negatives, got {m} positives and {n} negatives.")
    ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (ranks[:m] - rankdata(pos)) / n  # share of negatives below each positive
    v01 = 1.0 - (ranks[m:] - rankdata(neg)) / m  # share of positives above each negative
    return float(v10.mean()), v10, v01


def auc_influence(scores, positive) -> tuple[float, np.ndarray]:
    """(AUROC, psi) with psi one value per image such that sum(psi_a * psi_b) is DeLong's covariance of two AUROCs
    on these images (S10_ab / m + S01_ab / n, with the (m - 1), (n - 1) sample covariances)."""
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    auc, v10, v01 = auc_components(scores, positive)
    m, n = len(v10), len(v01)
    psi = np.empty(len(positive))
    psi[positive] = (v10 - auc) / math.sqrt(m * max(m - 1, 1))
    psi[~positive] = (v01 - auc) / math.sqrt(n * max(n - 1, 1))
    return auc, psi


def macro_auroc_influence(probs, labels) -> tuple[float, np.ndarray]:
    """The benchmark's AUROC (as `classification_metrics`: the positive class for K == 2, else the macro one-vs-rest
    AUROC over the classes present) and its per-image influence."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError("AUROC needs at least two classes in the labels.")
    classes = [1] if p.shape[1] == 2 else present
    parts = [auc_influence(p[:, c], y == c) for c in classes]
    return float(np.mean([a for a, _ in parts])), np.mean([psi for _, psi in parts], axis=0)


def delong_test(probs_a, probs_b, labels, level: float = 0.95) -> dict[str, float]:
    """DeLong's test of AUROC(a) = AUROC(b), two models' probabilities on the same images (paired).

    Returns auroc_a, auroc_b, their DeLong intervals, the difference a - b with its interval, z and the two-sided p.
    """
    auc_a, psi_a = macro_auroc_influence(probs_a, labels)
    auc_b, psi_b = macro_auroc_influence(probs_b, labels)
    q = norm.ppf(0.5 + level / 2)
    diff = auc_a - auc_b
    se = math.sqrt(float(np.sum((psi_a - psi_b) ** 2)))
    if se > 0:
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    else:  # identical rankings: no evidence of a difference
        z, p = 0.0, 1.0
    se_a, se_b = math.sqrt(float(np.sum(psi_a**2))), math.sqrt(float(np.sum(psi_b**2)))
    return {"auroc_a": auc_a, "auroc_b": auc_b, "auroc_a_low": auc_a - q * se_a, "auroc_a_high": auc_a + q * se_a,
            "auroc_b_low": auc_b - q * se_b, "auroc_b_high": auc_b + q * se_b, "difference": diff,
            "low": diff - q * se, "high": diff + q * se, "z": z, "p": p}


def bootstrap_indices(n: int, groups=None, n_boot: int = 1000, seed: int = 0):
    """Yield `n_boot` resamples of 0..n-1 with replacement; with `groups` (one id per image) whole groups (patients)
    are drawn, so the two eyes of one person stay together."""
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, n)
        return
    groups = np.asarray(groups).reshape(-1)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} images.")
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def bootstrap_metrics(probs, labels, groups=None, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                      metrics: tuple[str, ...] = METRIC_NAMES) -> dict[str, dict[str, float]]:
    """{metric: {"value", "low", "high"}}: the test-set value and its percentile bootstrap interval (resampling
    patients when `groups` is given). Resamples where a metric is undefined (a class missing) are left out of that
    metric's interval."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels).reshape(-1)
    point = classification_metrics(p, y)
    draws = {k: [] for k in metrics}
    for idx in bootstrap_indices(len(y), groups, n_boot, seed):
        values = classification_metrics(p[idx], y[idx])
        for k in metrics:
            draws[k].append(values[k])
    out = {}
    for k in metrics:
        low, high = _interval(np.asarray(draws[k], dtype=np.float64), level)
        out[k] = {"value": float(point[k]), "low": low, "high": high}
    return out


def paired_bootstrap(probs_a, probs_b, labels, groups=None, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                     metrics: tuple[str, ...] = METRIC_NAMES) -> dict[str, dict[str, float]]:
    """{metric: {"a", "b", "difference", "low", "high", "p"}}: a - b on the same resamples of the same images, its
    percentile interval and a two-sided bootstrap p ((1 + resamples on the other side of 0) / (1 + resamples), x2)."""
    pa, pb = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if pa.shape != pb.shape or len(y) != len(pa):
        raise ValueError(f"paired runs need the same images: probabilities {pa.shape} and {pb.shape}, "
                         f"{len(y)} labels.")
    ma, mb = classification_metrics(pa, y), classification_metrics(pb, y)
    diffs = {k: [] for k in metrics}
    for idx in bootstrap_indices(len(y), groups, n_boot, seed):
        va, vb = classification_metrics(pa[idx], y[idx]), classification_metrics(pb[idx], y[idx])
        for k in metrics:
            diffs[k].append(va[k] - vb[k])
    out = {}
    for k in metrics:
        d = np.asarray(diffs[k], dtype=np.float64)
        d = d[np.isfinite(d)]
        low, high = _interval(d, level)
        if len(d):
            below, above = (1 + np.sum(d <= 0)) / (1 + len(d)), (1 + np.sum(d >= 0)) / (1 + len(d))
            p = float(min(1.0, 2 * min(below, above)))
        else:
            p = math.nan
        out[k] = {"a": float(ma[k]), "b": float(mb[k]), "difference": float(ma[k] - mb[k]), "low": low, "high": high,
                  "p": p}
    return out
