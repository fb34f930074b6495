"""Public dense-task datasets (vessel segmentation, landmarks) -> MONAI datalists.

Every converter returns ``{"training": [...], "validation": [...], "test": [...]}`` and, given ``out``, writes it
atomically as JSON with paths relative to the JSON's folder (so dataset and datalist can move together); without
``out`` paths are absolute. Problems (an empty folder, an image without its label, a bad coordinate) raise a
``ValueError`` naming the file or CSV row before anything is written.

Datasets without an official validation split get one carved from training, deterministically for a ``seed``;
datasets without an official test split get one carved the same way. Validation is for model selection; the test
split is never used for it. Where both eyes of one person are in a dataset (CHASE_DB1), they go to the same split.

Vessel items: ``{"image", "label", "fov"?}`` (``fov`` where the dataset ships field-of-view masks; DRIVE test items
have no ``label`` when the manual annotations are not present). Landmark items: ``{"image", "landmarks": [[x, y],
...]}`` in original image pixels (x right, y down); landmark datalists also carry ``"landmark_names"``.

Note: STARE images are ``.ppm`` and DRIVE labels/masks ``.gif``; Pillow reads both.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from visionfm_core.engine.io import atomic_write_text

__all__ = [
    "drive_to_datalist",
    "stare_to_datalist",
    "chase_to_datalist",
    "hrf_to_datalist",
    "idrid_landmarks_to_datalist",
    "landmark_csv_to_datalist",
    "split_train_val_test",
]

SPLITS = ("training", "validation", "test")


# --- shared helpers -----------------------------------------------------------------------------------------------


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files directly in ``folder`` whose name ends with one of ``suffixes`` (case-insensitive), hidden ones skipped."""
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes))


def _require_dir(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise ValueError(f"{what} folder {folder} does not exist.")
    return folder


def _require_images(folder: Path, suffixes: Sequence[str], what: str) -> list[Path]:
    found = _files(_require_dir(folder, what), suffixes)
    if not found:
        zipped = _files(folder, [s + ".gz" for s in suffixes])
        hint = f" ({len(zipped)} gzip-compressed files found: decompress them with gunzip first)" if zipped else ""
        raise ValueError(f"{what} folder {folder} contains no {'/'.join(suffixes)} files{hint}.")
    return found


def _find_ci(folder: Path, name: str) -> Path | None:
    """``folder/name``, matching the name case-insensitively (HRF mixes .jpg and .JPG)."""
    exact = folder / name
    if exact.is_file():
        return exact
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.lower() == name.lower() and p.is_file():
                return p
    return None


def _partner(folder: Path, names: Sequence[str], image: Path, what: str, required: bool = True) -> Path | None:
    """The first of ``names`` present in ``folder``; a ValueError naming ``image`` if none is and it is required."""
    for name in names:
        found = _find_ci(folder, name)
        if found is not None:
            return found
    if required:
        raise ValueError(f"Image {image} has no {what}: expected {folder / names[0]}.")
    return None


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must leave images for training, got "
                         f"{val_fraction} + {test_fraction}.")


def split_train_val_test(items: list[dict], val_fraction: float, test_fraction: float = 0.0, seed: int = 0,
                         group: Callable[[dict], str] | None = None, what: str = "dataset") -> dict[str, list[dict]]:
    """Split ``items`` into training/validation/test deterministically for ``seed``.

    ``group(item)`` keeps items of one group (e.g. both eyes of one person) in the same split. The validation and
    test splits get ``round(fraction * number of groups)`` groups, at least one when the fraction is positive, and
    training keeps at least one. Within each split the items keep their input order.
    """
    _check_fractions(val_fraction, test_fraction)
    keys = [group(it) if group else str(i) for i, it in enumerate(items)]
    groups = sorted(set(keys))
    n = len(groups)
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n - n_test - n_val < 1:
        raise ValueError(f"The {what} has {n} {'groups of images' if group else 'images'}: too few for "
                         f"val_fraction={val_fraction} and test_fraction={test_fraction} with one left for training.")
    order = np.random.default_rng(seed).permutation(n)
    split_of = {}
    for rank, index in enumerate(order):
        split_of[groups[index]] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "training"
    result: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for key, item in zip(keys, items):
        result[split_of[key]].append(item)
    return result


def _finish(result: dict, out: str | os.PathLike | None, path_keys: Sequence[str] = ("image", "label", "fov")) -> dict:
    """Make paths relative to ``out``'s folder (absolute without ``out``), then write ``out`` atomically."""
    rel_to = os.path.dirname(os.path.abspath(os.fspath(out))) if out is not None else None

    def fix(path) -> str:
        path = os.path.abspath(os.fspath(path))
        return Path(os.path.relpath(path, rel_to)).as_posix() if rel_to is not None else path

    for split in SPLITS:
        result[split] = [{k: fix(v) if k in path_keys else v for k, v in item.items()} for item in result[split]]
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


