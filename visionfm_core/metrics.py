"""Classification metrics reported for VisionFM downstream tasks (accuracy, AUROC, AUPR, quadratic kappa, F1).

Validation splits of ophthalmic datasets are small and often miss a rare grade entirely; the metrics here skip
absent classes (instead of crashing as ``roc_auc_score(multi_class="ovr")`` does) so an epoch never fails on it.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import numpy as np
import torch
from ignite.metrics import EpochMetric
from sklearn.metrics import accuracy_score, average_precision_score, cohen_kappa_score, f1_score, roc_auc_score

__all__ = ["METRIC_NAMES", "classification_metrics", "ClassificationMetric"]

METRIC_NAMES = ("accuracy", "auroc", "aupr", "kappa", "f1")


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def classification_metrics(probs, labels) -> dict[str, float]:
    """Accuracy, macro one-vs-rest AUROC, macro AUPR (average precision), quadratic-weighted kappa and macro F1.

    Args:
        probs: (N, K) class probabilities (numpy array or tensor); predictions are their argmax.
        labels: (N,) integer class indices in 0..K-1 (a (N, K) one-hot array is also accepted).

    AUROC and AUPR are averaged over the classes present in ``labels`` only; they are ``nan`` when fewer than two
    classes are present. Kappa is ``nan`` when it is undefined (e.g. one class in both labels and predictions).
    """
    p = _numpy(probs).astype(np.float64)
    y = _numpy(labels)
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

    pred = p.argmax(axis=1)
    present = np.unique(y)
    if len(present) >= 2:
        auroc = float(np.mean([roc_auc_score(y == c, p[:, c]) for c in present]))
        aupr = float(np.mean([average_precision_score(y == c, p[:, c]) for c in present]))
    else:  # one-vs-rest needs both positives and negatives
        auroc = aupr = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa warns before returning nan
        kappa = float(cohen_kappa_score(y, pred, labels=np.arange(k), weights="quadratic"))
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "auroc": auroc,
        "aupr": aupr,
        "kappa": kappa,
        # macro over the classes seen in labels or predictions; an unseen class does not count as F1 = 0
        "f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }


def _metric_fn(name: str, probs: torch.Tensor, labels: torch.Tensor) -> float:
    return classification_metrics(probs, labels)[name]


class ClassificationMetric(EpochMetric):
    """An ignite metric computing one of :data:`METRIC_NAMES` over a whole epoch.

    ``update`` takes ``(probs, labels)``: probs (B, K), labels (B,) class indices or (B, K) one-hot (as produced
    by MONAI's ``AsDiscreted(to_onehot=K)``). Outputs are stored and, in distributed runs, all-gathered by
    :class:`ignite.metrics.EpochMetric` before :func:`classification_metrics` runs once on the full epoch.
    """

    def __init__(
        self,
        metric_name: str,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if metric_name not in METRIC_NAMES:
            raise ValueError(f"Unknown classification metric {metric_name!r}; choose one of {', '.join(METRIC_NAMES)}.")
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
