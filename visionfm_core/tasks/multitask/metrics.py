"""Multi-disease metrics: per task AUROC and the grade metrics, with unknown labels left out."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from ignite.metrics import EpochMetric
from sklearn.metrics import (
    f1_score,
    roc_auc_score,
)

from visionfm_core.engine.metric_utils import nan_mean, stack_pair, to_numpy
from visionfm_core.tasks.classification.metrics import classification_metrics

__all__ = ["multitask_metrics", "MultiTaskMetric"]


def multitask_metrics(probs, labels, tasks=None, num_grades: int = 5, threshold: float = 0.5) -> dict[str, float]:
    """Per-task AUROC and F1 of the multi-task head, each over the images labelled for that task only.

    Args:
        probs: (N, G + T) probabilities: softmax over the G grade outputs, then one sigmoid per binary task.
        labels: (N, 1 + T): the grade (0..G-1) then the binary labels (0/1); negative (-1) or NaN = unknown.
        tasks: names of the 1 + T tasks (default: :data:`visionfm_core.tasks.multitask.head.MULTITASK_TASKS`).
        threshold: binary decision for F1 (probability >= threshold).

    Returns (flat): ``<task>_auroc``, ``<task>_f1``, ``<task>_num_labelled`` per task, and ``macro_auroc`` /
    ``macro_f1``, the means over the tasks whose value is defined. The grade's AUROC is the macro one-vs-rest
    AUROC over the grades present and its F1 the macro F1 (as :func:`classification_metrics`); a binary task's AUROC
    is ``nan`` unless both classes occur, and any metric of a task without labelled images is ``nan``.
    The grade also gets the original's figures, over the disease grades 1..G-1 only (healthy left out as a class,
    not as images): ``<grade task>_auroc_1_<G-1>``, the mean one-vs-rest AUROC of those grades present, and
    ``<grade task>_f1_1_<G-1>``, their macro F1 on the argmax over all G grades (e.g. ``dr_grade_auroc_1_4``), so
    results compare with the paper.
    """
    if tasks is None:
        from visionfm_core.tasks.multitask.head import MULTITASK_TASKS as tasks  # noqa: N811
    tasks = list(tasks)
    p = to_numpy(probs).astype(np.float64)
    y = np.nan_to_num(to_numpy(labels).astype(np.float64), nan=-1.0)
    if p.ndim != 2 or y.ndim != 2 or p.shape[0] != y.shape[0] or y.shape[1] != len(tasks) \
            or p.shape[1] != num_grades + len(tasks) - 1:
        raise ValueError(f"multitask_metrics: need probs (N, {num_grades + len(tasks) - 1}) and labels "
                         f"(N, {len(tasks)}), got {p.shape} and {y.shape}.")
    out: dict[str, float] = {}
    for t, task in enumerate(tasks):
        known = y[:, t] >= 0
        out[f"{task}_num_labelled"] = int(known.sum())
        if not known.any():
            out[f"{task}_auroc"] = out[f"{task}_f1"] = math.nan
            continue
        yt = y[known, t].astype(np.int64)
        if t == 0:
            grade = classification_metrics(p[known, :num_grades], yt)
            out[f"{task}_auroc"], out[f"{task}_f1"] = grade["auroc"], grade["f1"]
            out.update(_disease_grade_metrics(p[known, :num_grades], yt, task))
        else:
            score = p[known, num_grades + t - 1]
            out[f"{task}_auroc"] = float(roc_auc_score(yt, score)) if len(np.unique(yt)) == 2 else math.nan
            out[f"{task}_f1"] = float(f1_score(yt, score >= threshold, zero_division=0))
    if not (y[:, 0] >= 0).any():
        out.update(dict.fromkeys(_disease_grade_names(tasks[0], num_grades), math.nan))
    out["macro_auroc"] = nan_mean([out[f"{t}_auroc"] for t in tasks])
    out["macro_f1"] = nan_mean([out[f"{t}_f1"] for t in tasks])
    return out



def _disease_grade_names(task: str, num_grades: int) -> tuple[str, str]:
    return f"{task}_auroc_1_{num_grades - 1}", f"{task}_f1_1_{num_grades - 1}"


def _disease_grade_metrics(probs: np.ndarray, grades: np.ndarray, task: str) -> dict[str, float]:
    """The original's grade AUROC and F1 over the disease grades 1..G-1 (one-vs-rest on every labelled image)."""
    num_grades = probs.shape[1]
    auroc_name, f1_name = _disease_grade_names(task, num_grades)
    diseases = range(1, num_grades)
    aurocs = [roc_auc_score(grades == k, probs[:, k]) for k in diseases if 0 < (grades == k).sum() < len(grades)]
    f1 = f1_score(grades, probs.argmax(1), labels=list(diseases), average="macro", zero_division=0)
    return {auroc_name: float(np.mean(aurocs)) if aurocs else math.nan, f1_name: float(f1)}

class MultiTaskMetric(EpochMetric):
    """An ignite metric over an epoch: one value of :func:`multitask_metrics` (``macro_auroc`` by default, the
    multi-task bundle's key metric; or ``macro_f1``, ``<task>_auroc``, ``<task>_f1``). ``update`` takes
    ``(probs, labels)`` batches or lists of per-sample tensors (``monai.handlers.from_engine(["pred", "labels"])``);
    all-gathered across processes by :class:`ignite.metrics.EpochMetric`."""

    def __init__(self, metric_name: str = "macro_auroc", output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu", tasks=None, num_grades: int = 5) -> None:
        if tasks is None:
            from visionfm_core.tasks.multitask.head import MULTITASK_TASKS as tasks  # noqa: N811
        names = ["macro_auroc", "macro_f1", *[f"{t}_{m}" for t in tasks for m in ("auroc", "f1")]]
        if metric_name not in names:
            raise ValueError(f"Unknown multi-task metric {metric_name!r}; choose one of {', '.join(names)}.")
        self.metric_name = metric_name
        fn = lambda p, y: multitask_metrics(p, y, tasks, num_grades)[metric_name]  # noqa: E731
        super().__init__(fn, output_transform=output_transform, check_compute_fn=False, device=device)

    def update(self, output) -> None:
        super().update(stack_pair(output))
