"""Segmentation metrics (retinal vessels): Dice, clDice, AUROC, sensitivity, specificity and accuracy per image,
inside the field of view when a FOV mask is given, as is usual for DRIVE-style benchmarks."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    roc_auc_score,
)

from visionfm_core.engine.metric_utils import to_numpy

__all__ = ["SEGMENTATION_METRIC_NAMES", "dice", "cldice", "segmentation_metrics"]


SEGMENTATION_METRIC_NAMES = ("dice", "cldice", "auroc", "sensitivity", "specificity", "accuracy")


def _mask(x, name: str) -> np.ndarray:
    """A boolean array from a binary mask (bool, {0, 1} numbers); a leading channel of 1 is dropped."""
    a = to_numpy(x)
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
    p = to_numpy(prob).astype(np.float64)
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
