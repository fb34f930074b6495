"""Public OCT cube datasets with their annotation masks -> NIfTI cubes, label maps and a datalist for the OCT
layer bundle (`oct_layer_segmentation`), read through eyepy (`visionfm prepare-data duke-dme|retouch ROOT OUT`).

Both write under OUT: ``images/<case>.nii.gz`` (the cube as (I axial, J lateral, K B-scans), the layout of
`visionfm convert-oct`, affine diag(spacing in mm)) with a JSON sidecar, ``labels/<case>_<kind>.nii.gz`` (uint8, the
cube's shape and affine) and ``datalist.json`` (``training``/``validation``/``test`` with paths relative to OUT, plus
``class_names`` and ``ignore_label``). Everything goes to temporary files first and is renamed only when every case
converted, so a bad file leaves no partial output.

- **Duke DME** (Chiu et al. 2015, ``Subject_01.mat`` ... ``Subject_10.mat``, read by ``eyepy.io.import_dukechiu2_mat``):
  11 of 61 B-scans per cube are annotated, each over a central lateral band. An A-scan (column of a B-scan) counts as
  annotated when all 8 boundaries of the chosen grader are given there; every other voxel is ``IGNORE_LABEL`` (255),
  which the bundle leaves out of the loss, the training crops and every score. Annotated A-scans get the bundle's 9
  classes: 0 above the ILM (vitreous) and below Bruch's membrane (choroid), 1 RNFL ... 7 OS+RPE between consecutive
  boundaries, and 8 fluid where the grader marked fluid (over the layer). Boundaries are MATLAB row coordinates
  (1-based): row r (0-based) lies below boundary b when r + 1 >= b. A boundary drawn above the one before it
  (crossing) is moved down to it (a layer of zero thickness). Spacing: what eyepy gives for the dataset (axial
  3.87 um, lateral 11.33 um, 123 um between B-scans: the means of the ranges in the paper; the .mat files carry
  none). Split by subject (one cube each).
- **RETOUCH** (Bogunovic et al. 2019, ``<vendor folder>/<case>/oct.mhd`` + ``reference.mhd``, read by
  ``eyepy.io.import_retouch``): every B-scan is annotated for three fluids; labels 0 no fluid, 1 IRF, 2 SRF, 3 PED
  (its own class list, not the layer bundle's: train with ``--class_names`` as docs/volumes.md shows). Intensities as
  eyepy gives them (8-bit; 16-bit Spectralis cubes scaled by 255/65535). Spacing from the .mhd header. The vendor
  (Cirrus, Spectralis, Topcon) comes from the folder names and is kept in the datalist; each vendor is split on its
  own so every split holds all three. Cases without ``reference.mhd`` (the challenge's test set) are skipped with a
  warning.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visionfm_core.data.datasets.converters import SPLITS, _finish, split_train_val_test
from visionfm_core.data.io.oct_convert import LAYOUT, StagedNiftiWriter
from visionfm_core.data.synthetic.oct_samples import OCT_LAYER_CLASSES
from visionfm_core.tasks.oct_layers.annotations import IGNORE_LABEL
from visionfm_core.tasks.oct_layers.thickness import PLAUSIBLE_AXIAL_UM

__all__ = ["DUKE_BOUNDARIES", "RETOUCH_CLASSES", "RETOUCH_VENDORS", "duke_dme_to_datalist", "duke_layer_labels",
           "retouch_to_datalist"]

logger = logging.getLogger(__name__)

# eyepy's names of the 8 Duke boundaries, top to bottom; the layer between boundary k-1 and k is class k
DUKE_BOUNDARIES = ("ILM", "NFL/GCL", "IPL/INL", "INL/OPL", "OPL/ONL", "ISM/ISE", "OS/RPE", "BM")
DUKE_FLUID = len(OCT_LAYER_CLASSES) - 1  # the bundle's last class
RETOUCH_CLASSES = ["background", "IRF", "SRF", "PED"]
RETOUCH_VENDORS = ("Cirrus", "Spectralis", "Topcon")
SPACING_HINT = "pass --spacing AXIAL,LATERAL,BETWEEN in mm (e.g. 0.0039,0.0117,0.12)"


def _eyepy():
    try:
        import eyepy
    except ImportError as e:
        raise ValueError("Reading Duke DME and RETOUCH needs the eyepy library: pip install 'visionfm-core[oct]'.") \
            from e
    return eyepy


def _check_spacing(spacing: Sequence[float], where: str) -> list[float]:
    spacing = [float(s) for s in spacing]
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"{where}: spacing {spacing} is not 3 positive values in mm; {SPACING_HINT}.")
    low, high = PLAUSIBLE_AXIAL_UM
    if not low <= spacing[0] * 1000 <= high:
        raise ValueError(f"{where}: the axial spacing {spacing[0] * 1000:g} um is outside the plausible OCT range "
                         f"{low:g}-{high:g} um (thickness would be wrong); {SPACING_HINT}.")
    return spacing


def _sidecar(source: Path, fmt: str, array: np.ndarray, spacing, spacing_source: str, **extra) -> dict:
    # the fields of `visionfm convert-oct`'s sidecar, so the thickness writer and users read both alike
    return {"source": str(source.resolve()), "format": fmt, "shape": list(array.shape),
            "layout": LAYOUT,
            "spacing_mm": [float(s) for s in spacing], "spacing_source": [spacing_source] * 3,
            "dtype": str(array.dtype), **extra}


def _image(raw: np.ndarray) -> np.ndarray:
    """eyepy's (B-scans, axial, lateral) -> (axial, lateral, B-scans); 8-bit kept, anything else float32."""
    array = np.ascontiguousarray(np.moveaxis(np.asarray(raw), 0, -1))
    return array if array.dtype == np.uint8 else array.astype(np.float32)


