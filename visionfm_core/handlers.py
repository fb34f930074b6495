"""Ignite/MONAI handlers: per-image outputs (tables, masks, overlays) and metric reports for the task bundles.

Per-image files are written as each batch completes; tables and metrics only once the run has COMPLETED, so an
interrupted run never leaves a partial table behind. Every file is written atomically.
"""

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
from .metrics import SEGMENTATION_METRIC_NAMES, classification_metrics, mean_radial_error, segmentation_metrics

__all__ = ["ClassificationWriter", "ClassNamesSaver", "EmbeddingWriter", "SegmentationWriter", "LandmarkWriter",
           "UnreadableFilesReport", "stack_pred_label"]


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


def _warnings(engine: Engine, samples: list, key: str = "modality_warning") -> list[str]:
    """Per output sample, the message `visionfm_core.data.ModalityCheckd` left ("" when the image looks fine or was
    not checked). Postprocessing keeps keys it did not create in `engine.state.batch`, not in the output, so both
    are looked at."""
    batch = engine.state.batch
    out = []
    for i, sample in enumerate(samples):
        message = sample.get(key) if isinstance(sample, dict) else None
        if message is None and isinstance(batch, list) and i < len(batch) and isinstance(batch[i], dict):
            message = batch[i].get(key)
        if message is None and isinstance(batch, dict):
            message = batch.get(key)
            message = message[i] if isinstance(message, (list, tuple)) and i < len(message) else message
        out.append(str(message or ""))
    return out


def _readable(engine: Engine) -> list[tuple[int, dict, str]]:
    """(index, output sample, modality warning) of the samples of this iteration that were read: the stand-ins of
    `SkipUnreadableDataset` for unreadable files (`read_error` set) are left out of every table and file."""
    samples = _samples(engine.state.output)
    return [(i, sample, warning) for i, (sample, warning) in enumerate(zip(samples, _warnings(engine, samples)))
            if not _batch_value(engine, i, sample, "read_error")]


class _TableWriter:
    """Rows collected as each batch completes (`_collect`), tables written once the run has finished (`_write`):
    an interrupted run never leaves a partial table. Subclasses set `self.rows` (a list) in `__init__`."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _save(self, header: list[str], table: list[list], records: list[dict], metrics: dict | None) -> None:
        """`<prefix>.csv` (header + table), `<prefix>.json` (records) and, when given, `metrics.json` (NaN as
        null), each written atomically."""
        atomic_write_text(os.path.join(self.output_dir, f"{self.prefix}.csv"), _table(header, table))
        atomic_write_text(os.path.join(self.output_dir, f"{self.prefix}.json"), json.dumps(records, indent=1))
        if metrics is not None:
            _write_metrics(self.output_dir, metrics)


class ClassificationWriter(_TableWriter):
    """Collect per-image class probabilities during an evaluator run and, when it completes, write
    `predictions.csv` and `predictions.json` (image, probabilities, predicted class, label if known, and a
    `warning`: why the image does not look like the bundle's modality, "" when it does) and, when labels are
    present, `metrics.json` (:func:`visionfm_core.metrics.classification_metrics`). Files are written atomically,
    and only once the run has finished, so an interrupted run never leaves a partial table behind."""

    def __init__(self, output_dir: str, class_names: Sequence[str], prefix: str = "predictions"):
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.prefix = prefix
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        for _, sample, warning in _readable(engine):
            probs = torch.as_tensor(sample["pred"]).detach().float().cpu().reshape(-1).numpy()
            if probs.shape[0] != len(self.class_names):
                raise ValueError(f"network gave {probs.shape[0]} outputs but {len(self.class_names)} classes are named "
                                 f"({self.class_names}): the model was trained with another class list")
            row = {"image": _filename(sample), "probabilities": probs.tolist(), "pred": int(probs.argmax())}
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


class ClassNamesSaver:
    """Write the class list a classifier trains on to ``<output_dir>/class_names.json`` (atomically) when training
    starts, so evaluation and inference name (and count) the model's outputs as trained, whatever the defaults."""

    def __init__(self, output_dir: str, class_names: Sequence[str]):
        self.output_dir = output_dir
        self.class_names = [str(c) for c in class_names]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._save)

    def _save(self, engine: Engine) -> None:
        from .data.datalist import save_class_names

        path = save_class_names(self.output_dir, self.class_names)
        engine.logger.info("training on classes %s (saved to %s)", self.class_names, path)


