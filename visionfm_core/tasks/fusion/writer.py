"""Multi-modal fusion outputs: class probabilities with the modalities each patient had."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine

from visionfm_core.engine.writers import TableWriter, batch_value, readable_samples
from visionfm_core.tasks.classification.metrics import classification_metrics

__all__ = ["FusionWriter"]


class FusionWriter(TableWriter):
    """Per-patient predictions of a fusion evaluator run, written when it completes: `predictions.csv` and
    `predictions.json` (patient_id, the modalities present, each modality's image, probabilities per class name,
    prediction, label if known, warnings) and, with labels, `metrics.json`
    (:func:`visionfm_core.tasks.classification.metrics.classification_metrics`). Atomic, and only on completion."""

    def __init__(self, output_dir: str, class_names: Sequence[str], modalities: Sequence[str],
                 prefix: str = "predictions"):
        from visionfm_core.tasks.fusion.transforms import modality_key

        self.output_dir, self.prefix = output_dir, prefix
        self.class_names = [str(c) for c in class_names]
        self.keys = [modality_key(m) for m in modalities]
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        for i, sample, warning in readable_samples(engine):
            probs = torch.as_tensor(sample["pred"]).detach().float().cpu().reshape(-1).numpy()
            if probs.shape[0] != len(self.class_names):
                raise ValueError(f"network gave {probs.shape[0]} outputs but {len(self.class_names)} classes are named "
                                 f"({self.class_names})")
            present = torch.as_tensor(batch_value(engine, i, sample, "present")).reshape(-1).tolist()
            row = {"patient_id": str(batch_value(engine, i, sample, "patient_id") or ""),
                   "present": [k for k, p in zip(self.keys, present) if p > 0.5],
                   "images": {k: str(batch_value(engine, i, sample, k) or "") for k in self.keys},
                   "probabilities": dict(zip(self.class_names, probs.tolist())), "pred": int(probs.argmax())}
            row["pred_name"] = self.class_names[row["pred"]]
            label = sample.get("label")
            if label is not None:
                row["label"] = int(torch.as_tensor(label).reshape(-1)[0])
            row["warning"] = warning
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        has_label = bool(self.rows) and all("label" in r for r in self.rows)
        header = (["patient_id", "present", *self.keys, *[f"prob_{c}" for c in self.class_names], "pred", "pred_name"]
                  + (["label"] if has_label else []) + ["warning"])
        rows = [[r["patient_id"], "+".join(r["present"]), *[r["images"][k] for k in self.keys],
                 *[f"{r['probabilities'][c]:.6f}" for c in self.class_names], r["pred"], r["pred_name"]]
                + ([r["label"]] if has_label else []) + [r["warning"]] for r in self.rows]
        metrics = None
        if has_label:
            metrics = classification_metrics(np.array([list(r["probabilities"].values()) for r in self.rows]),
                                              np.array([r["label"] for r in self.rows]))
            metrics["num_patients"] = len(self.rows)
        self._save(header, rows, self.rows, metrics)
        engine.logger.info("wrote %d patient predictions to %s", len(self.rows), self.output_dir)