# --- Duke DME -----------------------------------------------------------------------------------------------------


def duke_layer_labels(boundaries: np.ndarray, fluid: np.ndarray | None, depth: int) -> np.ndarray:
    """Duke boundaries (8, K B-scans, J A-scans; MATLAB rows, NaN where not annotated) and fluid (K, I, J) -> the
    label map (I, J, K), uint8: layers 1-7 between consecutive boundaries, 0 above the first and below the last,
    `DUKE_FLUID` where fluid is marked, `IGNORE_LABEL` in every A-scan without all 8 boundaries."""
    b = np.asarray(boundaries, dtype=np.float64)
    annotated = np.isfinite(b).all(axis=0)  # (K, J)
    b = np.maximum.accumulate(np.where(annotated, b, 0.0), axis=0)  # a crossing boundary: zero-thickness layer
    row = np.arange(1, depth + 1, dtype=np.float64)[:, None, None]  # MATLAB row of each voxel, (I, 1, 1)
    count = np.zeros((depth, *annotated.shape), dtype=np.uint8)  # boundaries at or above each voxel, (I, K, J)
    for level in b:
        count += row >= level[None]
    labels = np.where(count == len(b), 0, count).astype(np.uint8)  # below Bruch's membrane: background (choroid)
    if fluid is not None:
        labels[np.moveaxis(np.asarray(fluid, bool), 1, 0)] = DUKE_FLUID
    labels[:, ~annotated] = IGNORE_LABEL
    return np.ascontiguousarray(labels.transpose(0, 2, 1))  # (I, J, K)


def _subject(path: Path) -> str:
    match = re.search(r"subject[_\s-]*0*(\d+)", path.stem, re.IGNORECASE)
    return f"{int(match.group(1)):02d}" if match else path.stem


def _read_duke(path: Path, grader: int):
    eyepy = _eyepy()
    try:
        volume = eyepy.io.import_dukechiu2_mat(str(path))
    except KeyError as e:
        raise ValueError(f"Duke DME file {path}: variable {e} is missing: not a Chiu_BOE_2014 .mat file (it needs "
                         "images, manualLayers1/2, manualFluid1/2, automaticLayersDME, automaticLayersNormal, "
                         "automaticFluidDME).") from e
    except Exception as e:  # scipy's MatReadError, a wrong array shape, ...
        raise ValueError(f"Duke DME file {path} could not be read by eyepy: {type(e).__name__}: {e}") from e
    names = [f"manualLayers{grader}_{b}" for b in DUKE_BOUNDARIES]
    layers = volume.layers
    missing = [n for n in names if n not in layers]
    if missing:
        raise ValueError(f"Duke DME file {path}: eyepy found no boundaries {missing}.")
    boundaries = np.stack([layers[n].data for n in names])
    raw = volume.raw_data
    if boundaries.shape[1:] != (raw.shape[0], raw.shape[2]):
        raise ValueError(f"Duke DME file {path}: manualLayers{grader} covers {boundaries.shape[1]} B-scans x "
                         f"{boundaries.shape[2]} A-scans, the images {raw.shape[0]} x {raw.shape[2]}.")
    fluid = volume.volume_maps.get(f"manualFluid{grader}")
    spacing = (volume.scale_y, volume.scale_x, volume.scale_z) if volume.scale_unit == "mm" else None
    return raw, boundaries, None if fluid is None else fluid.data, spacing