# --- vessel segmentation ------------------------------------------------------------------------------------------


def _drive_split(root: Path, split: str, labels_required: bool) -> list[dict]:
    images = _require_images(root / split / "images", [f"_{split}.tif", f"_{split}.tiff"], f"DRIVE {split} images")
    manual, masks = root / split / "1st_manual", root / split / "mask"
    has_labels = labels_required or manual.is_dir()
    items = []
    for image in images:
        number = image.name.split("_")[0]
        item = {"image": image}
        if has_labels:
            item["label"] = _partner(manual, [f"{number}_manual1.gif", f"{number}_manual1.png"], image,
                                     "manual vessel annotation")
        if masks.is_dir():
            item["fov"] = _partner(masks, [f"{number}_{split}_mask.gif", f"{number}_{split}_mask.png"], image,
                                   "field-of-view mask")
        items.append(item)
    return items


def drive_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                      seed: int = 0) -> dict:
    """DRIVE (``training/{images,1st_manual,mask}``, ``test/{images,1st_manual?,mask}``) -> datalist.

    Training images ``NN_training.tif`` need ``1st_manual/NN_manual1.gif``; FOV masks ``mask/NN_<split>_mask.gif``
    are used when the ``mask`` folder exists (then every image needs one). Test items get a label only when
    ``test/1st_manual`` exists (the public test set may come without it). Validation is carved from training.
    """
    root = _require_dir(Path(root), "DRIVE dataset")
    training = _drive_split(root, "training", labels_required=True)
    test = _drive_split(root, "test", labels_required=False) if (root / "test").is_dir() else []
    result = split_train_val_test(training, val_fraction, 0.0, seed, what=f"DRIVE training set {root}")
    result["test"] = test
    return _finish(result, out)


def stare_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                      test_fraction: float = 0.3, seed: int = 0) -> dict:
    """STARE (``stare-images/imNNNN.ppm``, ``labels-ah/imNNNN.ah.ppm``, no FOV masks) -> datalist.

    The vessel set is the photographs with an annotation in ``labels-ah`` (Hoover): the full STARE archive holds
    about 400 photographs of which 20 are annotated, so photographs without an annotation are left out. Every
    annotation needs its photograph. Validation and test splits are carved (no official split).
    """
    root = _require_dir(Path(root), "STARE dataset")
    labels = _require_images(root / "labels-ah", [".ah.ppm"], "STARE labels-ah")
    images_dir = _require_dir(root / "stare-images", "STARE stare-images")
    items = []
    for label in labels:
        stem = label.name[: -len(".ah.ppm")]
        image = _find_ci(images_dir, f"{stem}.ppm")
        if image is None:
            raise ValueError(f"STARE annotation {label} has no photograph: expected {images_dir / (stem + '.ppm')}.")
        items.append({"image": image, "label": label})
    return _finish(split_train_val_test(items, val_fraction, test_fraction, seed, what=f"STARE set {root}"), out)


def chase_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                      test_fraction: float = 0.3, seed: int = 0) -> dict:
    """CHASE_DB1 (one folder: ``Image_01L.jpg`` with ``Image_01L_1stHO.png``; no FOV masks) -> datalist.

    Both eyes of a child (``01L``, ``01R``) always go to the same split. Validation and test splits are carved.
    """
    root = _require_dir(Path(root), "CHASE_DB1 dataset")
    pattern = re.compile(r"^Image_(\d+)([LR])\.jpe?g$", re.IGNORECASE)
    images = [p for p in _files(root, [".jpg", ".jpeg"]) if pattern.match(p.name)]
    if not images:
        raise ValueError(f"CHASE_DB1 folder {root} contains no Image_NN[LR].jpg photographs.")
    items = []
    for image in images:
        label = _partner(root, [f"{image.stem}_1stHO.png"], image, "1st observer vessel annotation")
        items.append({"image": image, "label": label})
    subject = lambda item: pattern.match(Path(item["image"]).name).group(1)  # noqa: E731
    return _finish(split_train_val_test(items, val_fraction, test_fraction, seed, group=subject,
                                        what=f"CHASE_DB1 set {root}"), out)


