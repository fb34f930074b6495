"""Progression forecasting outputs: risk per visit pair and its metrics."""

from __future__ import annotations

import numpy as np
import torch
from ignite.engine import Engine

from visionfm_core.engine.writers import TableWriter, batch_value, readable_samples, sample_filename

__all__ = ["forecast_pred_label", "ForecastingWriter"]


def forecast_pred_label(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability of progression (B,), label (B,)) from a MONAI engine output, decollated or not."""
    if isinstance(output, dict):
        return output["pred"].reshape(-1), output["label"].reshape(-1)
    return (torch.stack([torch.as_tensor(o["pred"]).reshape(()) for o in output]),
            torch.stack([torch.as_tensor(o["label"]).reshape(()) for o in output]))


class ForecastingWriter(TableWriter):
    """Progression forecasts of an evaluator run, written when it completes: `predictions.csv` and
    `predictions.json` (image, followup, interval_days, probability = P(progression within interval_days),
    prediction = probability >= threshold, label if known, warning from ModalityCheckd) and, with labels,
    `metrics.json` (:func:`visionfm_core.tasks.forecasting.metrics.forecasting_metrics`). Atomic, and only on completion."""

    def __init__(self, output_dir: str, threshold: float = 0.5, prefix: str = "predictions"):
        self.output_dir, self.threshold, self.prefix = output_dir, float(threshold), prefix
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        for i, sample, warning in readable_samples(engine):
            prob = float(torch.as_tensor(sample["pred"]).detach().float().reshape(-1)[0])
            interval = batch_value(engine, i, sample, "interval_days")
            row = {"image": sample_filename(sample), "followup": str(batch_value(engine, i, sample, "followup") or ""),
                   "interval_days": float(torch.as_tensor(interval).reshape(-1)[0]) if interval is not None else None,
                   "probability": prob, "prediction": int(prob >= self.threshold)}
            label = sample.get("label")
            if label is not None:
                row["label"] = int(torch.as_tensor(label).reshape(-1)[0])
            row["warning"] = warning
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        from visionfm_core.tasks.forecasting.metrics import forecasting_metrics

        has_label = bool(self.rows) and all("label" in r for r in self.rows)
        header = ["image", "followup", "interval_days", "probability", "prediction"] + (["label"] if has_label else [])
        rows = [[r["image"], r["followup"], r["interval_days"], f"{r['probability']:.6f}", r["prediction"]]
                + ([r["label"]] if has_label else []) + [r["warning"]] for r in self.rows]
        metrics = None
        if has_label:
            metrics = forecasting_metrics(np.array([r["probability"] for r in self.rows]),
                                          np.array([r["label"] for r in self.rows]), self.threshold)
            metrics.update(num_images=len(self.rows), threshold=self.threshold)
        self._save(header + ["warning"], rows, self.rows, metrics)
        engine.logger.info("wrote %d forecasts to %s", len(self.rows), self.output_dir)