class UnreadableFilesReport:
    """The inputs `SkipUnreadableDataset` could not read, when the run completes: `unreadable.csv` (file, reason)
    in `output_dir` when there were any, and one summary line in the log either way ("read 98 of 100 inputs; 2 could
    not be read: see .../unreadable.csv")."""

    def __init__(self, output_dir: str, filename: str = "unreadable.csv"):
        self.output_dir, self.filename = output_dir, filename
        self.failures: list[tuple[str, str]] = []
        self.count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def _reset(self, _engine=None) -> None:
        self.failures.clear()
        self.count = 0

    def _collect(self, engine: Engine) -> None:
        samples = _samples(engine.state.output)
        for i, sample in enumerate(samples):
            reason = _batch_value(engine, i, sample, "read_error")
            if reason:
                self.failures.append((str(_batch_value(engine, i, sample, "read_error_source") or ""), str(reason)))
        self.count += len(samples)

    def _report(self, engine: Engine) -> None:
        read = self.count - len(self.failures)
        path = os.path.join(self.output_dir, self.filename)
        if not self.failures:
            if os.path.isfile(path):  # a report of an earlier run in this folder would now be wrong
                os.remove(path)
            engine.logger.info("read all %d inputs", self.count)
            return
        atomic_write_text(path, _table(["file", "reason"], [list(f) for f in self.failures]))
        engine.logger.warning("read %d of %d inputs; %d could not be read: see %s", read, self.count,
                              len(self.failures), path)


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
        for _, sample, _ in _readable(engine):
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


# --- dense tasks --------------------------------------------------------------------------------------------------


def _samples(output) -> list[dict]:
    return output if isinstance(output, list) else [output]


def _array(x) -> np.ndarray:
    return x.detach().as_subclass(torch.Tensor).float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _read_photo(image: str) -> np.ndarray:
    """The original image as (H, W, 3) uint8, read with the project's reader."""
    from .data.readers import read_image

    return np.round(read_image(image).transpose(1, 2, 0) * 255).astype(np.uint8)


class _OutputNames:
    """Unique output stems per run: the file name without extension, or with ``root`` the path relative to it."""

    def __init__(self, root: str | None):
        self.root = root
        self.seen: dict[str, str] = {}

    def clear(self) -> None:
        self.seen.clear()

    def __call__(self, image: str) -> str:
        if not image:
            raise ValueError("An output sample has no image file name (meta 'filename_or_obj' of its image): "
                             "load images with LoadImaged so outputs can be named and checked.")
        rel = os.path.relpath(image, self.root) if self.root and os.path.isabs(image) else os.path.basename(image)
        for ext in (".nii.gz", os.path.splitext(rel)[1]):
            if ext and rel.endswith(ext):
                rel = rel[: -len(ext)]
                break
        stem = rel.replace(os.sep, "__")
        if self.seen.setdefault(stem, image) != image:
            raise ValueError(f"Images {self.seen[stem]} and {image} would both be written as {stem}_*; "
                             "give the writer root=<common folder> to name outputs by relative path.")
        return stem


