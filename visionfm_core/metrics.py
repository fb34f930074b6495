"""Metrics reported for VisionFM downstream tasks.

Classification: accuracy, AUROC, AUPR, quadratic kappa, F1; binary tasks add the positive-class AUROC/AUPR,
sensitivity/specificity at the decision and at fixed operating points. Validation splits of ophthalmic datasets are
small and often miss a rare grade entirely; the metrics here skip absent classes (instead of crashing as
``roc_auc_score(multi_class="ovr")`` does) so an epoch never fails on it.

Segmentation (retinal vessels): Dice, clDice, AUROC, sensitivity, specificity and accuracy, computed per image and
only inside the field of view (FOV) when a FOV mask is given, as is usual for DRIVE-style benchmarks.

Landmarks: mean radial error in pixels of the original image, and in mm when the pixel size is known.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from typing import Callable

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric, Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "METRIC_NAMES",
    "BINARY_METRIC_NAMES",
    "classification_metrics",
    "fixed_point_names",
    "ClassificationMetric",
    "SEGMENTATION_METRIC_NAMES",
    "dice",
    "cldice",
    "segmentation_metrics",
    "mean_radial_error",
    "RadialErrorMetric",
    "multitask_metrics",
    "MultiTaskMetric",
    "REGRESSION_METRIC_NAMES",
    "regression_metrics",
    "RegressionMetric",
]

METRIC_NAMES = ("accuracy", "auroc", "aupr", "kappa", "f1")
# what a binary (K == 2) task adds: sensitivity and specificity at the argmax decision and at fixed operating points
BINARY_METRIC_NAMES = ("sensitivity", "specificity", "sensitivity_at_90_specificity", "specificity_at_90_sensitivity")
_FIXED = re.compile(r"(sensitivity|specificity)_at_(\d+(?:_\d+)?)_(specificity|sensitivity)")


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


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
        fpr, tpr, _ = roc_curve(positive, score)  # every threshold of the ROC curve (and the all-negative one)
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


# --- segmentation -------------------------------------------------------------------------------------------------

SEGMENTATION_METRIC_NAMES = ("dice", "cldice", "auroc", "sensitivity", "specificity", "accuracy")


def _mask(x, name: str) -> np.ndarray:
    """A boolean array from a binary mask (bool, {0, 1} numbers); a leading channel of 1 is dropped."""
    a = _numpy(x)
    if a.ndim >= 3 and a.shape[0] == 1:
        a = a[0]
    if a.dtype != np.bool_:
        if not ((a == 0) | (a == 1)).all():
            values = np.unique(a)
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
            raise ValueError(f"{name} must be a binary mask with values 0 and 1, got values {shown} "
                             "(threshold probabilities first; divide 0/255 masks by 255).")
        a = a != 0
    return a


def _masks(pred, label, fov) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    p, y = _mask(pred, "pred"), _mask(label, "label")
    f = _mask(fov, "fov") if fov is not None else None
    for name, other in (("label", y), ("fov", f)):
        if other is not None and other.shape != p.shape:
            raise ValueError(f"pred has shape {p.shape} but {name} has shape {other.shape}; they must match.")
    if f is not None and not f.any():
        raise ValueError("The field-of-view mask is empty: no pixel to evaluate.")
    return p, y, f


def _dice_counts(tp: int, fp: int, fn: int) -> float:
    # Two empty masks agree perfectly; scoring them 1 (not nan) keeps per-image means defined.
    return 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def dice(pred_bin, label, fov=None) -> float:
    """Dice = 2|P ∩ L| / (|P| + |L|) of two binary masks (numpy arrays or tensors, same shape, values {0, 1} or
    bool; a leading channel of size 1 is allowed), counted only inside ``fov`` when given. 1.0 when both are empty."""
    p, y, f = _masks(pred_bin, label, fov)
    if f is not None:
        p, y = p[f], y[f]
    tp = int(np.count_nonzero(p & y))
    return _dice_counts(tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(y)) - tp)


def cldice(pred_bin, label, fov=None) -> float:
    """Centre-line Dice (Shit et al., CVPR 2021) of two binary 2-D masks, sensitive to broken or missing vessels.

    ``clDice = 2 Tprec Tsens / (Tprec + Tsens)`` with ``Tprec = |S(P) ∩ L| / |S(P)|`` (how much of the predicted
    skeleton lies on true vessels) and ``Tsens = |S(L) ∩ P| / |S(L)|`` (how much of the true skeleton is covered);
    S is ``skimage.morphology.skeletonize``. With ``fov``, both masks are cut to the FOV before skeletonising.
    A ratio over an empty skeleton counts as 1 (nothing to get wrong), so two empty masks give 1.0 and an empty
    prediction against a non-empty label gives 0.0.
    """
    from skimage.morphology import skeletonize

    p, y, f = _masks(pred_bin, label, fov)
    if f is not None:
        p, y = p & f, y & f
    sp, sy = skeletonize(p), skeletonize(y)
    n_sp, n_sy = np.count_nonzero(sp), np.count_nonzero(sy)
    tprec = np.count_nonzero(sp & y) / n_sp if n_sp else 1.0
    tsens = np.count_nonzero(sy & p) / n_sy if n_sy else 1.0
    return 0.0 if tprec + tsens == 0 else float(2.0 * tprec * tsens / (tprec + tsens))


def segmentation_metrics(prob, label, fov=None, threshold: float = 0.5) -> dict[str, float]:
    """Per-image binary segmentation metrics, all computed only on the pixels inside ``fov`` when given.

    Args:
        prob: foreground probabilities in [0, 1], (H, W) or (1, H, W), numpy array or tensor.
        label: binary ground truth of the same size (values {0, 1} or bool).
        fov: optional binary field-of-view mask of the same size.
        threshold: ``prob >= threshold`` is the predicted mask.

    Returns:
        ``{"dice", "cldice", "auroc", "sensitivity", "specificity", "accuracy"}`` as floats. AUROC is over pixels
        and ``nan`` when the label is all one class; sensitivity is ``nan`` without positives, specificity without
        negatives.
    """
    p = _numpy(prob).astype(np.float64)
    if p.ndim >= 3 and p.shape[0] == 1:
        p = p[0]
    if p.size and not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
        raise ValueError(f"prob must hold probabilities in [0, 1], got values in [{np.nanmin(p):g}, {np.nanmax(p):g}] "
                         "(apply a sigmoid/softmax to the network output first).")
    pred = p >= threshold
    pred, y, f = _masks(pred, label, fov)
    inside = f if f is not None else np.ones_like(y)
    pv, yv, prob_v = pred[inside], y[inside], p[inside]
    tp = int(np.count_nonzero(pv & yv))
    fp = int(np.count_nonzero(pv & ~yv))
    fn = int(np.count_nonzero(~pv & yv))
    tn = int(pv.size - tp - fp - fn)
    both_classes = 0 < np.count_nonzero(yv) < yv.size
    return {
        "dice": _dice_counts(tp, fp, fn),
        "cldice": cldice(pred, y, f),
        "auroc": float(roc_auc_score(yv, prob_v)) if both_classes else math.nan,
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "accuracy": (tp + tn) / pv.size,
    }


# --- landmarks ----------------------------------------------------------------------------------------------------


def _points(x, name: str) -> np.ndarray:
    a = _numpy(x).astype(np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name} must be shaped (L, 2) or (N, L, 2) as (x, y) points, got {a.shape}.")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite coordinates.")
    return a


def mean_radial_error(pred_points, target_points, pixel_size_mm=None,
                      success_radii_mm: tuple[float, ...] = (2.0, 4.0)) -> dict:
    """Mean radial (Euclidean) error between predicted and true landmarks, in pixels of the original images.

    Args:
        pred_points, target_points: (L, 2) or (N, L, 2) as (x, y), in original image pixels.
        pixel_size_mm: mm per pixel (isotropic), one number or one per image (N,); adds errors in mm and the
            success detection rates ``sdr_<r>mm`` (fraction of landmarks within r mm) for ``success_radii_mm``.

    Returns:
        ``{"mre_px", "mre_px_per_landmark" (list of L), "radial_errors_px" (N x L nested list), "num_images"}``
        plus, with a pixel size, ``"mre_mm"``, ``"mre_mm_per_landmark"`` and ``"sdr_<r>mm"``.
    """
    pred, target = _points(pred_points, "pred_points"), _points(target_points, "target_points")
    if pred.shape != target.shape:
        raise ValueError(f"pred_points {pred.shape} and target_points {target.shape} must have the same shape.")
    errors = np.hypot(*(pred - target).transpose(2, 0, 1))  # (N, L)
    out = {
        "mre_px": float(errors.mean()),
        "mre_px_per_landmark": errors.mean(axis=0).tolist(),
        "radial_errors_px": errors.tolist(),
        "num_images": int(errors.shape[0]),
    }
    if pixel_size_mm is not None:
        size = np.asarray(pixel_size_mm, dtype=np.float64).reshape(-1)
        if size.shape[0] not in (1, errors.shape[0]) or not (np.isfinite(size).all() and (size > 0).all()):
            raise ValueError(f"pixel_size_mm must be one positive number or one per image ({errors.shape[0]}), "
                             f"got {pixel_size_mm!r}.")
        errors_mm = errors * size[:, None] if size.shape[0] > 1 else errors * size[0]
        out["mre_mm"] = float(errors_mm.mean())
        out["mre_mm_per_landmark"] = errors_mm.mean(axis=0).tolist()
        for radius in success_radii_mm:
            out[f"sdr_{radius:g}mm"] = float((errors_mm <= radius).mean())
    return out


def _stack_points(points) -> torch.Tensor:
    """(B, L, 2) float64 from a batch tensor, one sample's (L, 2), or a list of per-sample (L, 2) (decollated)."""
    if isinstance(points, (list, tuple)):
        points = torch.stack([torch.as_tensor(p).as_subclass(torch.Tensor).detach().cpu() for p in points])
    points = torch.as_tensor(points).as_subclass(torch.Tensor).detach().cpu().to(torch.float64)
    return points[None] if points.ndim == 2 else points