def duke_dme_to_datalist(root: str | os.PathLike, out: str | os.PathLike, grader: int = 1,
                         val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                         spacing: Sequence[float] | None = None) -> dict:
    """The Duke DME dataset (the ``.mat`` files under ``root``, e.g. ``2015_BOE_Chiu/Subject_NN.mat``) -> cubes,
    label maps and ``out/datalist.json`` for the OCT layer bundle (see the module docstring for the labels).

    ``grader`` 1 (default) or 2 picks ``manualLayers<grader>``/``manualFluid<grader>``. Splits are carved by
    subject with ``seed`` (10 subjects: 6/2/2 with the default fractions). ``spacing`` (axial, lateral, between
    B-scans; mm) replaces eyepy's dataset means. Items: ``image``, ``label``, ``subject``, ``grader`` and
    ``annotated_bscans`` (their number; the image's sidecar lists their 0-based indices).

    Raises:
        ValueError: naming the file: not a Duke .mat file, no annotated B-scan for the grader, a spacing outside
            the plausible OCT range; or no .mat file under ``root``.
    """
    root, out = Path(root), Path(out)
    if grader not in (1, 2):
        raise ValueError(f"Duke DME grader must be 1 or 2 (manualLayers1/manualLayers2), got {grader!r}.")
    if not root.is_dir():
        raise ValueError(f"Duke DME folder {root} does not exist.")
    files = sorted(p for p in root.rglob("*.mat") if not p.name.startswith("."))
    if not files:
        raise ValueError(f"Duke DME folder {root} holds no .mat files (expected Subject_01.mat ... Subject_10.mat).")
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        raise ValueError(f"Duke DME folder {root}: several .mat files share a name ({sorted(stems)}).")
    writer, items = StagedNiftiWriter(".prepare-oct-"), []
    try:
        for path in files:
            raw, boundaries, fluid, found = _read_duke(path, grader)
            used = _check_spacing(spacing if spacing is not None else found or [], f"Duke DME file {path}")
            labels = duke_layer_labels(boundaries, fluid, raw.shape[1])
            annotated = np.flatnonzero((labels != IGNORE_LABEL).any(axis=(0, 1)))
            if annotated.size == 0:
                raise ValueError(f"Duke DME file {path}: no B-scan is annotated by grader {grader} (manualLayers"
                                 f"{grader} has no A-scan with all 8 boundaries): nothing to train or score on; "
                                 "remove the file or try the other grader.")
            image = _image(raw)
            source = "given" if spacing is not None else "eyepy (dataset mean)"
            side = _sidecar(path, "duke_dme", image, used, source, grader=grader,
                            annotated_bscans=annotated.tolist())
            items.append({
                "image": writer.nifti(out / f"images/{path.stem}.nii.gz", image, used, side),
                "label": writer.nifti(out / f"labels/{path.stem}_layers.nii.gz", labels, used),
                # a count, not the indices (in the sidecar): lists of unequal length would not collate in a batch
                "subject": _subject(path), "grader": grader, "annotated_bscans": int(annotated.size)})
        result = split_train_val_test(items, val_fraction, test_fraction, seed, group=lambda it: it["subject"],
                                      what=f"Duke DME set {root}")
        result.update(class_names=list(OCT_LAYER_CLASSES), ignore_label=IGNORE_LABEL,
                      source=f"Duke DME (Chiu et al. 2015), manual annotations of grader {grader}")
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    return _finish(result, out / "datalist.json")


# --- RETOUCH ------------------------------------------------------------------------------------------------------


def _mhd_header(path: Path) -> dict[str, str]:
    header = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip().lower()] = value.strip()
    return header


def _vendor(case: Path, root: Path) -> str:
    parts = case.resolve().relative_to(root.resolve().parent).parts  # the folders from root down to the case
    for part in reversed(parts):
        for vendor in RETOUCH_VENDORS:
            if vendor.lower() in part.lower():
                return vendor
    raise ValueError(f"RETOUCH case {case}: no folder above it names the vendor ({', '.join(RETOUCH_VENDORS)}), as "
                     f"the challenge's RETOUCH-TrainingSet-<vendor> folders do; put it under such a folder in {root}.")


