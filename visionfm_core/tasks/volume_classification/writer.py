"""Outputs of the OCT volume classification bundle: the label of each cube and which B-scans drove it.

`VolumeMILWriter` is a MONAI/ignite handler for evaluators (evaluation and inference). It writes what
`ClassificationWriter` writes (predictions.csv / .json with one row per cube, metrics.json when labels are known),
with per-class metrics added, plus the per-slice attention of `VolumeMILModel`, read by a forward hook on the
model's attention module:
- `attention.csv`: volume, slice (0-based index of the B-scan in the cube), attention (the weights of a cube sum
  to 1), rank (1 = the B-scan with the most weight); written once the run has completed, atomically;
- `attention/<cube>.png`: attention over slice index, the `top_k` slices marked, written as each cube completes.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from visionfm_core.engine.io import atomic_write_bytes, atomic_write_text
from visionfm_core.engine.writers import (
    OutputNames,
    batch_value,
    csv_table,
    png_bytes,
    readable_samples,
    sample_filename,
)
from visionfm_core.tasks.classification.writer import ClassificationWriter

__all__ = ["VolumeMILWriter", "attention_module", "attention_plot", "per_class_metrics"]


def attention_module(network: torch.nn.Module) -> torch.nn.Module:
    """The `GatedAttentionPooling` inside `network`, looked up through DDP (`.module`), `torch.compile`
    (`._orig_mod`) and any other wrapper (`for_inference` converts the network in place: the module is the same)."""
    from visionfm_core.tasks.volume_classification.model import GatedAttentionPooling

    found = [m for m in network.modules() if isinstance(m, GatedAttentionPooling)]
    if len(found) != 1:
        raise ValueError(f"expected one GatedAttentionPooling in the network (a VolumeMILModel), found {len(found)} "
                         f"in {type(network).__name__}")
    return found[0]


def per_class_metrics(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """One-vs-rest AUROC, sensitivity (recall) and precision at the argmax decision, and support, per class
    (`auroc_<class>`, ...); AUROC is NaN for a class absent from the labels (or the only one present)."""
    from sklearn.metrics import roc_auc_score

    pred = probs.argmax(axis=1)
    out: dict[str, float] = {}
    for k, name in enumerate(class_names):
        positive = labels == k
        out[f"auroc_{name}"] = (float(roc_auc_score(positive, probs[:, k])) if 0 < positive.sum() < len(labels)
                                else float("nan"))
        out[f"sensitivity_{name}"] = float((pred[positive] == k).mean()) if positive.any() else float("nan")
        out[f"precision_{name}"] = float((labels[pred == k] == k).mean()) if (pred == k).any() else float("nan")
        out[f"support_{name}"] = int(positive.sum())
    return out


def attention_plot(weights: np.ndarray, top: Sequence[int], title: str, width: int = 720,
                   height: int = 320, slices: Sequence[int] | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 bar chart of attention over slice index: grey bars, the `top` bars (positions in
    `weights`) in red with their slice index written above; the dashed line is the uniform weight 1/K (a bar above
    it drew more than its share). `slices`: the cube index of each weight (default 0..K-1)."""
    from PIL import Image, ImageDraw

    k = len(weights)
    slices = list(range(k)) if slices is None else [int(v) for v in slices]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top_margin, bottom = 56, width - 16, 40, height - 36
    peak = max(float(weights.max()), 1.0 / max(k, 1)) * 1.15 or 1.0
    draw.text((left, 8), title[:110], fill="black")
    draw.text((4, 24), "attention", fill="black")
    draw.line([(left, top_margin), (left, bottom), (right, bottom)], fill="black")
    for frac in (0.0, 0.5, 1.0):  # y axis: 0, half and the top of the scale
        y = bottom - frac * (bottom - top_margin)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((4, y - 6), f"{frac * peak:.3f}", fill="black")
    step = (right - left) / max(k, 1)
    marked = set(int(i) for i in top)
    for i, w in enumerate(weights):
        x0, x1 = left + i * step + 0.15 * step, left + (i + 1) * step - 0.15 * step
        y = bottom - float(w) / peak * (bottom - top_margin)
        draw.rectangle([x0, min(y, bottom - 1), max(x1, x0 + 1), bottom], fill=(210, 40, 40) if i in marked
                       else (150, 150, 150))
        if i in marked:
            draw.text((x0, max(y - 14, top_margin - 12)), str(slices[i]), fill=(210, 40, 40))
    uniform = bottom - (1.0 / max(k, 1)) / peak * (bottom - top_margin)
    for x in range(left, right, 8):
        draw.line([(x, uniform), (min(x + 4, right), uniform)], fill=(40, 90, 200))
    for i in sorted({0, k - 1, *range(0, k, max(1, k // 8))}):  # x ticks: slice indices
        x = left + (i + 0.5) * step
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x - 6, bottom + 6), str(slices[i]), fill="black")
    draw.text((right - 220, height - 14), "slice (B-scan) index; red: top slices", fill="black")
    return np.asarray(image)


class VolumeMILWriter(ClassificationWriter):
    """Per-cube predictions (as `ClassificationWriter`, plus per-class metrics) and per-slice attention of a
    `VolumeMILModel` during an evaluator run.

    Args:
        output_dir: where predictions.csv/.json, metrics.json, attention.csv and attention/*.png go.
        class_names: the model's classes, in output order.
        network: the evaluated network (wrapped or not); a forward hook on its attention module is registered when
            the run starts and removed when it ends (a module with a Python hook cannot be scripted).
        top_k: how many of the most attended slices each plot marks.
        plots: False writes no PNG.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], network: torch.nn.Module, top_k: int = 3,
                 plots: bool = True, prefix: str = "predictions"):
        super().__init__(output_dir, class_names, prefix)
        self.network = network
        self.top_k = int(top_k)
        self.plots = bool(plots)
        self.names = OutputNames(None)
        self.attention_rows: list[list] = []
        self._captured: list[torch.Tensor] = []
        self._hook = None

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_STARTED, lambda _: self._captured.clear())
        engine.add_event_handler(Events.COMPLETED, self._stop)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._stop)

    def _start(self, _engine=None) -> None:
        self.attention_rows.clear()
        self.names.clear()
        self._stop()
        self._hook = attention_module(self.network).register_forward_hook(self._capture)

    def _stop(self, _engine=None, *_args) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _capture(self, _module, _inputs, output) -> None:
        self._captured.append(output.detach().float().cpu())

    def _collect(self, engine: Engine) -> None:
        super()._collect(engine)
        if not self._captured:
            raise RuntimeError("VolumeMILWriter saw no attention weights in this iteration: is the network a "
                               "VolumeMILModel, and was the writer given the network that ran?")
        weights = torch.cat(self._captured, dim=0).numpy()
        for i, sample, _warning in readable_samples(engine):
            # the B-scans the network saw, as indices into the cube (RandSampleSlicesd); all of them without it
            kept = batch_value(engine, i, sample, "image_slice_indices")
            slices = np.arange(len(weights[i])) if kept is None else np.asarray(kept).reshape(-1)
            self._cube(engine, sample, weights[i], slices)

    def _cube(self, engine: Engine, sample: dict, weights: np.ndarray, slices: np.ndarray) -> None:
        volume = sample_filename(sample)
        order = np.argsort(-weights, kind="stable")
        rank = np.empty(len(weights), dtype=np.int64)
        rank[order] = np.arange(1, len(weights) + 1)
        self.attention_rows += [[volume, int(slices[k]), f"{w:.6f}", int(rank[k])] for k, w in enumerate(weights)]
        if self.plots:
            probs = torch.as_tensor(sample["pred"]).detach().float().cpu().reshape(-1).numpy()
            label = self.class_names[int(probs.argmax())]
            title = f"{os.path.basename(volume)}: {label} ({probs.max():.2f}), {len(weights)} slices"
            png = png_bytes(attention_plot(weights, order[: self.top_k], title, slices=slices))
            atomic_write_bytes(os.path.join(self.output_dir, "attention", f"{self.names(volume)}.png"), png)

    def _save(self, header, table, records, metrics) -> None:
        if metrics is not None:
            probs = np.array([r["probabilities"] for r in self.rows])
            labels = np.array([r["label"] for r in self.rows])
            metrics.update(per_class_metrics(probs, labels, self.class_names))
        super()._save(header, table, records, metrics)
        atomic_write_text(os.path.join(self.output_dir, "attention.csv"),
                          csv_table(["volume", "slice", "attention", "rank"], self.attention_rows))