class RadialErrorMetric(Metric):
    """An ignite metric: the mean radial error over an epoch, in pixels (or in mm with ``pixel_size_mm``); lower is
    better.

    ``update`` takes ``(pred_points, target_points)``: (B, L, 2) tensors, or lists of per-sample (L, 2) tensors as
    ``monai.handlers.from_engine(["points", "landmarks"])`` gives on decollated outputs. Sums and counts are
    all-reduced across processes, so every rank computes the same value.
    """

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu",
                 pixel_size_mm: float | None = None) -> None:
        self.pixel_size_mm = pixel_size_mm
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = 0

    @reinit__is_reduced
    def update(self, output) -> None:
        pred, target = (_stack_points(x) for x in output)
        if pred.shape != target.shape:
            raise ValueError(f"RadialErrorMetric: predicted points {tuple(pred.shape)} and targets "
                             f"{tuple(target.shape)} must have the same shape.")
        errors = torch.linalg.vector_norm(pred - target, dim=-1)
        self._sum += errors.sum().to(self._device)
        self._count += errors.numel()

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if self._count == 0:
            raise NotComputableError("RadialErrorMetric needs at least one landmark before it can be computed.")
        error = float(self._sum.item() / self._count)
        return error * float(self.pixel_size_mm) if self.pixel_size_mm is not None else error


