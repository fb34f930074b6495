"""Segmentation outputs: label maps, overlays and per-image metrics."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Sequence

import numpy as np
from ignite.engine import Engine

from visionfm_core.engine.io import atomic_write_bytes, atomic_write_text
from visionfm_core.engine.writers import (
    OutputNames,
    PerImageWriter,
    as_array,
    decode_scale,
    image_plane,
    nanmean,
    png_bytes,
    read_photo,
    readable_samples,
    sample_filename,
    upsample_reduced,
)
from visionfm_core.tasks.segmentation.metrics import SEGMENTATION_METRIC_NAMES, segmentation_metrics

__all__ = ["SegmentationWriter"]


class SegmentationWriter(PerImageWriter):
    """Write binary segmentation outputs of an evaluator or inference run at the ORIGINAL image resolution.

    For every decollated output sample, ``pred`` holds foreground probabilities (1, H, W), or softmax probabilities
    (C, H, W) with background in channel 0 (foreground = 1 - background), already on the original image grid.
    As each batch completes, the writer saves ``<stem>_mask.png`` (0/255), ``<stem>_prob.png`` (probability x 255)
    and ``<stem>_overlay.png`` (the original photo, read again from the image meta ``filename_or_obj``, with the
    predicted vessels tinted ``overlay_colour``). When the run completes: ``segmentation.csv`` (per image: files
    and, when the sample has a ``label``, the metrics of :func:`visionfm_core.tasks.segmentation.metrics.segmentation_metrics`, inside
    ``fov_key``'s mask when present; a ``warning`` column says why an image does not look like the bundle's modality,
    "" when it does) and, when labels exist, ``metrics.json`` (mean over labelled images).

    Images read at a reduced size (``EyeImageReader(decode_size=...)``, the inference of a photo larger than twice the
    working size) give ``pred`` on that reduced grid: the writer brings it to the original grid itself, in 8 bits
    (:func:`visionfm_core.engine.writers.upsample_reduced`), so a 12000 x 12000 photo never needs a full-size float
    map. Labels and FOV masks must be loaded arrays at the original size (a file path string is ignored).

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
        self.names = OutputNames(root)
        self.rows: list[dict] = []

    def _foreground(self, pred, image: str) -> np.ndarray:
        p = as_array(pred).astype(np.float32)
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3:
            raise ValueError(f"pred for image {image} must be (C, H, W) probabilities, got shape {p.shape}.")
        if p.size and not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
            raise ValueError(f"pred for image {image} holds values in [{np.nanmin(p):g}, {np.nanmax(p):g}]; "
                             "probabilities in [0, 1] are expected (apply a sigmoid/softmax in postprocessing).")
        return p[0] if p.shape[0] == 1 else 1.0 - p[0]

    def _write_batch(self, engine: Engine) -> None:
        for _, sample, warning in readable_samples(engine):
            image = sample_filename(sample)
            stem = self.names(image)
            prob = self._foreground(sample[self.pred_key], image)
            photo = read_photo(image)
            scale = decode_scale(sample, self.pred_key)
            if scale > 1 and prob.shape != photo.shape[:2]:
                # predicted on a reduced decode (EyeImageReader(decode_size)): brought to the photo's grid here, in
                # 8 bits, so no full-size float map exists; the mask thresholds those 8-bit probabilities
                prob8 = upsample_reduced(np.round(prob * 255).astype(np.uint8), scale, photo.shape[:2])
                mask = prob8 >= round(self.threshold * 255)
                prob = None
            elif prob.shape != photo.shape[:2]:
                raise ValueError(f"The prediction for {image} is {prob.shape[0]}x{prob.shape[1]} (H x W) but the "
                                 f"image is {photo.shape[0]}x{photo.shape[1]}: postprocessing must bring predictions "
                                 "back to the original image grid (e.g. Invertd) before SegmentationWriter.")
            else:
                prob8, mask = np.round(prob * 255).astype(np.uint8), prob >= self.threshold
            overlay = photo  # blended in place, a band of rows at a time: no full-size float copy
            for top in range(0, overlay.shape[0], 512):
                band, tinted = overlay[top: top + 512], mask[top: top + 512]
                band[tinted] = np.round((1 - self.alpha) * band[tinted] + self.alpha * self.colour).clip(0, 255)
            files = {"mask": f"{stem}_mask.png", "prob": f"{stem}_prob.png", "overlay": f"{stem}_overlay.png"}
            arrays = {"mask": mask.astype(np.uint8) * 255, "prob": prob8, "overlay": overlay}
            for kind, name in files.items():
                atomic_write_bytes(os.path.join(self.output_dir, name), png_bytes(arrays[kind]))
            row = {"image": image, **files, "warning": warning}
            label = sample.get(self.label_key)
            if label is not None and not isinstance(label, (str, os.PathLike)):
                prob = prob8.astype(np.float32) / 255 if prob is None else prob
                label = image_plane(label, image, "label")
                fov = sample.get(self.fov_key)
                fov = image_plane(fov, image, "FOV mask") if fov is not None and not isinstance(fov, (str, os.PathLike)) \
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
            metrics = {m: nanmean([r[m] for r in labelled]) for m in SEGMENTATION_METRIC_NAMES}
            metrics.update(num_images=len(labelled), threshold=self.threshold)
            atomic_write_text(os.path.join(self.output_dir, "metrics.json"), json.dumps(metrics, indent=1))
        engine.logger.info("wrote %d segmentations to %s", len(self.rows), self.output_dir)