def hrf_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                    test_fraction: float = 0.3, seed: int = 0) -> dict:
    """HRF (``images/NN_{h,dr,g}.jpg``, ``manual1/NN_x.tif``, ``mask/NN_x_mask.tif``) -> datalist.

    Every photograph needs its annotation, and its FOV mask when the ``mask`` folder exists. Validation and test
    splits are carved (no official split).
    """
    root = _require_dir(Path(root), "HRF dataset")
    images = _require_images(root / "images", [".jpg", ".jpeg", ".tif", ".tiff"], "HRF images")
    manual, masks = _require_dir(root / "manual1", "HRF manual1"), root / "mask"
    items = []
    for image in images:
        item = {"image": image, "label": _partner(manual, [f"{image.stem}.tif", f"{image.stem}.tiff"], image,
                                                   "manual vessel annotation")}
        if masks.is_dir():
            item["fov"] = _partner(masks, [f"{image.stem}_mask.tif", f"{image.stem}_mask.tiff"], image,
                                   "field-of-view mask")
        items.append(item)
    return _finish(split_train_val_test(items, val_fraction, test_fraction, seed, what=f"HRF set {root}"), out)


# --- landmarks ----------------------------------------------------------------------------------------------------


def _number(text: str, csv_path, line: int, column: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        shown = "is missing" if text is None or not str(text).strip() else f"is {text!r}, not a number"
        raise ValueError(f"CSV {csv_path}, line {line}: {column} {shown}.")
    return value


def _check_inside(image: Path, points: list[list[float]], names: Sequence[str], where: str) -> None:
    """Every point inside the image (0 <= x < W, 0 <= y < H); the size comes from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError):
        return  # not a Pillow format (e.g. DICOM): ValidateLandmarksd checks the bounds when it is loaded
    for name, (x, y) in zip(names, points):
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"{where}: {name} at (x={x:g}, y={y:g}) lies outside image {image} "
                             f"({width}x{height}, W x H).")


def _read_idrid_csv(csv_path: Path) -> dict[str, list[float]]:
    """``Image No, X- Coordinate, Y - Coordinate`` rows (trailing empty columns and blank rows ignored)."""
    points = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) < 3 or "image" not in rows[0][0].lower():
        raise ValueError(f"CSV {csv_path} does not start with the header 'Image No, X- Coordinate, Y - Coordinate'.")
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        name = row[0].strip()
        if not name:
            raise ValueError(f"CSV {csv_path}, line {line}: the image name is missing.")
        cells = row[1:3] + [""] * (3 - len(row))
        if name in points:
            raise ValueError(f"CSV {csv_path}, line {line}: image {name} appears twice.")
        points[name] = [_number(cells[0], csv_path, line, "the X coordinate"),
                        _number(cells[1], csv_path, line, "the Y coordinate")]
    if not points:
        raise ValueError(f"CSV {csv_path} has no rows.")
    return points


def _child(folder: Path, *words: str) -> Path:
    """The one entry of ``folder`` whose name contains all ``words`` (case-insensitive)."""
    _require_dir(folder, "IDRiD")
    found = [p for p in sorted(folder.iterdir()) if all(w.lower() in p.name.lower() for w in words)
             and not p.name.startswith(".")]
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) if found else "none"
        raise ValueError(f"IDRiD folder {folder}: expected exactly one entry named like '*{'*'.join(words)}*', "
                         f"found {listing}.")
    return found[0]


def idrid_landmarks_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None,
                                val_fraction: float = 0.2, seed: int = 0) -> dict:
    """IDRiD localisation (``C. Localization``) -> datalist with ``landmarks = [[x_od, y_od], [x_fovea, y_fovea]]``.

    ``root`` is the ``C. Localization`` folder or the folder holding it. Images come from ``1. Original Images/
    {a. Training Set, b. Testing Set}``, coordinates from the Training/Testing CSVs in ``2. Groundtruths/
    {1. Optic Disc Center Location, 2. Fovea Center Location}``. Every image needs a row in both CSVs and every
    row an image. Validation is carved from the training set; the testing set is the test split.
    """
    root = Path(root)
    if (root / "C. Localization").is_dir():
        root = root / "C. Localization"
    images_root = _child(root, "Original Images")
    truth = _child(root, "Groundtruths")
    disc_dir, fovea_dir = _child(truth, "Optic Disc"), _child(truth, "Fovea")
    names = ["optic_disc", "fovea"]
    splits = {}
    for split, word in (("training", "Training"), ("test", "Testing")):
        image_dir = _child(images_root, word)
        disc = _read_idrid_csv(_child(disc_dir, word, ".csv"))
        fovea = _read_idrid_csv(_child(fovea_dir, word, ".csv"))
        images = {p.stem: p for p in _require_images(image_dir, [".jpg", ".jpeg", ".png", ".tif"], "IDRiD images")}
        for csv_points, what in ((disc, "optic disc"), (fovea, "fovea")):
            if set(csv_points) - set(images):
                missing = sorted(set(csv_points) - set(images))[0]
                raise ValueError(f"IDRiD {what} CSV for the {word} set names image {missing}, which is not in "
                                 f"{image_dir}.")
        items = []
        for stem, image in images.items():
            for csv_points, what in ((disc, "optic disc"), (fovea, "fovea")):
                if stem not in csv_points:
                    raise ValueError(f"IDRiD image {image} has no {what} coordinates in the {word} set CSV.")
            points = [disc[stem], fovea[stem]]
            _check_inside(image, points, names, f"IDRiD image {stem}")
            items.append({"image": image, "landmarks": points})
        splits[split] = items
    result = split_train_val_test(splits["training"], val_fraction, 0.0, seed, what=f"IDRiD training set {root}")
    result["test"] = splits["test"]
    result["landmark_names"] = names
    return _finish(result, out)


_SPLIT_NAMES = {"training": "training", "train": "training", "validation": "validation", "val": "validation",
                "test": "test"}


def landmark_csv_to_datalist(csv_path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                             out: str | os.PathLike | None = None, names: Sequence[str] | None = None,
                             val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """A landmark CSV ``image,<name>_x,<name>_y,...`` (one row per image) -> datalist.

    Landmark names come from the header, in its order; ``names`` (optional) picks and orders them. Image paths are
    relative to ``image_dir`` (default: the CSV's folder) or absolute. An optional ``split`` column
    (training/validation/test, or train/val/test) gives the splits; otherwise validation and test are carved
    with ``val_fraction`` / ``test_fraction``.

    Raises:
        ValueError: naming the CSV and line: a bad header, a missing image, a missing or non-numeric coordinate,
            a point outside its image, a repeated image.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"Landmark CSV {csv_path} does not exist.")
    image_dir = Path(image_dir) if image_dir is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"Landmark CSV {csv_path} is empty.")
    header = [h.strip() for h in rows[0]]
    if not header or header[0] != "image":
        raise ValueError(f"Landmark CSV {csv_path}: the first column must be 'image', got header {rows[0]}.")
    columns = {h: i for i, h in enumerate(header)}
    split_col = columns.get("split")
    coord_cols = [h for h in header[1:] if h != "split"]
    in_header = [h[:-2] for h in coord_cols if h.endswith("_x")]
    if sorted(coord_cols) != sorted([f"{n}_x" for n in in_header] + [f"{n}_y" for n in in_header]) or not in_header:
        raise ValueError(f"Landmark CSV {csv_path}: columns after 'image' must be pairs <name>_x,<name>_y "
                         f"(and optionally 'split'), got {header[1:]}.")
    if names is None:
        names = in_header
    else:
        names = [str(n) for n in names]
        unknown = [n for n in names if n not in in_header]
        if unknown or not names:
            raise ValueError(f"Landmark CSV {csv_path}: names {unknown or names} are not among its landmarks "
                             f"{in_header}.")

    items, split_of, seen = [], {}, {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        row = row + [""] * (len(header) - len(row))
        image_name = row[0].strip()
        if not image_name:
            raise ValueError(f"Landmark CSV {csv_path}, line {line}: the image is missing.")
        image = (image_dir / image_name).resolve()
        if not image.is_file():
            raise ValueError(f"Landmark CSV {csv_path}, line {line}: image {image} does not exist.")
        if image in seen:
            raise ValueError(f"Landmark CSV {csv_path}, line {line}: image {image_name} already appears on line "
                             f"{seen[image]}.")
        seen[image] = line
        points = [[_number(row[columns[f"{n}_{axis}"]], csv_path, line, f"{n}_{axis}") for axis in "xy"]
                  for n in names]
        _check_inside(image, points, names, f"Landmark CSV {csv_path}, line {line}")
        item = {"image": image, "landmarks": points}
        if split_col is not None:
            value = row[split_col].strip().lower()
            if value not in _SPLIT_NAMES:
                raise ValueError(f"Landmark CSV {csv_path}, line {line}: split {row[split_col]!r} is not one of "
                                 "training, validation, test (or train, val).")
            split_of[id(item)] = _SPLIT_NAMES[value]
        items.append(item)
    if not items:
        raise ValueError(f"Landmark CSV {csv_path} has no rows.")

    if split_col is not None:
        result = {s: [it for it in items if split_of[id(it)] == s] for s in SPLITS}
        if not result["training"]:
            raise ValueError(f"Landmark CSV {csv_path}: no row has split 'training'.")
    else:
        result = split_train_val_test(items, val_fraction, test_fraction, seed, what=f"landmark CSV {csv_path}")
    result["landmark_names"] = list(names)
    return _finish(result, out)