def _plane(x, image: str, what: str) -> np.ndarray:
    """(H, W) from a (1, H, W) or (H, W) array."""
    a = _array(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{what} for image {image} must be (1, H, W) or (H, W), got shape {a.shape}.")
    return a


class _PerImageWriter:
    """Per-image files as each batch completes (`_write_batch`), tables once the run has finished
    (`_write_tables`); subclasses set `self.rows` and `self.names` (an `_OutputNames`)."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_batch)
        engine.add_event_handler(Events.COMPLETED, self._write_tables)

    def _reset(self, _engine=None) -> None:
        self.rows.clear()
        self.names.clear()


class SegmentationWriter(_PerImageWriter):
    """Write binary segmentation outputs of an evaluator or inference run at the ORIGINAL image resolution.

    For every decollated output sample, ``pred`` holds foreground probabilities (1, H, W), or softmax probabilities
    (C, H, W) with background in channel 0 (foreground = 1 - background), already on the original image grid.
    As each batch completes, the writer saves ``<stem>_mask.png`` (0/255), ``<stem>_prob.png`` (probability x 255)
    and ``<stem>_overlay.png`` (the original photo, read again from the image meta ``filename_or_obj``, with the
    predicted vessels tinted ``overlay_colour``). When the run completes: ``segmentation.csv`` (per image: files
    and, when the sample has a ``label``, the metrics of :func:`visionfm_core.metrics.segmentation_metrics`, inside
    ``fov_key``'s mask when present; a ``warning`` column says why an image does not look like the bundle's modality,
    "" when it does) and, when labels exist, ``metrics.json`` (mean over labelled images).

    Labels and FOV masks must be loaded arrays at the original size (a file path string is ignored).

    Raises:
        ValueError: a prediction (or label) whose size differs from the original image's, naming the file.
    """

    def __init__(self, output_dir: str, threshold: float = 0.5, overlay_colour: Sequence[int] = (0, 255, 0),
                 fov_key: str = "fov", label_key: str = "label", pred_key: str = "pred", overlay_alpha: float = 0.6,
                 root: str | None = None):
        self.output_dir = output_dir
        self.threshold = float(threshold)
        self.colour = np.asarray(overlay_colour, dtype=np.float32).reshape(3)
        self.alpha = float(overlay_alpha)
        self.fov_key, self.label_key, self.pred_key = fov_key, label_key, pred_key
        self.names = _OutputNames(root)
        self.rows: list[dict] = []

    def _foreground(self, pred, image: str) -> np.ndarray:
        p = _array(pred).astype(np.float32)
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3:
            raise ValueError(f"pred for image {image} must be (C, H, W) probabilities, got shape {p.shape}.")
        if p.size and not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
            raise ValueError(f"pred for image {image} holds values in [{np.nanmin(p):g}, {np.nanmax(p):g}]; "
                             "probabilities in [0, 1] are expected (apply a sigmoid/softmax in postprocessing).")
        return p[0] if p.shape[0] == 1 else 1.0 - p[0]

    def _write_batch(self, engine: Engine) -> None:
        for _, sample, warning in _readable(engine):
            image = _filename(sample)
            stem = self.names(image)
            prob = self._foreground(sample[self.pred_key], image)
            photo = _read_photo(image)
            if prob.shape != photo.shape[:2]:
                raise ValueError(f"The prediction for {image} is {prob.shape[0]}x{prob.shape[1]} (H x W) but the "
                                 f"image is {photo.shape[0]}x{photo.shape[1]}: postprocessing must bring predictions "
                                 "back to the original image grid (e.g. Invertd) before SegmentationWriter.")
            mask = prob >= self.threshold
            overlay = photo.astype(np.float32)
            overlay[mask] = (1 - self.alpha) * overlay[mask] + self.alpha * self.colour
            files = {"mask": f"{stem}_mask.png", "prob": f"{stem}_prob.png", "overlay": f"{stem}_overlay.png"}
            arrays = {"mask": mask.astype(np.uint8) * 255, "prob": np.round(prob * 255).astype(np.uint8),
                      "overlay": np.round(overlay).clip(0, 255).astype(np.uint8)}
            for kind, name in files.items():
                atomic_write_bytes(os.path.join(self.output_dir, name), _png_bytes(arrays[kind]))
            row = {"image": image, **files, "warning": warning}
            label = sample.get(self.label_key)
            if label is not None and not isinstance(label, (str, os.PathLike)):
                label = _plane(label, image, "label")
                fov = sample.get(self.fov_key)
                fov = _plane(fov, image, "FOV mask") if fov is not None and not isinstance(fov, (str, os.PathLike)) \
                    else None
                for what, other in (("label", label), ("FOV mask", fov)):
                    if other is not None and other.shape != prob.shape:
                        raise ValueError(f"The {what} for {image} is {other.shape[0]}x{other.shape[1]} but the "
                                         f"prediction and image are {prob.shape[0]}x{prob.shape[1]}.")
                row.update(segmentation_metrics(prob, label, fov, self.threshold))
            self.rows.append(row)

    def _write_tables(self, engine: Engine) -> None:
        labelled = [r for r in self.rows if "dice" in r]
        text = io.StringIO()
        writer = csv.writer(text)
        metric_cols = list(SEGMENTATION_METRIC_NAMES) if labelled else []
        writer.writerow(["image", "mask", "prob", "overlay", *metric_cols, "warning"])
        for r in self.rows:
            writer.writerow([r["image"], r["mask"], r["prob"], r["overlay"]]
                            + [f"{r[m]:.6f}" if m in r else "" for m in metric_cols] + [r["warning"]])
        atomic_write_text(os.path.join(self.output_dir, "segmentation.csv"), text.getvalue())
        if labelled:
            metrics = {m: _nanmean([r[m] for r in labelled]) for m in SEGMENTATION_METRIC_NAMES}
            metrics.update(num_images=len(labelled), threshold=self.threshold)
            atomic_write_text(os.path.join(self.output_dir, "metrics.json"), json.dumps(metrics, indent=1))
        engine.logger.info("wrote %d segmentations to %s", len(self.rows), self.output_dir)


def _nanmean(values: list[float]) -> float | None:
    """Mean over the defined values; None (JSON null) when none is defined."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else None


class LandmarkWriter(_PerImageWriter):
    """Write landmark predictions of an evaluator or inference run, in pixels of the ORIGINAL images.

    Each decollated output sample carries ``points_key`` ((L, 2) as (x, y) original pixels, e.g. from
    :class:`visionfm_core.data.dense.HeatmapsToLandmarksd`) and the image meta ``filename_or_obj``. As each batch
    completes, ``<stem>_overlay.png`` is saved: the original photo with numbered markers (predictions in
    ``colour``; ground truth, when known, as rings in ``target_colour``). When the run completes: ``landmarks.csv``
    (image, ``<name>_x``, ``<name>_y`` ..., overlay, and ``warning``: why the image does not look like the bundle's
    modality, "" when it does), ``landmarks.json`` (the same per image) and, when samples carry ``target_key`` (the true
    landmarks in ORIGINAL pixels: keep an unscaled copy if the pipeline scales ``landmarks`` for training),
    ``metrics.json`` from :func:`visionfm_core.metrics.mean_radial_error` (in mm too when ``pixel_size_mm`` is set).
    """

    def __init__(self, output_dir: str, landmark_names: Sequence[str], pixel_size_mm: float | None = None,
                 points_key: str = "points", target_key: str = "landmarks", colour: Sequence[int] = (255, 255, 0),
                 target_colour: Sequence[int] = (0, 255, 0), root: str | None = None):
        self.output_dir = output_dir
        self.landmark_names = [str(n) for n in landmark_names]
        self.pixel_size_mm = pixel_size_mm
        self.points_key, self.target_key = points_key, target_key
        self.colour, self.target_colour = tuple(colour), tuple(target_colour)
        self.names = _OutputNames(root)
        self.rows: list[dict] = []

    def _points(self, value, image: str, what: str) -> np.ndarray:
        pts = _array(value).astype(np.float64)
        if pts.shape != (len(self.landmark_names), 2):
            raise ValueError(f"{what} for image {image} have shape {pts.shape}; expected ({len(self.landmark_names)}, "
                             f"2) for landmarks {self.landmark_names}.")
        return pts

    def _overlay(self, photo: np.ndarray, points: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        from PIL import Image, ImageDraw, ImageFont

        im = Image.fromarray(photo)
        draw = ImageDraw.Draw(im)
        r = max(3, round(0.008 * max(photo.shape[:2])))
        font = ImageFont.load_default(size=max(10, 3 * r))
        if target is not None:
            for x, y in target:
                draw.ellipse([x - 2 * r, y - 2 * r, x + 2 * r, y + 2 * r], outline=self.target_colour,
                             width=max(1, r // 2))
        for i, (x, y) in enumerate(points, start=1):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=self.colour)
            draw.text((x + 1.5 * r, y - 1.5 * r), str(i), fill=self.colour, font=font)
        return np.asarray(im)

    def _write_batch(self, engine: Engine) -> None:
        for _, sample, warning in _readable(engine):
            image = _filename(sample)
            stem = self.names(image)
            points = self._points(sample[self.points_key], image, "Predicted landmarks")
            target = sample.get(self.target_key)
            target = self._points(target, image, "True landmarks") if target is not None else None
            photo = _read_photo(image)
            overlay = f"{stem}_overlay.png"
            atomic_write_bytes(os.path.join(self.output_dir, overlay), _png_bytes(self._overlay(photo, points, target)))
            self.rows.append({"image": image, "points": points, "target": target, "overlay": overlay,
                              "warning": warning})

    def _write_tables(self, engine: Engine) -> None:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["image", *[f"{n}_{axis}" for n in self.landmark_names for axis in "xy"], "overlay", "warning"])
        for r in self.rows:
            writer.writerow([r["image"], *[f"{v:.3f}" for v in r["points"].reshape(-1)], r["overlay"], r["warning"]])
        atomic_write_text(os.path.join(self.output_dir, "landmarks.csv"), text.getvalue())

        labelled = [r for r in self.rows if r["target"] is not None]
        records = []
        for r in self.rows:
            record = {"image": r["image"], "overlay": r["overlay"],
                      "landmarks": {n: p.tolist() for n, p in zip(self.landmark_names, r["points"])},
                      "warning": r["warning"]}
            if r["target"] is not None:
                record["target"] = {n: p.tolist() for n, p in zip(self.landmark_names, r["target"])}
                errors = np.hypot(*(r["points"] - r["target"]).T)
                record["radial_error_px"] = dict(zip(self.landmark_names, errors.tolist()))
            records.append(record)
        atomic_write_text(os.path.join(self.output_dir, "landmarks.json"), json.dumps(records, indent=1))

        if labelled:
            mre = mean_radial_error(np.stack([r["points"] for r in labelled]),
                                    np.stack([r["target"] for r in labelled]), self.pixel_size_mm)
            metrics = {"mre_px": mre["mre_px"],
                       **{f"mre_px_{n}": v for n, v in zip(self.landmark_names, mre["mre_px_per_landmark"])}}
            if "mre_mm" in mre:
                metrics["mre_mm"] = mre["mre_mm"]
                metrics.update({f"mre_mm_{n}": v for n, v in zip(self.landmark_names, mre["mre_mm_per_landmark"])})
                metrics.update({k: v for k, v in mre.items() if k.startswith("sdr_")})
                metrics["pixel_size_mm"] = self.pixel_size_mm
            metrics["num_images"] = mre["num_images"]
            atomic_write_text(os.path.join(self.output_dir, "metrics.json"), json.dumps(metrics, indent=1))
        engine.logger.info("wrote %d landmark predictions to %s", len(self.rows), self.output_dir)


# --- multi-task classification and regression --------------------------------------------------------------------

__all__ += ["MultiTaskWriter", "RegressionWriter", "TargetStatsHandler"]


def _json_number(v):
    """NaN -> None (JSON null): metrics.json stays valid JSON when a metric is undefined."""
    return None if isinstance(v, float) and np.isnan(v) else v


def _write_metrics(output_dir: str, metrics: dict) -> None:
    atomic_write_text(os.path.join(output_dir, "metrics.json"),
                      json.dumps({k: _json_number(v) for k, v in metrics.items()}, indent=1))


class MultiTaskWriter(_TableWriter):
    """Tables of the multi-task head when the run completes: `predictions.csv` / `predictions.json` (image, the 13
    probabilities named `prob_<output>`, the predicted label of each task `pred_<task>` (grade = argmax of the
    grade probabilities, binary = probability >= `threshold`), the known labels `label_<task>` (empty / null where
    unknown; only when the run has labels) and `warning` from `ModalityCheckd`) and, when any label is known,
    `metrics.json` (:func:`visionfm_core.metrics.multitask_metrics`: per task and macro AUROC / F1). Written
    atomically, only once the run has finished."""

    def __init__(self, output_dir: str, tasks: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                 num_grades: int = 5, threshold: float = 0.5, prefix: str = "predictions", label_key: str = "label"):
        from .models.multitask import MULTITASK_OUTPUTS, MULTITASK_TASKS

        self.output_dir = output_dir
        self.tasks = list(tasks or MULTITASK_TASKS)
        self.output_names = list(output_names or MULTITASK_OUTPUTS)
        self.num_grades, self.threshold = int(num_grades), float(threshold)
        self.prefix, self.label_key = prefix, label_key
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        for _, sample, warning in _readable(engine):
            probs = _array(sample["pred"]).reshape(-1).astype(np.float64)
            image = _filename(sample)
            if probs.shape[0] != len(self.output_names):
                raise ValueError(f"network gave {probs.shape[0]} outputs for {image} but the multi-task head has "
                                 f"{len(self.output_names)} ({self.output_names})")
            pred = [int(probs[: self.num_grades].argmax())]
            pred += [int(p >= self.threshold) for p in probs[self.num_grades:]]
            label = sample.get(self.label_key)
            labels = [None] * len(self.tasks)
            if label is not None and not isinstance(label, (str, dict)):
                values = np.nan_to_num(_array(label).reshape(-1), nan=-1.0)
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
            from .metrics import multitask_metrics

            labels = np.array([[-1 if v is None else v for v in r["labels"]] for r in self.rows])
            metrics = multitask_metrics(np.array([r["probabilities"] for r in self.rows]), labels, self.tasks,
                                        self.num_grades, self.threshold)
            metrics["num_images"] = len(self.rows)
        self._save(header, table, records, metrics)
        engine.logger.info("wrote %d multi-task predictions to %s", len(self.rows), self.output_dir)


class RegressionWriter(_TableWriter):
    """Tables of a regression run when it completes: `predictions.csv` (image, one column per target named
    `<name> [<unit>]`, the true values `true <name> [<unit>]` where known (only when the run has targets), and
    `warning`), `predictions.json` (per image: {name: value}, targets where known, units, warning) and, when any
    target is known, `metrics.json` (:func:`visionfm_core.metrics.regression_metrics`: MAE, RMSE, R2, Pearson r and
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
        for _, sample, warning in _readable(engine):
            pred = _array(sample["pred"]).reshape(-1).astype(np.float64)
            image = _filename(sample)
            if pred.shape[0] != len(self.names):
                raise ValueError(f"network gave {pred.shape[0]} outputs for {image} but {len(self.names)} targets are "
                                 f"named ({self.names}): the model was trained with another target list")
            label = sample.get(self.label_key)
            target = [None] * len(self.names)
            if label is not None and not isinstance(label, (str, dict)):
                target = [None if np.isnan(v) else float(v) for v in _array(label).reshape(-1).astype(np.float64)]
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
            from .metrics import regression_metrics

            target = np.array([[np.nan if v is None else v for v in r["target"]] for r in self.rows])
            metrics = regression_metrics(np.array([r["pred"] for r in self.rows]), target, self.names)
            metrics["units"] = dict(zip(self.names, self.units))
            metrics["num_images"] = len(self.rows)
        self._save(header, table, records, metrics)
        engine.logger.info("wrote %d regression predictions to %s", len(self.rows), self.output_dir)


class TargetStatsHandler:
    """At the start of training: the per-target mean and std of the TRAINING entries
    (:func:`visionfm_core.data.target_stats`) go into the regression head's `target_mean` / `target_std` buffers
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
        from .data.targets import save_targets, target_stats
        from .distributed import is_main_process

        mean, std = target_stats(self.data, self.names)
        net = getattr(self.network, "module", self.network)  # DDP
        getattr(net, "head", net).set_target_stats(mean, std)
        if self.save_dir is not None and is_main_process():
            save_targets(self.save_dir, self.names, self.units, mean, std)
        if engine is not None:
            engine.logger.info("target standardisation from %d training entries: %s", len(self.data),
                               {n: (round(m, 4), round(s, 4)) for n, m, s in zip(self.names, mean, std)})


# --- networks with more than one input: progression forecasting, per-patient fusion ----------------------------------


def _batch_value(engine: Engine, i: int, sample: dict, key: str):
    """`key` of output sample i, or of the (decollated) batch item i where postprocessing left it."""
    if key in sample:
        return sample[key]
    batch = engine.state.batch
    if isinstance(batch, list) and i < len(batch) and isinstance(batch[i], dict):
        return batch[i].get(key)
    if isinstance(batch, dict) and key in batch:
        value = batch[key]
        return value[i] if isinstance(value, (list, tuple, torch.Tensor)) and len(value) > i else value
    return None


def forecast_pred_label(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability of progression (B,), label (B,)) from a MONAI engine output, decollated or not."""
    if isinstance(output, dict):
        return output["pred"].reshape(-1), output["label"].reshape(-1)
    return (torch.stack([torch.as_tensor(o["pred"]).reshape(()) for o in output]),
            torch.stack([torch.as_tensor(o["label"]).reshape(()) for o in output]))


def _table(header: list[str], rows: list[list]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue()


class ForecastingWriter(_TableWriter):
    """Progression forecasts of an evaluator run, written when it completes: `predictions.csv` and
    `predictions.json` (image, followup, interval_days, probability = P(progression within interval_days),
    prediction = probability >= threshold, label if known, warning from ModalityCheckd) and, with labels,
    `metrics.json` (:func:`visionfm_core.metrics.forecasting_metrics`). Atomic, and only on completion."""

    def __init__(self, output_dir: str, threshold: float = 0.5, prefix: str = "predictions"):
        self.output_dir, self.threshold, self.prefix = output_dir, float(threshold), prefix
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        for i, sample, warning in _readable(engine):
            prob = float(torch.as_tensor(sample["pred"]).detach().float().reshape(-1)[0])
            interval = _batch_value(engine, i, sample, "interval_days")
            row = {"image": _filename(sample), "followup": str(_batch_value(engine, i, sample, "followup") or ""),
                   "interval_days": float(torch.as_tensor(interval).reshape(-1)[0]) if interval is not None else None,
                   "probability": prob, "prediction": int(prob >= self.threshold)}
            label = sample.get("label")
            if label is not None:
                row["label"] = int(torch.as_tensor(label).reshape(-1)[0])
            row["warning"] = warning
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        from .metrics import forecasting_metrics

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


class FusionWriter(_TableWriter):
    """Per-patient predictions of a fusion evaluator run, written when it completes: `predictions.csv` and
    `predictions.json` (patient_id, the modalities present, each modality's image, probabilities per class name,
    prediction, label if known, warnings) and, with labels, `metrics.json`
    (:func:`visionfm_core.metrics.classification_metrics`). Atomic, and only on completion."""

    def __init__(self, output_dir: str, class_names: Sequence[str], modalities: Sequence[str],
                 prefix: str = "predictions"):
        from .data.multi_input import modality_key

        self.output_dir, self.prefix = output_dir, prefix
        self.class_names = [str(c) for c in class_names]
        self.keys = [modality_key(m) for m in modalities]
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        for i, sample, warning in _readable(engine):
            probs = torch.as_tensor(sample["pred"]).detach().float().cpu().reshape(-1).numpy()
            if probs.shape[0] != len(self.class_names):
                raise ValueError(f"network gave {probs.shape[0]} outputs but {len(self.class_names)} classes are named "
                                 f"({self.class_names})")
            present = torch.as_tensor(_batch_value(engine, i, sample, "present")).reshape(-1).tolist()
            row = {"patient_id": str(_batch_value(engine, i, sample, "patient_id") or ""),
                   "present": [k for k, p in zip(self.keys, present) if p > 0.5],
                   "images": {k: str(_batch_value(engine, i, sample, k) or "") for k in self.keys},
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


__all__ += ["forecast_pred_label", "ForecastingWriter", "FusionWriter"]
