"""Landmark outputs: coordinates in the original image, overlays and radial errors."""

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
    png_bytes,
    read_photo,
    readable_samples,
    sample_filename,
)
from visionfm_core.tasks.landmarks.metrics import mean_radial_error

__all__ = ["LandmarkWriter"]


class LandmarkWriter(PerImageWriter):
    """Write landmark predictions of an evaluator or inference run, in pixels of the ORIGINAL images.

    Each decollated output sample carries ``points_key`` ((L, 2) as (x, y) original pixels, e.g. from
    :class:`visionfm_core.tasks.landmarks.transforms.HeatmapsToLandmarksd`) and the image meta ``filename_or_obj``. As each batch
    completes, ``<stem>_overlay.png`` is saved: the original photo with numbered markers (predictions in
    ``colour``; ground truth, when known, as rings in ``target_colour``). When the run completes: ``landmarks.csv``
    (image, ``<name>_x``, ``<name>_y`` ..., overlay, and ``warning``: why the image does not look like the bundle's
    modality, "" when it does), ``landmarks.json`` (the same per image) and, when samples carry ``target_key`` (the true
    landmarks in ORIGINAL pixels: keep an unscaled copy if the pipeline scales ``landmarks`` for training),
    ``metrics.json`` from :func:`visionfm_core.tasks.landmarks.metrics.mean_radial_error` (in mm too when ``pixel_size_mm`` is set).
    """

    def __init__(self, output_dir: str, landmark_names: Sequence[str], pixel_size_mm: float | None = None,
                 points_key: str = "points", target_key: str = "landmarks", colour: Sequence[int] = (255, 255, 0),
                 target_colour: Sequence[int] = (0, 255, 0), root: str | None = None):
        self.output_dir = output_dir
        self.landmark_names = [str(n) for n in landmark_names]
        self.pixel_size_mm = pixel_size_mm
        self.points_key, self.target_key = points_key, target_key
        self.colour, self.target_colour = tuple(colour), tuple(target_colour)
        self.names = OutputNames(root)
        self.rows: list[dict] = []

    def _points(self, value, image: str, what: str) -> np.ndarray:
        pts = as_array(value).astype(np.float64)
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
        for _, sample, warning in readable_samples(engine):
            image = sample_filename(sample)
            stem = self.names(image)
            points = self._points(sample[self.points_key], image, "Predicted landmarks")
            target = sample.get(self.target_key)
            target = self._points(target, image, "True landmarks") if target is not None else None
            photo = read_photo(image)
            overlay = f"{stem}_overlay.png"
            atomic_write_bytes(os.path.join(self.output_dir, overlay), png_bytes(self._overlay(photo, points, target)))
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