def _read_retouch(case: Path, spacing: Sequence[float] | None):
    import itk

    header = _mhd_header(case / "oct.mhd")
    if spacing is None and "elementspacing" not in header:
        raise ValueError(f"RETOUCH case {case}: oct.mhd has no ElementSpacing; {SPACING_HINT}.")
    try:
        volume = _eyepy().io.import_retouch(str(case))
    except Exception as e:  # itk's RuntimeError on a broken header or missing raw file, ...
        raise ValueError(f"RETOUCH case {case} could not be read by eyepy: {type(e).__name__}: {e}") from e
    raw = volume.raw_data
    found = (volume.scale_y, volume.scale_x, volume.scale_z)  # eyepy: y axial, x lateral, z between B-scans
    used = _check_spacing(spacing if spacing is not None else found, f"RETOUCH case {case}")
    # eyepy keeps only the voxels equal to 1, 2, 3: other values would silently become background, so look first
    reference = np.asarray(itk.imread(str(case / "reference.mhd")))
    if reference.shape != raw.shape:
        raise ValueError(f"RETOUCH case {case}: reference.mhd has shape {reference.shape} (B-scans, rows, columns), "
                         f"oct.mhd {raw.shape}.")
    bad = sorted(set(np.unique(reference).tolist()) - set(range(len(RETOUCH_CLASSES))))
    if bad:
        raise ValueError(f"RETOUCH case {case}: reference.mhd holds values {bad[:8]} outside 0 (no fluid), 1 IRF, "
                         "2 SRF, 3 PED.")
    labels = np.zeros(raw.shape, np.uint8)
    for value, name in enumerate(RETOUCH_CLASSES[1:], start=1):
        labels[volume.volume_maps[name].data] = value
    if raw.max() < 16:
        logger.warning("RETOUCH case %s: eyepy's 8-bit scaling of %s leaves grey values 0-%d only", case,
                       header.get("elementtype", "the cube"), int(raw.max()))
    return _image(raw), np.ascontiguousarray(np.moveaxis(labels, 0, -1)), used, header.get("elementtype")


def retouch_to_datalist(root: str | os.PathLike, out: str | os.PathLike, val_fraction: float = 0.2,
                        test_fraction: float = 0.2, seed: int = 0, spacing: Sequence[float] | None = None) -> dict:
    """RETOUCH case folders under ``root`` (``RETOUCH-TrainingSet-<vendor>/<case>/{oct,reference}.mhd``) -> cubes,
    fluid label maps (0 no fluid, 1 IRF, 2 SRF, 3 PED) and ``out/datalist.json``.

    Every case folder holding an ``oct.mhd`` is taken; those without ``reference.mhd`` are skipped with a warning.
    Splits are carved per vendor with ``seed`` (RETOUCH gives no patient ids: one case is one group). ``spacing``
    (axial, lateral, between B-scans; mm) replaces the .mhd's. Items: ``image``, ``label``, ``vendor``, ``case``.

    Raises:
        ValueError: naming the case: no vendor in its folder names, no ElementSpacing (pass ``--spacing``), a
            spacing outside the plausible OCT range, a reference of another shape or with values outside 0-3;
            or no annotated case under ``root``.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise ValueError(f"RETOUCH folder {root} does not exist.")
    cases = sorted(p.parent for p in root.rglob("oct.mhd"))
    unlabelled = [c for c in cases if not (c / "reference.mhd").is_file()]
    cases = [c for c in cases if c not in unlabelled]
    if unlabelled:
        logger.warning("RETOUCH: %d case(s) without reference.mhd skipped (e.g. %s)", len(unlabelled), unlabelled[0])
    if not cases:
        raise ValueError(f"RETOUCH folder {root} holds no case folder with oct.mhd and reference.mhd"
                         f"{f' ({len(unlabelled)} without reference.mhd)' if unlabelled else ''}.")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"RETOUCH folder {root}: several case folders share a name ({sorted(names)}).")
    writer, by_vendor = StagedNiftiWriter(".prepare-oct-"), {}
    try:
        for case in cases:
            vendor = _vendor(case, root)
            image, labels, used, stored = _read_retouch(case, spacing)
            source = "given" if spacing is not None else "header"
            side = _sidecar(case / "oct.mhd", "retouch", image, used, source, vendor=vendor, stored_type=stored)
            by_vendor.setdefault(vendor, []).append({
                "image": writer.nifti(out / f"images/{case.name}.nii.gz", image, used, side),
                "label": writer.nifti(out / f"labels/{case.name}_fluid.nii.gz", labels, used),
                "vendor": vendor, "case": case.name})
        result: dict = {s: [] for s in SPLITS}
        for vendor, items in sorted(by_vendor.items()):
            part = split_train_val_test(items, val_fraction, test_fraction, seed,
                                        what=f"RETOUCH {vendor} set under {root}")
            for s in SPLITS:
                result[s] += part[s]
        result.update(class_names=list(RETOUCH_CLASSES),
                      source="RETOUCH (Bogunovic et al. 2019), fluid reference annotations")
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    return _finish(result, out / "datalist.json")