# --- multi-task classification (masked labels) --------------------------------------------------------------------


def _nan_mean(values) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def multitask_metrics(probs, labels, tasks=None, num_grades: int = 5, threshold: float = 0.5) -> dict[str, float]:
    """Per-task AUROC and F1 of the multi-task head, each over the images labelled for that task only.

    Args:
        probs: (N, G + T) probabilities: softmax over the G grade outputs, then one sigmoid per binary task.
        labels: (N, 1 + T): the grade (0..G-1) then the binary labels (0/1); negative (-1) or NaN = unknown.
        tasks: names of the 1 + T tasks (default: :data:`visionfm_core.models.multitask.MULTITASK_TASKS`).
        threshold: binary decision for F1 (probability >= threshold).

    Returns (flat): ``<task>_auroc``, ``<task>_f1``, ``<task>_num_labelled`` per task, and ``macro_auroc`` /
    ``macro_f1``, the means over the tasks whose value is defined. The grade's AUROC is the macro one-vs-rest
    AUROC over the grades present and its F1 the macro F1 (as :func:`classification_metrics`); a binary task's AUROC
    is ``nan`` unless both classes occur, and any metric of a task without labelled images is ``nan``.
    """
    if tasks is None:
        from .models.multitask import MULTITASK_TASKS as tasks  # noqa: N811
    tasks = list(tasks)
    p = _numpy(probs).astype(np.float64)
    y = np.nan_to_num(_numpy(labels).astype(np.float64), nan=-1.0)
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
        else:
            score = p[known, num_grades + t - 1]
            out[f"{task}_auroc"] = float(roc_auc_score(yt, score)) if len(np.unique(yt)) == 2 else math.nan
            out[f"{task}_f1"] = float(f1_score(yt, score >= threshold, zero_division=0))
    out["macro_auroc"] = _nan_mean([out[f"{t}_auroc"] for t in tasks])
    out["macro_f1"] = _nan_mean([out[f"{t}_f1"] for t in tasks])
    return out


