"""Metrics: classification (hand-computed values, absent classes, the ignite EpochMetric wrapper), segmentation
(Dice, clDice, pixel metrics inside the FOV) and landmarks (mean radial error)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionfm_core.tasks.segmentation import SEGMENTATION_METRIC_NAMES, cldice, dice, segmentation_metrics

# 4x4 by hand: P has 5 pixels, L has 4, they share 3 -> Dice = 2*3 / (5 + 4) = 2/3.
P4 = np.array([[1, 1, 0, 0],
               [1, 0, 0, 0],
               [0, 1, 0, 0],
               [0, 0, 0, 1]])


L4 = np.array([[1, 1, 0, 0],
               [0, 1, 0, 0],
               [0, 1, 0, 0],
               [0, 0, 0, 0]])


# FOV = left half: P has 4 pixels there, L 4, shared 3 -> 6/8; the FP at (3, 3) no longer counts.
FOV4 = np.zeros((4, 4), int)
FOV4[:, :2] = 1


def test_dice_by_hand_and_fov():
    assert dice(P4, L4) == pytest.approx(2 / 3)
    assert dice(P4, L4, FOV4) == pytest.approx(6 / 8)
    assert dice(torch.tensor(P4)[None].bool(), torch.tensor(L4)[None]) == pytest.approx(2 / 3)  # (1, H, W) tensors
    assert dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0 and dice(np.zeros((4, 4)), L4) == 0.0


def test_dice_agrees_with_monai():
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    for _ in range(5):
        p, y = rng.random((2, 37, 41)) > 0.6
        metric = DiceMetric(include_background=True, reduction="mean")
        metric(torch.tensor(p)[None, None].float(), torch.tensor(y)[None, None].float())
        assert dice(p, y) == pytest.approx(metric.aggregate().item(), abs=1e-6)


def test_binary_inputs_required():
    with pytest.raises(ValueError, match=r"pred must be a binary mask.*0.3.*threshold probabilities first"):
        dice(P4 * 0.3, L4)
    with pytest.raises(ValueError, match=r"label must be a binary mask.*255"):
        dice(P4, L4 * 255)
    with pytest.raises(ValueError, match=r"pred has shape \(4, 4\) but label has shape \(4, 5\)"):
        dice(P4, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="field-of-view mask is empty"):
        dice(P4, L4, np.zeros((4, 4)))


def capsule() -> np.ndarray:
    # A 3-pixel-wide vessel with rounded ends (26 px); its skeleton is the middle row, columns 2..9 (8 px).
    label = np.zeros((5, 12), bool)
    label[1:4, 2:10] = True
    label[2, 1] = label[2, 10] = True
    return label


def test_cldice_identical_and_broken_line():
    label = capsule()
    assert cldice(label, label) == 1.0
    # Prediction: a 1-px centre line through the vessel, broken at columns 5-6 (its own skeleton, 8 px).
    pred = np.zeros((5, 12), bool)
    pred[2, 1:5] = pred[2, 7:11] = True
    # Tprec = |S(P) ∩ L| / |S(P)| = 8/8; Tsens = |S(L) ∩ P| / |S(L)| = {2,3,4,7,8,9} = 6/8
    # clDice = 2 * 1 * 0.75 / 1.75 = 6/7, while Dice punishes the thin line: 2*8 / (8 + 26).
    assert cldice(pred, label) == pytest.approx(6 / 7)
    assert dice(pred, label) == pytest.approx(16 / 34)
    assert cldice(np.zeros_like(label), label) == 0.0 and cldice(np.zeros_like(label), np.zeros_like(label)) == 1.0
    # cutting both to a FOV that holds only the left part: both skeletons fully agree there
    fov = np.zeros_like(label)
    fov[:, :5] = True
    assert cldice(pred, label, fov) == pytest.approx(1.0)


def test_segmentation_metrics_by_hand():
    prob = np.array([[0.9, 0.8, 0.1, 0.2],
                     [0.7, 0.4, 0.3, 0.0],
                     [0.2, 0.6, 0.1, 0.1],
                     [0.0, 0.1, 0.3, 0.55]])  # >= 0.5 gives exactly P4
    got = segmentation_metrics(prob, L4)
    assert set(got) == set(SEGMENTATION_METRIC_NAMES)
    # TP 3, FP 2, FN 1, TN 10
    assert got["dice"] == pytest.approx(2 / 3) and got["sensitivity"] == pytest.approx(3 / 4)
    assert got["specificity"] == pytest.approx(10 / 12) and got["accuracy"] == pytest.approx(13 / 16)
    assert got["cldice"] == pytest.approx(cldice(P4, L4))
    # AUROC by hand: positives {0.9, 0.8, 0.4, 0.6}; negatives above 0.4: 0.7, 0.55 -> 2 lost pairs of 48;
    # above 0.6: 0.7 -> 1 lost; none above 0.8 -> (48 - 3) / 48
    assert got["auroc"] == pytest.approx(45 / 48)

    inside = segmentation_metrics(torch.tensor(prob)[None], torch.tensor(L4)[None], FOV4)  # (1, H, W) tensors
    # in the FOV (8 pixels): TP 3, FP 1 (0.7), FN 1 (0.4), TN 3
    assert inside["dice"] == pytest.approx(6 / 8) and inside["specificity"] == pytest.approx(3 / 4)
    assert inside["accuracy"] == pytest.approx(6 / 8)
    assert inside["cldice"] == pytest.approx(cldice(P4, L4, FOV4))

    empty = segmentation_metrics(prob, np.zeros((4, 4)))
    assert math.isnan(empty["auroc"]) and math.isnan(empty["sensitivity"]) and empty["dice"] == 0.0
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*sigmoid"):
        segmentation_metrics(prob * 3, L4)
