"""Small helpers the families' metrics share."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["to_numpy", "nan_mean", "stack_pair"]


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def nan_mean(values) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def stack_pair(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) batches as plain float tensors, from tensors or from lists of per-sample tensors."""
    def stack(x):
        if isinstance(x, (list, tuple)):
            x = torch.stack([torch.as_tensor(v).as_subclass(torch.Tensor) for v in x])
        return torch.as_tensor(x).as_subclass(torch.Tensor).detach().float()
    y_pred, y = output
    return stack(y_pred), stack(y)


