"""Progression forecasting metrics on the risk of progression."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from ignite.metrics import EpochMetric
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    roc_auc_score,
)

from visionfm_core.engine.metric_utils import to_numpy

__all__ = ["FORECASTING_METRIC_NAMES", "forecasting_metrics", "ForecastingMetric"]


FORECASTING_METRIC_NAMES = ("auroc", "aupr", "f1", "sensitivity", "specificity", "accuracy")


def forecasting_metrics(prob, labels, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of a progression forecast from the probability of progression (N,) and labels 0/1 (N,).

    AUROC and AUPR (average precision) rank by the probability; F1 (of the positive class, progression),
    sensitivity, specificity and accuracy are at ``prob >= threshold``. AUROC/AUPR are ``nan`` when only one
    class is present, sensitivity (specificity) when there is no positive (negative).
    """
    p = to_numpy(prob).astype(np.float64).reshape(-1)
    y = to_numpy(labels).reshape(-1)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"need probabilities (N,) and labels (N,) with N > 0, got {p.shape} and {y.shape}.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"forecasting labels must be 0 or 1, got values {sorted(set(y.tolist()))}.")
    y = y.astype(bool)
    pred = p >= threshold
    both = 0 < y.sum() < len(y)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return {
        "auroc": float(roc_auc_score(y, p)) if both else math.nan,
        "aupr": float(average_precision_score(y, p)) if both else math.nan,
        "f1": float(f1_score(y, pred, zero_division=0)),
        "sensitivity": float((pred & y).sum() / n_pos) if n_pos else math.nan,
        "specificity": float((~pred & ~y).sum() / n_neg) if n_neg else math.nan,
        "accuracy": float(accuracy_score(y, pred)),
    }


class ForecastingMetric(EpochMetric):
    """An ignite metric over an epoch: one of :data:`FORECASTING_METRIC_NAMES`. ``update`` takes
    ``(probabilities, labels)``: (B,) or (B, 1) each, or lists of per-sample (1,) tensors (decollated outputs)."""

    def __init__(self, metric_name: str = "auroc", output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu", threshold: float = 0.5) -> None:
        if metric_name not in FORECASTING_METRIC_NAMES:
            raise ValueError(f"Unknown forecasting metric {metric_name!r}; choose one of "
                             f"{', '.join(FORECASTING_METRIC_NAMES)}.")
        self.metric_name = metric_name
        fn = lambda p, y: forecasting_metrics(p, y, threshold)[metric_name]  # noqa: E731
        super().__init__(fn, output_transform=output_transform, check_compute_fn=False, device=device)

    def update(self, output) -> None:
        prob, label = output
        if isinstance(prob, (list, tuple)):
            prob, label = torch.stack([torch.as_tensor(x) for x in prob]), torch.stack([torch.as_tensor(x) for x in label])
        # plain float tensors: EpochMetric concatenates batches and insists on one dtype throughout
        super().update((torch.as_tensor(prob).as_subclass(torch.Tensor).float().reshape(-1),
                        torch.as_tensor(label).as_subclass(torch.Tensor).float().reshape(-1)))
