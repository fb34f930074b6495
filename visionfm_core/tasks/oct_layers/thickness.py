"""En-face thickness maps of retinal layers from OCT label maps, and the MONAI handler that writes them.

For every A-scan (j, k) of a label map (I, J, K) (I axial depth, J lateral, K B-scans), the thickness of class c is
the number of voxels of class c along I times the axial spacing, in micrometres. The spacing comes from the affine
(the length of its i column), so the numbers are right whatever the cube's orientation in world space. The total
retina (every class but the background: layers plus fluid) gets a map too, for central subfield thickness.

Micrometres only from a real spacing: when the converter had to default the axial spacing (its sidecar JSON says
"unknown") or the spacing lies outside what OCT devices have (`PLAUSIBLE_AXIAL_UM`), the thickness in micrometres is
NaN and thickness.csv says why in `axial_spacing_problem`; the label maps are still written.
"""

from __future__ import annotations

import io
import json
import os
from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from visionfm_core.engine.io import atomic_write_bytes, atomic_write_text
from visionfm_core.engine.writers import (
    OutputNames,
    TableWriter,
    csv_table,
    nanmean,
    readable_samples,
    sample_filename,
)
from visionfm_core.tasks.oct_layers.annotations import IGNORE_LABEL

__all__ = ["voxel_spacing_mm", "thickness_maps", "dice_per_class", "enface_png", "LayerThicknessWriter",
           "PLAUSIBLE_AXIAL_UM", "axial_spacing_problem"]

# axial pixel spacing of OCT devices (about 2-7 um for spectral domain, up to ~15 um for swept source), with margin
PLAUSIBLE_AXIAL_UM = (0.5, 50.0)

# viridis at 9 evenly spaced points (perceptually uniform, readable by colour-blind viewers)
_VIRIDIS = np.array([[68, 1, 84], [71, 45, 123], [59, 82, 139], [44, 114, 142], [33, 145, 140], [40, 174, 128],
                     [94, 201, 98], [173, 220, 48], [253, 231, 37]], dtype=np.float32)


def voxel_spacing_mm(affine) -> np.ndarray:
    """(3,) voxel sizes in mm along i, j, k: the lengths of the affine's first three columns."""
    a = np.asarray(torch.as_tensor(affine).detach().cpu().double().numpy() if isinstance(affine, torch.Tensor)
                   else affine, dtype=np.float64)
    return np.linalg.norm(a[:3, :3], axis=0)


def _label_volume(x, what: str, image: str) -> np.ndarray:
    """(I, J, K) integer class indices from (1, I, J, K) indices, (C, I, J, K) scores, or (I, J, K)."""
    a = x.detach().as_subclass(torch.Tensor).cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 4:
        a = a[0] if a.shape[0] == 1 else a.argmax(0)
    if a.ndim != 3:
        raise ValueError(f"{what} for {image} must be a label volume (1, I, J, K), got shape {a.shape}.")
    return np.rint(a).astype(np.int64)



def axial_spacing_problem(image: str, axial_spacing_um: float) -> str:
    """Why `axial_spacing_um` of `image` cannot give micrometres ("" when it can): the converter's sidecar JSON
    (`visionfm convert-oct`) says the file carried no axial spacing, or the value is outside `PLAUSIBLE_AXIAL_UM`."""
    from visionfm_core.data.io.oct_convert import _sidecar

    sidecar = _sidecar(image) if str(image).endswith((".nii", ".nii.gz")) else ""
    if sidecar and os.path.isfile(sidecar):
        try:
            source = json.loads(open(sidecar).read()).get("spacing_source") or []
        except (OSError, ValueError):
            source = []
        if source and str(source[0]).startswith("unknown"):
            return (f"the axial spacing was defaulted by the converter ({os.path.basename(sidecar)}: the file carries "
                    "none): convert again with --spacing AXIAL,LATERAL,BETWEEN in mm")
    low, high = PLAUSIBLE_AXIAL_UM
    if not low <= axial_spacing_um <= high:
        return (f"the axial spacing {axial_spacing_um:g} um is outside the plausible OCT range {low:g}-{high:g} um: "
                "set the right spacing (visionfm convert-oct --spacing, or the NIfTI header)")
    return ""

def thickness_maps(labels: np.ndarray, axial_spacing_um: float, num_classes: int) -> np.ndarray:
    """(num_classes - 1, J, K) float32: thickness in micrometres of classes 1..num_classes-1 at every A-scan of the
    (I, J, K) label map (background, class 0, has no thickness map)."""
    labels = np.asarray(labels)
    counts = np.stack([(labels == c).sum(axis=0) for c in range(1, num_classes)])
    return (counts * float(axial_spacing_um)).astype(np.float32)


