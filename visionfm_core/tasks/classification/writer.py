"""Classification outputs: predictions.csv (probabilities and predicted class) and metrics.json."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine

from visionfm_core.engine.writers import TableWriter, readable_samples, sample_filename
from visionfm_core.tasks.classification.metrics import classification_metrics

__all__ = ["ClassificationWriter"]


class ClassificationWriter(TableWriter):
    """Collect per-image class probabilities during an evaluator run and, when it completes, write
    `predictions.csv` and `predictions.json` (image, probabilities, predicted class, label if known, and a
    `warning`: why the image does not look like the bundle's modality, "" when it does) and, when labels are
    present, `metrics.json` (:func:`visionfm_core.tasks.classification.metrics.classification_metrics`). Files are written atomically,
    and only once the run has finished, so an interrupted run never leaves a partial table behind."""

    def __init__(self, output_dir: str, class_names: Sequence[str], prefix: str = "predictions"):
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.prefix = prefix
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        for _, sample, warning in readable_samples(engine):
            probs = torch.as_tensor(sample["pred"]).detach().float().cpu().reshape(-1).numpy()
            if probs.shape[0] != len(self.class_names):
                raise ValueError(f"network gave {probs.shape[0]} outputs but {len(self.class_names)} classes are named "
                                 f"({self.class_names}): the model was trained with another class list")
            row = {"image": sample_filename(sample), "probabilities": probs.tolist(), "pred": int(probs.argmax())}
            label = sample.get("label")
            if label is not None:
                row["label"] = int(torch.as_tensor(label).reshape(-1)[0])
            row["warning"] = warning
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        has_label = bool(self.rows) and all("label" in r for r in self.rows)
        header = (["image", *[f"prob_{c}" for c in self.class_names], "pred", "pred_name"]
                  + (["label"] if has_label else []) + ["warning"])
        table = [[r["image"], *[f"{p:.6f}" for p in r["probabilities"]], r["pred"], self.class_names[r["pred"]]]
                 + ([r["label"]] if has_label else []) + [r["warning"]] for r in self.rows]
        metrics = None
        if has_label:
            metrics = classification_metrics(np.array([r["probabilities"] for r in self.rows]),
                                              np.array([r["label"] for r in self.rows]))
            metrics["num_images"] = len(self.rows)
        self._save(header, table, [{**r, "pred_name": self.class_names[r["pred"]]} for r in self.rows], metrics)
        engine.logger.info("wrote %d predictions to %s", len(self.rows), self.output_dir)
