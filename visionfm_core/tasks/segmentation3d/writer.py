"""Tables of 3-D segmentation runs (mri_orbit_segmentation): per-volume Dice per structure, structure volumes.

Both are MONAI/ignite handlers written like the other families' writers (`visionfm_core.engine.writers`): rows collected as batches complete, tables
written atomically only once the run has COMPLETED (an interrupted run leaves no partial table). The label maps
themselves are written by MONAI's `SaveImaged` in the bundle's postprocessing, on the input's grid.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine

from visionfm_core.engine.metric_utils import nan_mean
from visionfm_core.engine.writers import TableWriter, batch_value, readable_samples, sample_filename

__all__ = ["VolumeDiceWriter", "StructureVolumesWriter", "label_indices", "dice_per_structure"]


def label_indices(x) -> np.ndarray:
    """(1, I, J, K) label indices, or (C, I, J, K) probabilities / one-hot -> (I, J, K) int array."""
    a = x.detach().as_subclass(torch.Tensor).cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a[0].round().astype(np.int64) if a.shape[0] == 1 else a.argmax(0)


def dice_per_structure(pred: np.ndarray, label: np.ndarray, num_classes: int) -> list[float]:
    """Dice of classes 1 .. num_classes - 1 (background left out); NaN where a class is in neither."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} are on different grids")
    out = []
    for c in range(1, num_classes):
        p, t = pred == c, label == c
        total = int(p.sum()) + int(t.sum())
        out.append(float("nan") if total == 0 else 2.0 * int((p & t).sum()) / total)
    return out


def _voxel_ml(sample: dict) -> float:
    """Volume of one voxel in mL from the prediction's affine (1 when it has none)."""
    pred = sample.get("pred")
    affine = getattr(pred, "affine", None)
    if affine is None:
        return 1.0
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return float(np.prod(spacing)) / 1000.0


class VolumeDiceWriter(TableWriter):
    """Per volume, the Dice of every structure (`dice.csv`, `dice.json`) and `metrics.json`: the mean Dice of each
    structure over the volumes (`dice_<name>`) and their mean (`mean_dice`). Prediction (label indices or
    probabilities) and label must be on the same grid (the bundle puts the prediction back on the input's)."""

    def __init__(self, output_dir: str, class_names: Sequence[str], prefix: str = "dice"):
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.prefix = prefix
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        for i, sample, warning in readable_samples(engine):
            label = batch_value(engine, i, sample, "label")
            if label is None:
                raise ValueError(f"{sample_filename(sample)}: evaluation needs a label map ('label') for every volume")
            dice = dice_per_structure(label_indices(sample["pred"]), label_indices(label), len(self.class_names))
            self.rows.append({"image": sample_filename(sample), **{f"dice_{n}": d for n, d in
                                                             zip(self.class_names[1:], dice)}, "warning": warning})

    def _write(self, engine: Engine) -> None:
        names = [f"dice_{n}" for n in self.class_names[1:]]
        table = [[r["image"], *[_fmt(r[n]) for n in names], r["warning"]] for r in self.rows]
        means = {n: nan_mean([r[n] for r in self.rows]) for n in names}
        metrics = {**means, "mean_dice": nan_mean(list(means.values())), "volumes": len(self.rows)}
        self._save(["image", *names, "warning"], table, self.rows, metrics)


class StructureVolumesWriter(TableWriter):
    """Inference summary `volumes.csv` / `volumes.json`: per input volume, its grid (shape, spacing in mm) and the
    volume in mL of every structure in the predicted label map, plus a warning column (`warning_key`, e.g. from a
    spacing check; "" when none)."""

    def __init__(self, output_dir: str, class_names: Sequence[str], prefix: str = "volumes",
                 warning_key: str = "volume_warning"):
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.prefix = prefix
        self.warning_key = warning_key
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        for i, sample, _ in readable_samples(engine):
            labels = label_indices(sample["pred"])
            affine = getattr(sample["pred"], "affine", None)
            spacing = (np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0).round(4).tolist()
                       if affine is not None else [1.0, 1.0, 1.0])
            ml = _voxel_ml(sample)
            warning = batch_value(engine, i, sample, self.warning_key)
            self.rows.append({"image": sample_filename(sample), "shape": list(labels.shape), "spacing_mm": spacing,
                              **{f"{n}_ml": round(float((labels == c).sum()) * ml, 4)
                                 for c, n in enumerate(self.class_names) if c > 0},
                              "warning": str(warning or "")})

    def _write(self, engine: Engine) -> None:
        names = [f"{n}_ml" for n in self.class_names[1:]]
        table = [[r["image"], "x".join(map(str, r["shape"])), "x".join(map(str, r["spacing_mm"])),
                  *[r[n] for n in names], r["warning"]] for r in self.rows]
        self._save(["image", "shape", "spacing_mm", *names, "warning"], table, self.rows, None)


def _fmt(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.4f}"
