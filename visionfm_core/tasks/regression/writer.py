"""Biomarker regression outputs: predictions in the targets' units and their metrics."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from visionfm_core.engine.writers import TableWriter, as_array, readable_samples, sample_filename

__all__ = ["RegressionWriter", "TargetStatsHandler"]


class RegressionWriter(TableWriter):
    """Tables of a regression run when it completes: `predictions.csv` (image, one column per target named
    `<name> [<unit>]`, the true values `true <name> [<unit>]` where known (only when the run has targets), and
    `warning`), `predictions.json` (per image: {name: value}, targets where known, units, warning) and, when any
    target is known, `metrics.json` (:func:`visionfm_core.tasks.regression.metrics.regression_metrics`: MAE, RMSE, R2, Pearson r and
    mean relative error per target in its unit, missing values masked per target). Written atomically, once."""

    def __init__(self, output_dir: str, target_names: Sequence[str], target_units: Sequence[str] | None = None,
                 prefix: str = "predictions", label_key: str = "label"):
        self.output_dir = output_dir
        self.names = [str(n) for n in target_names]
        self.units = [str(u) for u in target_units] if target_units is not None else [""] * len(self.names)
        if len(self.units) != len(self.names):
            raise ValueError(f"RegressionWriter: {len(self.names)} target names but {len(self.units)} units")
        self.prefix, self.label_key = prefix, label_key
        self.rows: list[dict] = []

    def _column(self, name: str, unit: str) -> str:
        return f"{name} [{unit}]" if unit else name

    def _collect(self, engine: Engine) -> None:
        for _, sample, warning in readable_samples(engine):
            pred = as_array(sample["pred"]).reshape(-1).astype(np.float64)
            image = sample_filename(sample)
            if pred.shape[0] != len(self.names):
                raise ValueError(f"network gave {pred.shape[0]} outputs for {image} but {len(self.names)} targets are "
                                 f"named ({self.names}): the model was trained with another target list")
            label = sample.get(self.label_key)
            target = [None] * len(self.names)
            if label is not None and not isinstance(label, (str, dict)):
                target = [None if np.isnan(v) else float(v) for v in as_array(label).reshape(-1).astype(np.float64)]
            self.rows.append({"image": image, "pred": pred.tolist(), "target": target, "warning": warning})

    def _write(self, engine: Engine) -> None:
        has_targets = any(v is not None for r in self.rows for v in r["target"])
        columns = [self._column(n, u) for n, u in zip(self.names, self.units)]
        header = ["image", *columns] + ([f"true {c}" for c in columns] if has_targets else []) + ["warning"]
        table = [[r["image"], *[f"{v:.6g}" for v in r["pred"]],
                  *(["" if v is None else f"{v:.6g}" for v in r["target"]] if has_targets else []), r["warning"]]
                 for r in self.rows]
        records = []
        for r in self.rows:
            record = {"image": r["image"], "pred": dict(zip(self.names, r["pred"]))}
            if has_targets:
                record["target"] = dict(zip(self.names, r["target"]))
            record.update(units=dict(zip(self.names, self.units)), warning=r["warning"])
            records.append(record)
        metrics = None
        if has_targets:
            from visionfm_core.tasks.regression.metrics import regression_metrics

            target = np.array([[np.nan if v is None else v for v in r["target"]] for r in self.rows])
            metrics = regression_metrics(np.array([r["pred"] for r in self.rows]), target, self.names)
            metrics["units"] = dict(zip(self.names, self.units))
            metrics["num_images"] = len(self.rows)
        self._save(header, table, records, metrics)
        engine.logger.info("wrote %d regression predictions to %s", len(self.rows), self.output_dir)


class TargetStatsHandler:
    """At the start of training: the per-target mean and std of the TRAINING entries
    (:func:`visionfm_core.tasks.regression.transforms.target_stats`) go into the regression head's `target_mean` / `target_std` buffers
    (so they are saved in every checkpoint and restored at inference), and `<save_dir>/targets.json` records the
    target names, units and statistics (on the main process, atomically) for inference to read."""

    def __init__(self, network: torch.nn.Module, data: Sequence[dict], target_names: Sequence[str],
                 target_units: Sequence[str] | None = None, save_dir: str | None = None):
        self.network, self.data = network, data
        self.names = list(target_names)
        self.units = list(target_units) if target_units is not None else [""] * len(self.names)
        self.save_dir = save_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        from visionfm_core.engine.distributed import is_main_process
        from visionfm_core.tasks.regression.transforms import save_targets, target_stats

        mean, std = target_stats(self.data, self.names)
        net = getattr(self.network, "module", self.network)  # DDP
        getattr(net, "head", net).set_target_stats(mean, std)
        if self.save_dir is not None and is_main_process():
            save_targets(self.save_dir, self.names, self.units, mean, std)
        if engine is not None:
            engine.logger.info("target standardisation from %d training entries: %s", len(self.data),
                               {n: (round(m, 4), round(s, 4)) for n, m, s in zip(self.names, mean, std)})
