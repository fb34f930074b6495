"""Metrics: classification (hand-computed values, absent classes, the ignite EpochMetric wrapper), segmentation
(Dice, clDice, pixel metrics inside the FOV) and landmarks (mean radial error)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from visionfm_core.tasks.landmarks import RadialErrorMetric, mean_radial_error


def test_mean_radial_error_3_4_5():
    target = np.array([[[10.0, 20.0], [0.0, 0.0]]])
    pred = np.array([[[13.0, 24.0], [0.0, 0.0]]])  # errors 5 and 0
    got = mean_radial_error(pred, target)
    assert got["mre_px"] == pytest.approx(2.5) and got["mre_px_per_landmark"] == pytest.approx([5.0, 0.0])
    assert got["num_images"] == 1 and "mre_mm" not in got
    mm = mean_radial_error(pred[0], target[0], pixel_size_mm=0.5)  # (L, 2) input; 5 px = 2.5 mm
    assert mm["mre_mm"] == pytest.approx(1.25) and mm["mre_mm_per_landmark"] == pytest.approx([2.5, 0.0])
    assert mm["sdr_2mm"] == pytest.approx(0.5) and mm["sdr_4mm"] == pytest.approx(1.0)
    # two images with their own pixel sizes
    two = mean_radial_error(np.concatenate([pred, pred]), np.concatenate([target, target]), pixel_size_mm=[0.5, 1.0])
    assert two["mre_mm_per_landmark"] == pytest.approx([3.75, 0.0]) and two["radial_errors_px"] == [[5, 0], [5, 0]]
    with pytest.raises(ValueError, match="same shape"):
        mean_radial_error(pred[:, :1], target)
    with pytest.raises(ValueError, match="non-finite"):
        mean_radial_error(pred * np.nan, target)
    with pytest.raises(ValueError, match="pixel_size_mm must be one positive number"):
        mean_radial_error(pred, target, pixel_size_mm=-1)


def test_radial_error_metric_in_an_engine():
    # decollated outputs, read with MONAI's from_engine as the landmark bundles do
    from monai.handlers import from_engine

    rng = np.random.default_rng(0)
    pred, target = rng.uniform(0, 50, (2, 5, 3, 2))
    batches = [[{"points": torch.tensor(p), "landmarks": torch.tensor(t)} for p, t in zip(pred[:3], target[:3])],
               [{"points": torch.tensor(p), "landmarks": torch.tensor(t)} for p, t in zip(pred[3:], target[3:])]]
    engine = Engine(lambda e, batch: batch)
    RadialErrorMetric(output_transform=from_engine(["points", "landmarks"])).attach(engine, "mre")
    RadialErrorMetric(output_transform=from_engine(["points", "landmarks"]), pixel_size_mm=0.1).attach(engine, "mm")
    metrics = engine.run(batches, max_epochs=2).metrics
    assert metrics["mre"] == pytest.approx(mean_radial_error(pred, target)["mre_px"])
    assert metrics["mm"] == pytest.approx(mean_radial_error(pred, target, pixel_size_mm=0.1)["mre_mm"])
    with pytest.raises(ValueError, match="must have the same shape"):
        RadialErrorMetric().update((torch.zeros(2, 3, 2), torch.zeros(2, 2, 2)))
