"""Metrics reported for VisionFM downstream tasks.

Classification: accuracy, AUROC, AUPR, quadratic kappa, F1. Validation splits of ophthalmic datasets are small and
often miss a rare grade entirely; the metrics here skip absent classes (instead of crashing as
``roc_auc_score(multi_class="ovr")`` does) so an epoch never fails on it.

Segmentation (retinal vessels): Dice, clDice, AUROC, sensitivity, specificity and accuracy, computed per image and
only inside the field of view (FOV) when a FOV mask is given, as is usual for DRIVE-style benchmarks.

Landmarks: mean radial error in pixels of the original image, and in mm when the pixel size is known.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric, Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from sklearn.metrics import accuracy_score, average_precision_score, cohen_kappa_score, f1_score, roc_auc_score

__all__ = [
    "METRIC_NAMES",
    "classification_metrics",
    "ClassificationMetric",
    "SEGMENTATION_METRIC_NAMES",
    "dice",
    "cldice",
    "segmentation_metrics",
    "mean_radial_error",
    "RadialErrorMetric",
]

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