def dice_per_class(pred: np.ndarray, label: np.ndarray, num_classes: int) -> list[float]:
    """Dice of classes 1..num_classes-1 over a whole volume, leaving out the voxels nobody annotated
    (`IGNORE_LABEL`); NaN where the class is in neither."""
    annotated = label != IGNORE_LABEL
    out = []
    for c in range(1, num_classes):
        p, t = (pred == c) & annotated, label == c
        total = int(p.sum()) + int(t.sum())
        out.append(2.0 * int((p & t).sum()) / total if total else float("nan"))
    return out


def _colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 through the viridis table."""
    pos = np.clip(values, 0, 1) * (len(_VIRIDIS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    t = (pos - lo)[..., None]
    return np.round(_VIRIDIS[lo] * (1 - t) + _VIRIDIS[lo + 1] * t).astype(np.uint8)


def enface_png(thickness: np.ndarray, spacing_jk_mm: Sequence[float], vmax: float, title: str,
               max_side: int = 1024) -> bytes:
    """An en-face PNG of one (J, K) thickness map: columns are lateral positions j, rows are B-scans k (k = 0 at
    the top), stretched so one pixel covers the same distance both ways (B-scans are far apart), colour-mapped
    from 0 to `vmax` um (viridis) with a labelled colour bar on the right. The range, spacing and orientation are
    also in the PNG's text metadata."""
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    sj, sk = (float(s) for s in spacing_jk_mm)
    j, k = thickness.shape
    width, height = float(j), k * sk / sj if sj > 0 else float(k)
    scale = min(1.0, max_side / max(width, height))
    width, height = max(1, round(width * scale)), max(1, round(height * scale))
    rgb = _colour(thickness.T / vmax if vmax > 0 else np.zeros_like(thickness.T))  # (K, J, 3)
    face = Image.fromarray(rgb).resize((width, height), Image.NEAREST)
    bar_w, margin, text_w = max(8, width // 20), 6, 64
    canvas = Image.new("RGB", (width + margin + bar_w + text_w, max(height, 64)), (255, 255, 255))
    canvas.paste(face, (0, 0))
    ramp = np.linspace(1, 0, canvas.height)[:, None].repeat(bar_w, 1)
    canvas.paste(Image.fromarray(_colour(ramp)), (width + margin, 0))
    draw = ImageDraw.Draw(canvas)
    x_text = width + margin + bar_w + 3
    draw.text((x_text, 0), f"{vmax:.0f} um", fill=(0, 0, 0))
    draw.text((x_text, canvas.height - 12), "0 um", fill=(0, 0, 0))
    info = PngInfo()
    for key, value in {"title": title, "thickness_min_um": "0", "thickness_max_um": f"{vmax:.3f}",
                       "colormap": "viridis", "rows": "B-scans k (k = 0 at the top)", "columns": "lateral j",
                       "spacing_mm_j_k": f"{sj:g} {sk:g}"}.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class LayerThicknessWriter(TableWriter):
    """Per-volume layer thickness (and, with labels, Dice) of an OCT layer segmentation run.

    Each decollated output sample's `pred_key` holds the predicted label map (1, I, J, K) (class indices; softmax
    scores (C, I, J, K) are argmaxed) with the input's affine in its metadata. As each batch completes, per volume:
    - `<stem>_thickness.npy`: float32 (classes, J, K), thickness in um of every class but the background at
      every A-scan (`thickness_maps`), in the order of `class_names[1:]`, then the total retina; NaN when the axial
      spacing cannot give micrometres (`axial_spacing_problem`);
    - `<stem>_thickness_<class>.png` (when `write_png` and the spacing is real): en-face maps (the total retina
      too), aspect kept by the lateral and B-scan spacing, colour bar 0..max of that map (`enface_png`).
    When the run completes (atomically, nothing partial on an interrupted run): `thickness.csv` (per volume: the
    label map SaveImaged writes, `<stem>_seg.nii.gz`, the npy file, the axial spacing and the mean thickness of each
    class over all A-scans) and, when the samples carry a `label_key` label map, `dice.csv` (Dice per class per
    volume, thickness mean absolute error per class against the label's thickness) and `metrics.json` (their
    means over volumes, `mean_dice` over the classes).
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], pred_key: str = "pred", label_key: str = "label",
                 write_png: bool = True, seg_postfix: str = "seg", root: str | None = None):
        self.output_dir = output_dir
        self.class_names = [str(c) for c in class_names]
        if len(self.class_names) < 2:
            raise ValueError(f"class_names must list the background and at least one class, got {self.class_names}")
        self.pred_key, self.label_key = pred_key, label_key
        self.write_png = bool(write_png)
        self.seg_postfix = seg_postfix
        self.names = OutputNames(root)
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, lambda _: self.names.clear())

    def _collect(self, engine: Engine) -> None:
        n = len(self.class_names)
        for _, sample, _warning in readable_samples(engine):
            image = sample_filename(sample)
            stem = self.names(image)
            pred = sample[self.pred_key]
            affine = getattr(pred, "meta", {}).get("affine")
            if affine is None:
                affine = getattr(sample.get("image"), "meta", {}).get("affine")
            if affine is None:
                raise ValueError(f"The prediction for {image} carries no affine: load volumes with LoadImaged so the "
                                 "thickness can be measured in micrometres.")
            spacing = voxel_spacing_mm(affine)
            problem = axial_spacing_problem(image, float(spacing[0] * 1000.0))
            if problem:
                engine.logger.warning("%s: no thickness in micrometres: %s", image, problem)
            # micrometres per voxel, or NaN: a thickness from a made-up spacing is never reported as one
            um = float("nan") if problem else float(spacing[0] * 1000.0)
            labels = _label_volume(pred, "The prediction", image)
            maps = _with_total(thickness_maps(labels, um, n))
            npy = f"{stem}_thickness.npy"
            buffer = io.BytesIO()
            np.save(buffer, maps)
            atomic_write_bytes(os.path.join(self.output_dir, npy), buffer.getvalue())
            if self.write_png and not problem:
                for c, name in enumerate([*self.class_names[1:], "total retina"]):
                    vmax = float(np.ceil(maps[c].max())) if maps[c].size else 0.0
                    png = enface_png(maps[c], spacing[1:], vmax, f"{name} thickness, {os.path.basename(image)}")
                    atomic_write_bytes(os.path.join(self.output_dir, f"{stem}_thickness_{_safe(name)}.png"), png)
            row = {"image": image, "label_map": f"{stem}_{self.seg_postfix}.nii.gz", "thickness": npy,
                   "axial_spacing_um": float(spacing[0] * 1000.0), "problem": problem,
                   "mean_um": [float(m.mean()) if m.size else float("nan") for m in maps]}
            label = sample.get(self.label_key)
            if label is not None and not isinstance(label, (str, os.PathLike)):
                truth = _label_volume(label, "The label", image)
                if truth.shape != labels.shape:
                    raise ValueError(f"The label of {image} is {truth.shape} but the prediction is {labels.shape}.")
                truth_maps = _with_total(thickness_maps(truth, um, n))
                row["dice"] = dice_per_class(labels, truth, n)
                # thickness errors over the fully annotated A-scans only: a partly annotated column has no truth
                scored = ~(truth == IGNORE_LABEL).any(axis=0)  # (J, K)
                row["thickness_mae_um"] = [float(np.abs(p - t)[scored].mean()) if scored.any() else float("nan")
                                           for p, t in zip(maps, truth_maps)]
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        classes = [*self.class_names[1:], "total_retina"]
        header = ["image", "label_map", "thickness", "axial_spacing_um", "axial_spacing_problem",
                  *[f"mean_{c}_um" for c in classes]]
        table = [[r["image"], r["label_map"], r["thickness"], f"{r['axial_spacing_um']:.4f}", r["problem"],
                  *["" if np.isnan(v) else f"{v:.3f}" for v in r["mean_um"]]] for r in self.rows]
        atomic_write_text(os.path.join(self.output_dir, "thickness.csv"), csv_table(header, table))
        labelled = [r for r in self.rows if "dice" in r]
        if labelled:
            layers = self.class_names[1:]  # Dice per class; thickness errors also for the total retina
            header = ["image", *[f"dice_{c}" for c in layers], *[f"thickness_mae_{c}_um" for c in classes]]
            table = [[r["image"], *["" if np.isnan(v) else f"{v:.6f}" for v in r["dice"]],
                      *["" if np.isnan(v) else f"{v:.3f}" for v in r["thickness_mae_um"]]] for r in labelled]
            atomic_write_text(os.path.join(self.output_dir, "dice.csv"), csv_table(header, table))
            dice = np.array([r["dice"] for r in labelled], dtype=np.float64)
            mae = np.array([r["thickness_mae_um"] for r in labelled], dtype=np.float64)
            per_class = {c: nanmean(dice[:, i]) for i, c in enumerate(layers)}
            metrics = {"mean_dice": nanmean(np.array([v for v in per_class.values() if v is not None])),
                       "dice": per_class,
                       "thickness_mae_um": {c: nanmean(mae[:, i]) for i, c in enumerate(classes)},
                       "num_volumes": len(labelled)}
            atomic_write_text(os.path.join(self.output_dir, "metrics.json"), json.dumps(metrics, indent=1))
        engine.logger.info("wrote thickness maps of %d volumes to %s", len(self.rows), self.output_dir)



def _with_total(maps: np.ndarray) -> np.ndarray:
    """The class maps plus the total retina (their sum: every class but the background) as the last map."""
    return np.concatenate([maps, maps.sum(0, keepdims=True)], axis=0)

def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
