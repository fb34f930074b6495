"""Classification metrics: accuracy, AUROC, AUPR, quadratic kappa, F1; binary tasks add the positive-class
AUROC/AUPR and sensitivity/specificity at the decision and at fixed operating points. Absent classes in small
validation splits are skipped instead of crashing."""

from __future__ import annotations

import functools
import math
import re
import warnings
from typing import Callable

import numpy as np
import torch
from ignite.metrics import EpochMetric
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from visionfm_core.engine.metric_utils import to_numpy

__all__ = ["METRIC_NAMES", "BINARY_METRIC_NAMES", "fixed_point_names", "classification_metrics", "ClassificationMetric"]


METRIC_NAMES = ("accuracy", "auroc", "aupr", "kappa", "f1")


# what a binary (K == 2) task adds: sensitivity and specificity at the argmax decision and at fixed operating points
BINARY_METRIC_NAMES = ("sensitivity", "specificity", "sensitivity_at_90_specificity", "specificity_at_90_sensitivity")


_FIXED = re.compile(r"(sensitivity|specificity)_at_(\d+(?:_\d+)?)_(specificity|sensitivity)")


def _percent(level: float) -> str:
    """0.9 -> '90', 0.925 -> '92_5': the number in a fixed-operating-point metric name."""
    return f"{round(level * 100, 6):g}".replace(".", "_")


def fixed_point_names(fixed_specificity: float = 0.90, fixed_sensitivity: float = 0.90) -> tuple[str, str]:
    """Names of the two fixed-operating-point metrics, e.g. ``sensitivity_at_90_specificity``."""
    return (f"sensitivity_at_{_percent(fixed_specificity)}_specificity",
            f"specificity_at_{_percent(fixed_sensitivity)}_sensitivity")


