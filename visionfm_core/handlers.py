"""Ignite/MONAI handlers: per-image prediction tables and metric reports for classification bundles."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from .io import atomic_write_bytes, atomic_write_text
from .metrics import classification_metrics

__all__ = ["ClassificationWriter", "EmbeddingWriter", "stack_pred_label"]


def stack_pred_label(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (B, K), labels (B,)) from a MONAI engine output, decollated (list of dicts) or not."""
    if isinstance(output, dict):
        return output["pred"], output["label"].reshape(-1)
    return (torch.stack([torch.as_tensor(o["pred"]) for o in output]),
            torch.stack([torch.as_tensor(o["label"]).reshape(()) for o in output]))


def _filename(sample: dict) -> str:
    image = sample.get("image")
    meta = getattr(image, "meta", None) or sample.get("image_meta_dict") or {}
    name = meta.get("filename_or_obj", "")
    return str(name[0] if isinstance(name, (list, tuple)) else name)


class ClassificationWriter:
    """Collect per-image class probabilities during an evaluator run and, when it completes, write
    `predictions.csv` and `predictions.json` (image, probabilities, predicted class, label if known) and,
    when labels are present, `metrics.json`. Files are written atomically, and only once the run has
    finished, so an interrupted run never leaves a partial table behind."""

    def __init__(self, output_dir: str, class_names: Sequence[str], prefix: str = "predictions"):
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.prefix = prefix
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        samples = output if isinstance(output, list) else [output]
        for sample in samples:
            probs = torch.as_tensor(sample["pred"]).detach().float().cpu().reshape(-1).numpy()
            if probs.shape[0] != len(self.class_names):
                raise ValueError(f"network gave {probs.shape[0]} outputs but {len(self.class_names)} classes are named")
            row = {"image": _filename(sample), "probabilities": probs.tolist(), "pred": int(probs.argmax())}
            label = sample.get("label")
            if label is not None:
                row["label"] = int(torch.as_tensor(label).reshape(-1)[0])
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        csv_text = io.StringIO()
        writer = csv.writer(csv_text)
        has_label = bool(self.rows) and all("label" in r for r in self.rows)
        writer.writerow(["image", *[f"prob_{c}" for c in self.class_names], "pred", "pred_name"]
                        + (["label"] if has_label else []))
        for r in self.rows:
            writer.writerow([r["image"], *[f"{p:.6f}" for p in r["probabilities"]], r["pred"],
                             self.class_names[r["pred"]]] + ([r["label"]] if has_label else []))
        atomic_write_text(os.path.join(self.output_dir, f"{self.prefix}.csv"), csv_text.getvalue())
        records = [{**r, "pred_name": self.class_names[r["pred"]]} for r in self.rows]
        atomic_write_text(os.path.join(self.output_dir, f"{self.prefix}.json"), json.dumps(records, indent=1))
        if has_label:
            metrics = classification_metrics(np.array([r["probabilities"] for r in self.rows]),
                                              np.array([r["label"] for r in self.rows]))
            metrics["num_images"] = len(self.rows)
            atomic_write_text(os.path.join(self.output_dir, "metrics.json"), json.dumps(metrics, indent=1))
        engine.logger.info("wrote %d predictions to %s", len(self.rows), self.output_dir)


class EmbeddingWriter:
    """Write each image's embedding (`pred`, e.g. the CLS token) as `<output_dir>/<relative path>.npy` as soon as
    it is computed (each file atomically), and an index `embeddings.csv` (image, embedding file) at the end."""

    def __init__(self, output_dir: str, root: str | None = None):
        self.output_dir, self.root = output_dir, root
        self.rows: list[tuple[str, str]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_batch)
        engine.add_event_handler(Events.COMPLETED, self._write_index)

    def _target(self, image: str) -> str:
        rel = os.path.relpath(image, self.root) if self.root and os.path.isabs(image) else os.path.basename(image)
        for ext in (".nii.gz", os.path.splitext(rel)[1]):
            if ext and rel.endswith(ext):
                rel = rel[: -len(ext)]
                break
        return os.path.join(self.output_dir, rel.replace(os.sep, "__") + ".npy")

    def _write_batch(self, engine: Engine) -> None:
        output = engine.state.output
        for sample in output if isinstance(output, list) else [output]:
            image = _filename(sample)
            target = self._target(image)
            buffer = io.BytesIO()
            np.save(buffer, torch.as_tensor(sample["pred"]).detach().float().cpu().reshape(-1).numpy())
            atomic_write_bytes(target, buffer.getvalue())
            self.rows.append((image, os.path.basename(target)))

    def _write_index(self, engine: Engine) -> None:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["image", "embedding"])
        writer.writerows(self.rows)
        atomic_write_text(os.path.join(self.output_dir, "embeddings.csv"), text.getvalue())
        engine.logger.info("wrote %d embeddings to %s", len(self.rows), self.output_dir)