def _stack_pair(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) batches as plain float tensors, from tensors or from lists of per-sample tensors."""
    def stack(x):
        if isinstance(x, (list, tuple)):
            x = torch.stack([torch.as_tensor(v).as_subclass(torch.Tensor) for v in x])
        return torch.as_tensor(x).as_subclass(torch.Tensor).detach().float()
    y_pred, y = output
    return stack(y_pred), stack(y)


class MultiTaskMetric(EpochMetric):
    """An ignite metric over an epoch: one value of :func:`multitask_metrics` (``macro_auroc`` by default, the
    multi-task bundle's key metric; or ``macro_f1``, ``<task>_auroc``, ``<task>_f1``). ``update`` takes
    ``(probs, labels)`` batches or lists of per-sample tensors (``monai.handlers.from_engine(["pred", "labels"])``);
    all-gathered across processes by :class:`ignite.metrics.EpochMetric`."""

    def __init__(self, metric_name: str = "macro_auroc", output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu", tasks=None, num_grades: int = 5) -> None:
        if tasks is None:
            from .models.multitask import MULTITASK_TASKS as tasks  # noqa: N811
        names = ["macro_auroc", "macro_f1", *[f"{t}_{m}" for t in tasks for m in ("auroc", "f1")]]
        if metric_name not in names:
            raise ValueError(f"Unknown multi-task metric {metric_name!r}; choose one of {', '.join(names)}.")
        self.metric_name = metric_name
        fn = lambda p, y: multitask_metrics(p, y, tasks, num_grades)[metric_name]  # noqa: E731
        super().__init__(fn, output_transform=output_transform, check_compute_fn=False, device=device)

    def update(self, output) -> None:
        super().update(_stack_pair(output))


# --- regression (masked targets) ----------------------------------------------------------------------------------

REGRESSION_METRIC_NAMES = ("mae", "rmse", "r2", "pearson_r", "mean_relative_error")


def _regression_one(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    err = pred - target
    n = target.size
    out = {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean()))}
    ss_tot = float(((target - target.mean()) ** 2).sum())
    out["r2"] = 1.0 - float((err ** 2).sum()) / ss_tot if n >= 2 and ss_tot > 0 else math.nan
    sp, st = pred - pred.mean(), target - target.mean()
    denom = math.sqrt(float((sp ** 2).sum()) * float((st ** 2).sum()))
    out["pearson_r"] = float((sp * st).sum()) / denom if n >= 2 and denom > 0 else math.nan
    nonzero = target != 0
    out["mean_relative_error"] = float((np.abs(err[nonzero]) / np.abs(target[nonzero])).mean()) \
        if nonzero.any() else math.nan
    return out


def regression_metrics(pred, target, target_names=None) -> dict[str, float]:
    """Per-target regression metrics in each target's own unit, missing targets (NaN) masked per target.

    Args:
        pred: (N, K) predictions in the targets' units.
        target: (N, K) true values, NaN where unknown (the other targets of that row still count).
        target_names: K names for the keys (default ``target_0`` ...).

    Returns (flat), per target ``<name>_mae``, ``<name>_rmse`` (in the target's unit), ``<name>_r2`` (coefficient
    of determination, ``nan`` with < 2 values or constant targets), ``<name>_pearson_r`` (``nan`` when either side
    is constant), ``<name>_mean_relative_error`` (mean of |pred - y| / |y| over the values with y != 0: the
    quantity the original VisionFM code reported as "MAE"; a fraction, not a unit) and ``<name>_num_values``; then
    ``macro_<metric>``, the mean over the targets where the metric is defined (a mean of MAEs mixes units: compare
    the per-target values, or ``macro_r2``).
    """
    p = _numpy(pred).astype(np.float64)
    y = _numpy(target).astype(np.float64)
    if p.ndim == 1:
        p, y = p[:, None], y.reshape(-1, 1)
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"regression_metrics: pred {p.shape} and target {y.shape} must both be (N, K).")
    names = list(target_names) if target_names is not None else [f"target_{j}" for j in range(p.shape[1])]
    if len(names) != p.shape[1]:
        raise ValueError(f"regression_metrics: {p.shape[1]} outputs but {len(names)} target names {names}.")
    if not np.isfinite(p).all():
        raise ValueError("regression_metrics: predictions contain NaN or infinity.")
    out: dict[str, float] = {}
    for j, name in enumerate(names):
        present = ~np.isnan(y[:, j])
        values = _regression_one(p[present, j], y[present, j]) if present.any() \
            else dict.fromkeys(REGRESSION_METRIC_NAMES, math.nan)
        out.update({f"{name}_{m}": v for m, v in values.items()})
        out[f"{name}_num_values"] = int(present.sum())
    for m in REGRESSION_METRIC_NAMES:
        out[f"macro_{m}"] = _nan_mean([out[f"{n}_{m}"] for n in names])
    return out


class RegressionMetric(EpochMetric):
    """An ignite metric over an epoch: one value of :func:`regression_metrics`, ``macro_r2`` by default (the
    regression bundle's key metric: unit-free, higher is better) or ``macro_<metric>`` / ``<name>_<metric>``
    (with ``target_names``). ``update`` takes ``(pred, targets)`` batches or lists of per-sample tensors."""

    def __init__(self, metric_name: str = "macro_r2", output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu", target_names=None) -> None:
        names = [f"macro_{m}" for m in REGRESSION_METRIC_NAMES]
        names += [f"{n}_{m}" for n in (target_names or []) for m in REGRESSION_METRIC_NAMES]
        if metric_name not in names:
            raise ValueError(f"Unknown regression metric {metric_name!r}; choose one of {', '.join(names)}.")
        self.metric_name = metric_name
        names_list = list(target_names) if target_names is not None else None
        fn = lambda p, y: regression_metrics(p, y, names_list)[metric_name]  # noqa: E731
        super().__init__(fn, output_transform=output_transform, check_compute_fn=False, device=device)

    def update(self, output) -> None:
        super().update(_stack_pair(output))


# --- forecasting (binary, one logit per image: will the eye progress within the interval?) -------------------------

FORECASTING_METRIC_NAMES = ("auroc", "aupr", "f1", "sensitivity", "specificity", "accuracy")


def forecasting_metrics(prob, labels, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of a progression forecast from the probability of progression (N,) and labels 0/1 (N,).

    AUROC and AUPR (average precision) rank by the probability; F1 (of the positive class, progression),
    sensitivity, specificity and accuracy are at ``prob >= threshold``. AUROC/AUPR are ``nan`` when only one
    class is present, sensitivity (specificity) when there is no positive (negative).
    """
    p = _numpy(prob).astype(np.float64).reshape(-1)
    y = _numpy(labels).reshape(-1)
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
__all__ += ["FORECASTING_METRIC_NAMES", "forecasting_metrics", "ForecastingMetric"]