def _binary_metrics(score: np.ndarray, positive: np.ndarray, pred: np.ndarray, fixed_specificity: float,
                    fixed_sensitivity: float) -> dict[str, float]:
    """Positive-class metrics of a binary task from the class-1 probability `score`."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    tp, tn = int((pred & positive).sum()), int((~pred & ~positive).sum())
    out = {"sensitivity": tp / n_pos if n_pos else math.nan, "specificity": tn / n_neg if n_neg else math.nan}
    sens_name, spec_name = fixed_point_names(fixed_specificity, fixed_sensitivity)
    if n_pos and n_neg:
        # every threshold: roc_curve's default drops collinear points, and on tied scores the dropped point can be
        # the best operating point at the fixed level
        fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=False)
        # the best sensitivity among the thresholds whose specificity reaches the level, and vice versa; the
        # all-negative and all-positive thresholds guarantee both sets are non-empty
        out[sens_name] = float(tpr[1 - fpr >= fixed_specificity - 1e-12].max())
        out[spec_name] = float((1 - fpr)[tpr >= fixed_sensitivity - 1e-12].max())
    else:
        out[sens_name] = out[spec_name] = math.nan
    return out


def classification_metrics(probs, labels, fixed_specificity: float = 0.90,
                           fixed_sensitivity: float = 0.90) -> dict[str, float]:
    """Accuracy, AUROC, AUPR (average precision), quadratic-weighted kappa and macro F1; more for binary tasks.

    Args:
        probs: (N, K) class probabilities (numpy array or tensor); predictions are their argmax.
        labels: (N,) integer class indices in 0..K-1 (a (N, K) one-hot array is also accepted).
        fixed_specificity, fixed_sensitivity: operating points of the binary metrics (K == 2 only).

    Multi-class (K > 2): AUROC is the macro one-vs-rest AUROC and AUPR the macro average precision, both over the
    classes present in ``labels`` only (``nan`` when fewer than two classes are present).

    Binary (K == 2, class 1 = positive): AUROC and AUPR are those of the positive class (its probability ranks the
    images), and four more metrics are reported: ``sensitivity`` and ``specificity`` at the argmax decision
    (probability of class 1 > 0.5), ``sensitivity_at_90_specificity`` (the highest sensitivity of any threshold
    whose specificity is at least 0.90) and ``specificity_at_90_sensitivity`` (likewise), named after the levels
    given. Each is ``nan`` when the classes it needs are absent from ``labels``.

    Kappa is ``nan`` when it is undefined (e.g. one class in both labels and predictions).
    """
    p = to_numpy(probs).astype(np.float64)
    y = to_numpy(labels)
    if p.ndim != 2:
        raise ValueError(f"probs must be shaped (N, K), got {p.shape}.")
    if y.ndim == 2:  # one-hot
        y = y.argmax(axis=1)
    y = y.reshape(-1).astype(np.int64)
    n, k = p.shape
    if n == 0 or len(y) != n:
        raise ValueError(f"need probs (N, K) and labels (N,) with N > 0, got {p.shape} and {y.shape}.")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be in 0..{k - 1} for {k} classes, got values {sorted(set(y.tolist()))}.")
    for name, level in (("fixed_specificity", fixed_specificity), ("fixed_sensitivity", fixed_sensitivity)):
        if not 0 < level < 1:
            raise ValueError(f"{name} must be in (0, 1), got {level}.")

    pred = p.argmax(axis=1)
    present = np.unique(y)
    if len(present) >= 2:
        classes = [1] if k == 2 else present  # binary: the positive class only, not a macro over both
        auroc = float(np.mean([roc_auc_score(y == c, p[:, c]) for c in classes]))
        aupr = float(np.mean([average_precision_score(y == c, p[:, c]) for c in classes]))
    else:  # one-vs-rest needs both positives and negatives
        auroc = aupr = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa warns before returning nan
        kappa = float(cohen_kappa_score(y, pred, labels=np.arange(k), weights="quadratic"))
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "auroc": auroc,
        "aupr": aupr,
        "kappa": kappa,
        # macro over the classes seen in labels or predictions; an unseen class does not count as F1 = 0
        "f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }
    if k == 2:
        out.update(_binary_metrics(p[:, 1], y == 1, pred == 1, fixed_specificity, fixed_sensitivity))
    return out


def _metric_fn(name: str, probs: torch.Tensor, labels: torch.Tensor) -> float:
    levels = {}
    fixed = _FIXED.fullmatch(name)
    if fixed:  # the operating point is in the name: sensitivity_at_95_specificity -> fixed_specificity 0.95
        levels[f"fixed_{fixed.group(3)}"] = float(fixed.group(2).replace("_", ".")) / 100
    metrics = classification_metrics(probs, labels, **levels)
    if name not in metrics:
        raise ValueError(f"Classification metric {name!r} is defined for binary tasks only; this one has "
                         f"{probs.shape[1]} classes.")
    return metrics[name]


class ClassificationMetric(EpochMetric):
    """An ignite metric computing one of :data:`METRIC_NAMES` (or, for binary tasks, :data:`BINARY_METRIC_NAMES`)
    over a whole epoch.

    ``update`` takes ``(probs, labels)``: probs (B, K), labels (B,) class indices or (B, K) one-hot (as produced
    by MONAI's ``AsDiscreted(to_onehot=K)``). Outputs are stored and, in distributed runs, all-gathered by
    :class:`ignite.metrics.EpochMetric` before :func:`classification_metrics` runs once on the full epoch.
    Fixed operating points other than 0.90 are written in the name: ``sensitivity_at_95_specificity``,
    ``specificity_at_97_5_sensitivity``.
    """

    def __init__(
        self,
        metric_name: str,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        fixed = _FIXED.fullmatch(metric_name)
        known = metric_name in METRIC_NAMES + BINARY_METRIC_NAMES or (
            fixed is not None and fixed.group(1) != fixed.group(3)
            and 0 < float(fixed.group(2).replace("_", ".")) < 100)
        if not known:
            raise ValueError(f"Unknown classification metric {metric_name!r}; choose one of "
                             f"{', '.join(METRIC_NAMES + BINARY_METRIC_NAMES)} (binary tasks: other levels as "
                             "sensitivity_at_<percent>_specificity).")
        self.metric_name = metric_name
        super().__init__(
            functools.partial(_metric_fn, metric_name),
            output_transform=output_transform,
            check_compute_fn=False,
            device=device,
        )

    def update(self, output) -> None:
        y_pred, y = output
        # Plain tensors with fixed dtypes: EpochMetric concatenates batches and insists on one dtype throughout.
        y_pred = torch.as_tensor(y_pred).as_subclass(torch.Tensor).float()
        y = torch.as_tensor(y).as_subclass(torch.Tensor)
        if y.ndim == 2 and y.shape[1] > 1:  # one-hot -> class index
            y = y.argmax(dim=1)
        super().update((y_pred, y.long()))
