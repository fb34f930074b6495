"""Multi-disease outputs: one probability per disease and grade, and the metrics per task."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ignite.engine import Engine

from visionfm_core.engine.writers import TableWriter, as_array, readable_samples, sample_filename

__all__ = ["MultiTaskWriter"]


class MultiTaskWriter(TableWriter):
    """Tables of the multi-task head when the run completes: `predictions.csv` / `predictions.json` (image, the 13
    probabilities named `prob_<output>`, the predicted label of each task `pred_<task>` (grade = argmax of the
    grade probabilities, binary = probability >= `threshold`), the known labels `label_<task>` (empty / null where
    unknown; only when the run has labels) and `warning` from `ModalityCheckd`) and, when any label is known,
    `metrics.json` (:func:`visionfm_core.tasks.multitask.metrics.multitask_metrics`: per task and macro AUROC / F1). Written
    atomically, only once the run has finished."""

    def __init__(self, output_dir: str, tasks: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                 num_grades: int = 5, threshold: float = 0.5, prefix: str = "predictions", label_key: str = "label"):
        from visionfm_core.tasks.multitask.head import MULTITASK_OUTPUTS, MULTITASK_TASKS

        self.output_dir = output_dir
        self.tasks = list(tasks or MULTITASK_TASKS)
        self.output_names = list(output_names or MULTITASK_OUTPUTS)
        self.num_grades, self.threshold = int(num_grades), float(threshold)
        self.prefix, self.label_key = prefix, label_key
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        for _, sample, warning in readable_samples(engine):
            probs = as_array(sample["pred"]).reshape(-1).astype(np.float64)
            image = sample_filename(sample)
            if probs.shape[0] != len(self.output_names):
                raise ValueError(f"network gave {probs.shape[0]} outputs for {image} but the multi-task head has "
                                 f"{len(self.output_names)} ({self.output_names})")
            pred = [int(probs[: self.num_grades].argmax())]
            pred += [int(p >= self.threshold) for p in probs[self.num_grades:]]
            label = sample.get(self.label_key)
            labels = [None] * len(self.tasks)
            if label is not None and not isinstance(label, (str, dict)):
                values = np.nan_to_num(as_array(label).reshape(-1), nan=-1.0)
                labels = [int(v) if v >= 0 else None for v in values]
            self.rows.append({"image": image, "probabilities": probs.tolist(), "pred": pred, "labels": labels,
                              "warning": warning})

    def _write(self, engine: Engine) -> None:
        has_labels = any(v is not None for r in self.rows for v in r["labels"])
        header = (["image", *[f"prob_{n}" for n in self.output_names], *[f"pred_{t}" for t in self.tasks]]
                  + ([f"label_{t}" for t in self.tasks] if has_labels else []) + ["warning"])
        table = [[r["image"], *[f"{p:.6f}" for p in r["probabilities"]], *r["pred"],
                  *(["" if v is None else v for v in r["labels"]] if has_labels else []), r["warning"]]
                 for r in self.rows]
        records = []
        for r in self.rows:
            record = {"image": r["image"], "probabilities": dict(zip(self.output_names, r["probabilities"])),
                      "pred": dict(zip(self.tasks, r["pred"]))}
            if has_labels:
                record["labels"] = dict(zip(self.tasks, r["labels"]))
            record["warning"] = r["warning"]
            records.append(record)
        metrics = None
        if has_labels:
            from visionfm_core.tasks.multitask.metrics import multitask_metrics

            labels = np.array([[-1 if v is None else v for v in r["labels"]] for r in self.rows])
            metrics = multitask_metrics(np.array([r["probabilities"] for r in self.rows]), labels, self.tasks,
                                        self.num_grades, self.threshold)
            metrics["num_images"] = len(self.rows)
        self._save(header, table, records, metrics)
        engine.logger.info("wrote %d multi-task predictions to %s", len(self.rows), self.output_dir)
