"""Pretraining bundles' inference: one embedding file per image and an index."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import torch
from ignite.engine import Engine, Events

from visionfm_core.engine.io import atomic_write_bytes, atomic_write_text
from visionfm_core.engine.writers import readable_samples, sample_filename

__all__ = ["EmbeddingWriter"]


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
        for _, sample, _ in readable_samples(engine):
            image = sample_filename(sample)
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
