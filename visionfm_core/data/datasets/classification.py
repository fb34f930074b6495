"""Public classification datasets and generic CSVs -> MONAI datalists, with leak-free seeded splits.

Every converter returns ``{"training": [...], "validation": [...], "test": [...], <extras>}`` (formats as in the
project's "Datalist formats": ``{"image", "label"}`` with ``"class_names"``; ``{"image", "targets"}`` with
``"target_names"``/``"target_units"``; ``{"image", "labels"}`` for the multi-task head) and, given ``out``, writes it
atomically with image paths relative to the JSON's folder (absolute without ``out``). A dataset's skipped images
are counted under ``"excluded"`` (reason -> count). Problems (a missing image, an empty class folder, a label out
of range, a non-numeric target) raise a ``ValueError`` naming the file and CSV row or folder; nothing is written.

CSV rows are numbered as a spreadsheet shows them: the header is row 1.

Splits: a dataset's official splits are kept; missing validation (and, where there is no official test set,
test) splits are carved by :func:`stratified_group_split`, seeded, stratified by class and grouped by patient
when the dataset identifies patients, so no patient is in two splits. Validation is for model selection only.

Files in formats that need a library which is not installed (``.xlsx`` without ``openpyxl``) are read from their
CSV export (same columns); the error says so.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from visionfm_core.data.datasets.converters import SPLITS, _check_fractions, _child, _finish
from visionfm_core.data.io.readers import IMAGE_EXTENSIONS

__all__ = [
    "stratified_group_split",
    "idrid_grading_to_datalist",
    "aptos_to_datalist",
    "messidor2_to_datalist",
    "octid_to_datalist",
    "kermany_to_datalist",
    "refuge_to_datalist",
    "papila_to_datalist",
    "jsiec_to_datalist",
    "retfound_split_datalist",
    "csv_to_datalist",
    "summarize_datalist",
    "report_datalist",
    "DR_GRADES",
    "MULTITASK_LABELS",
]

DR_GRADES = ["no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr"]
IDRID_DME_RISK = ["no_exudates", "exudates_outside_1dd_of_macula", "exudates_within_1dd_of_macula"]
# Multi-task keys of fundus_multidisease_classification -> number of classes (dr_grade 5-way, the rest binary).
MULTITASK_LABELS = {"dr_grade": 5, "dr": 2, "glaucoma": 2, "amd": 2, "cataract": 2, "hypertensive_retinopathy": 2,
                    "retinal_vein_occlusion": 2, "myopia": 2, "retinal_detachment": 2}
_MISSING = {"", "na", "n/a", "nan", "null", "none"}  # empty target cells (pandas writes NaN as "" or "nan")
_SPLIT_NAMES = {"training": "training", "train": "training", "validation": "validation", "val": "validation",
                "valid": "validation", "test": "test", "testing": "test"}


# --- the split ----------------------------------------------------------------------------------------------------


def _key_fn(key: str | Callable[[dict], object] | None) -> Callable[[dict], object] | None:
    if key is None or callable(key):
        return key
    return lambda item: item.get(key)


def stratified_group_split(items: list[dict], val_fraction: float, test_fraction: float = 0.0, seed: int = 0,
                           label: str | Callable[[dict], object] | None = "label",
                           group: str | Callable[[dict], object] | None = "patient_id",
                           what: str = "dataset") -> dict[str, list[dict]]:
    """Split ``items`` into training/validation/test, seeded, stratified by class and grouped by patient.

    Args:
        items: datalist entries.
        val_fraction, test_fraction: shares of the items for validation and test (0 gives an empty split).
        seed: the same seed and items give the same split.
        label: the stratification key: an item key (``"label"``; items without it form one stratum) or a function
            of the item; ``None`` (multi-target or regression data) stratifies by nothing.
        group: the grouping key (``"patient_id"``) or a function; items whose group is missing or ``None`` are
            their own group. All items of one group go to the same split.
        what: names the dataset in errors.

    Each group is placed whole and counts in the stratum of its most common label. Per stratum, the quota of
    items for test and validation is ``fraction x items`` (remainders shared so that the totals are
    ``round(fraction x all items)``); the stratum's groups are taken in a seeded random order and each joins test,
    then validation, while that brings the split closer to its quota. Without grouping the class proportions are
    exact up to rounding; with groups they are approximate. A positive fraction always gets at least one group and
    training keeps at least one. Within each split items keep their input order.
    """
    _check_fractions(val_fraction, test_fraction)
    label_of, group_of = _key_fn(label), _key_fn(group)
    if not items:
        raise ValueError(f"The {what} has no images to split.")
    groups: dict[object, list[int]] = {}
    for i, item in enumerate(items):
        g = group_of(item) if group_of else None
        groups.setdefault(("group", str(g)) if g is not None else ("item", i), []).append(i)
    n_groups = len(groups)
    need = (val_fraction > 0) + (test_fraction > 0) + 1
    if n_groups < need:
        unit = "patients/images" if group_of else "images"
        raise ValueError(f"The {what} has {n_groups} {unit}: too few for val_fraction={val_fraction} and "
                         f"test_fraction={test_fraction} with one left for training.")

    def stratum_of(indices: list[int]) -> str:
        if label_of is None:
            return ""
        counts = Counter(str(label_of(items[i])) for i in indices)
        return min(counts, key=lambda k: (-counts[k], k))  # most common label, ties by name

    strata: dict[str, list[tuple]] = {}
    for key in sorted(groups, key=str):
        strata.setdefault(stratum_of(groups[key]), []).append(key)
    rng = np.random.default_rng(seed)
    sizes = {s: sum(len(groups[k]) for k in keys) for s, keys in strata.items()}
    names = sorted(strata)
    quotas = {split: _shares(fraction, [sizes[s] for s in names], rng) for split, fraction in
              (("test", test_fraction), ("validation", val_fraction))}

    split_of: dict[tuple, str] = {}
    for s_index, s in enumerate(names):
        keys = strata[s]
        filled = {"test": 0, "validation": 0}
        for k in (keys[j] for j in rng.permutation(len(keys))):
            size, dest = len(groups[k]), "training"
            for split in ("test", "validation"):
                if filled[split] + size / 2 < quotas[split][s_index]:  # adding it gets closer to the quota
                    dest = split
                    break
            split_of[k] = dest
            if dest != "training":
                filled[dest] += size

    # Small or lumpy datasets: a split that must not be empty may have come out empty. It gets the smallest group
    # of the split with most groups (training on ties), from that split's largest stratum; seeded among equals.
    # There are enough groups (checked above) for a donor with two or more groups to exist.
    stratum_of_group = {k: stratum_of(groups[k]) for k in split_of}
    for split, fraction in (("training", 1.0), ("test", test_fraction), ("validation", val_fraction)):
        counts = Counter(split_of.values())
        if fraction > 0 and counts[split] == 0:
            donor = max((s for s in ("training", "validation", "test") if s != split), key=lambda s: counts[s])
            members = [k for k in split_of if split_of[k] == donor]
            per_stratum = Counter(stratum_of_group[k] for k in members)
            members = [k for k in members if per_stratum[stratum_of_group[k]] == max(per_stratum.values())]
            smallest = min(len(groups[k]) for k in members)
            members = [k for k in members if len(groups[k]) == smallest]
            split_of[members[int(rng.integers(len(members)))]] = split

    result: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for key, indices in groups.items():
        for i in indices:
            result[split_of[key]].append((i, items[i]))
    return {s: [it for _, it in sorted(result[s], key=lambda pair: pair[0])] for s in SPLITS}


def _shares(fraction: float, sizes: list[int], rng) -> list[int]:
    """Integer quotas per stratum summing to ``round(fraction * total)`` (largest remainders, seeded ties)."""
    exact = [fraction * n for n in sizes]
    quotas = [math.floor(x) for x in exact]
    left = round(fraction * sum(sizes)) - sum(quotas)
    if fraction > 0:
        left = max(left, 1 - sum(quotas))
    tie = rng.random(len(sizes))
    for i in sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), tie[i]))[:max(0, left)]:
        quotas[i] += 1
    return quotas


# --- shared helpers -----------------------------------------------------------------------------------------------


def _dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"{what} folder {path} does not exist.")
    return path


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (hidden ones skipped), sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(IMAGE_EXTENSIONS))


def _class_folder_images(folder: Path) -> list[Path]:
    images = _images_in(_dir(folder, "Class"))
    if not images:
        raise ValueError(f"Class folder {folder} is empty (no {'/'.join(IMAGE_EXTENSIONS)} images).")
    return images


class _ImageIndex:
    """Find an image in a folder (optionally recursive) by file name or by name without extension, any case."""

    def __init__(self, folder: Path, recursive: bool = False):
        self.folder = folder
        self.by_name: dict[str, list[Path]] = {}
        for p in _images_in(folder, recursive):
            self.by_name.setdefault(p.name.lower(), []).append(p)
            self.by_name.setdefault(p.stem.lower(), []).append(p)

    def find(self, name: str, where: str) -> Path:
        name = Path(name.strip()).name
        # the exact file name, else the name without extension (a CSV saying .png for a .tif, or no extension)
        found = self.by_name.get(name.lower()) or self.by_name.get(Path(name).stem.lower(), [])
        if not found:
            raise ValueError(f"{where}: image {name!r} does not exist in {self.folder}.")
        if len({p.resolve() for p in found}) > 1:
            raise ValueError(f"{where}: image {name!r} matches several files: {', '.join(map(str, found))}.")
        return found[0]


def _read_table(path: Path) -> list[list[str]]:
    """Rows of a CSV (any of , ; tab) or, when openpyxl is installed, of the first sheet of an .xlsx file."""
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        try:
            import openpyxl
        except ImportError:
            raise ValueError(f"{path} is an Excel file and openpyxl is not installed: export it as CSV (same "
                             f"columns) next to it, or `pip install openpyxl`.") from None
        sheet = openpyxl.load_workbook(path, read_only=True, data_only=True).worksheets[0]
        return [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    if path.suffix.lower() == ".xls":
        raise ValueError(f"{path} is an old-format Excel file: export it as CSV (same columns) and pass that.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count) if any(d in first for d in ",;\t") else ","  # spreadsheets' exports
    return [[cell.strip() for cell in row] for row in csv.reader(text.splitlines(), delimiter=delimiter)]


class _Table:
    """A table with a header row: columns looked up by name (case- and space-insensitive, first match wins)."""

    def __init__(self, path: Path, header_row: int = 0):
        self.path = path
        rows = _read_table(path)
        if len(rows) <= header_row:
            raise ValueError(f"CSV {path} is empty.")
        self.header = rows[header_row]
        self.first_row = header_row + 2  # spreadsheet numbering of the first data row
        self.rows = rows[header_row + 1:]

    def column(self, *names: str, required: bool = True) -> int | None:
        norm = [re.sub(r"\s+", " ", h).strip().lower() for h in self.header]
        for name in names:
            if name.lower() in norm:
                return norm.index(name.lower())
        if required:
            raise ValueError(f"CSV {self.path} has no column {' or '.join(repr(n) for n in names)} "
                             f"(header: {self.header}).")
        return None

    def records(self) -> Iterable[tuple[int, list[str]]]:
        """(row number, cells padded to the header) of every non-blank row."""
        for n, row in enumerate(self.rows, start=self.first_row):
            if any(cell.strip() for cell in row):
                yield n, row + [""] * (len(self.header) - len(row))


def _int_label(text: str, low: int, high: int, where: str, column: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        shown = "is missing" if not text.strip() else f"is {text!r}, not an integer"
        raise ValueError(f"{where}: {column} {shown}.")
    if not low <= int(value) <= high:
        raise ValueError(f"{where}: {column} {int(value)} is outside {low}..{high}.")
    return int(value)


def _class_items(class_folders: Sequence[Path]) -> list[dict]:
    return [{"image": image, "label": label}
            for label, cls in enumerate(class_folders) for image in _class_folder_images(cls)]


def _carve(items: list[dict], val_fraction: float, test_fraction: float, seed: int, what: str,
           label="label", group="patient_id") -> dict:
    return stratified_group_split(items, val_fraction, test_fraction, seed, label=label, group=group, what=what)


def _write(result: dict, out, extras: dict, check_patients: bool = True) -> dict:
    """Check for patients in two splits, add extras, make paths relative, write atomically."""
    seen: dict[str, str] = {}
    for split in SPLITS if check_patients else ():
        for item in result[split]:
            pid = item.get("patient_id")
            if pid is not None and seen.setdefault(pid, split) != split:
                raise ValueError(f"Patient {pid} has images in both the {seen[pid]} and the {split} split.")
    result.update(extras)
    return _finish(result, out, path_keys=("image",))


def _match_folders(root: Path, expected: dict[str, Sequence[str]], what: str) -> list[Path]:
    """Class folders under ``root`` for each class (name -> accepted folder names, case-insensitive)."""
    subdirs = {p.name.lower().replace("_", " "): p for p in _dir(root, what).iterdir()
               if p.is_dir() and not p.name.startswith(".")}
    found = []
    for cls, aliases in expected.items():
        match = [subdirs[a.lower()] for a in aliases if a.lower() in subdirs]
        if not match:
            raise ValueError(f"{what} folder {root} has no class folder {cls} (accepted names: "
                             f"{', '.join(aliases)}; found: {sorted(p.name for p in subdirs.values())}).")
        found.append(match[0])
    return found


# --- fundus DR grading --------------------------------------------------------------------------------------------


def idrid_grading_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None,
                              val_fraction: float = 0.2, seed: int = 0, task: str = "dr") -> dict:
    """IDRiD disease grading (``B. Disease Grading``) -> classification datalist.

    ``root`` is the ``B. Disease Grading`` folder or the folder holding it, as distributed::

        1. Original Images/a. Training Set/IDRiD_001.jpg ...   b. Testing Set/IDRiD_001.jpg ...
        2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
                        b. IDRiD_Disease Grading_Testing Labels.csv

    The label CSVs have columns ``Image name`` (without extension), ``Retinopathy grade`` (0-4) and ``Risk of
    macular edema`` (0-2); ``task="dr"`` (default) labels the DR grade, ``task="dme"`` the macular-edema risk. Every
    row needs its image and every image a row. The official test set is the test split; validation is carved from
    training, stratified by grade (IDRiD has no patient ids).
    """
    if task not in ("dr", "dme"):
        raise ValueError(f"IDRiD task must be 'dr' or 'dme', got {task!r}.")
    root = Path(root)
    if (root / "B. Disease Grading").is_dir():
        root = root / "B. Disease Grading"
    images_root, truth = _child(root, "Original Images"), _child(root, "Groundtruths")
    column, high = (("Retinopathy grade", 4) if task == "dr" else ("Risk of macular edema", 2))
    splits = {}
    for split, word in (("training", "Training"), ("test", "Testing")):
        folder = _child(images_root, word)
        index = _ImageIndex(folder)
        table = _Table(_child(truth, word, ".csv"))
        name_col, label_col = table.column("Image name"), table.column(column)
        items, used = [], set()
        for n, row in table.records():
            where = f"CSV {table.path}, row {n}"
            image = index.find(row[name_col], where)
            items.append({"image": image, "label": _int_label(row[label_col], 0, high, where, column)})
            used.add(image)
        unlabelled = [p for p in _images_in(folder) if p not in used]
        if unlabelled:
            raise ValueError(f"IDRiD image {unlabelled[0]} has no row in {table.path}.")
        if not items:
            raise ValueError(f"CSV {table.path} has no rows.")
        splits[split] = items
    result = _carve(splits["training"], val_fraction, 0.0, seed, f"IDRiD training set {root}")
    result["test"] = splits["test"]
    return _write(result, out, {"class_names": DR_GRADES if task == "dr" else IDRID_DME_RISK})


def aptos_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                      test_fraction: float = 0.2, seed: int = 0) -> dict:
    """APTOS-2019 (Kaggle ``aptos2019-blindness-detection``) -> DR-grade classification datalist.

    Layout: ``ROOT/train.csv`` (``id_code,diagnosis`` with diagnosis 0-4) and ``ROOT/train_images/<id_code>.png``.
    The Kaggle test set has no labels and is not used; validation and test splits are carved from the labelled
    set, stratified by grade (no patient ids are published).
    """
    root = _dir(Path(root), "APTOS-2019 dataset")
    csv_path = root / "train.csv"
    if not csv_path.is_file():
        raise ValueError(f"APTOS-2019 folder {root} has no train.csv (columns id_code,diagnosis).")
    index = _ImageIndex(_dir(root / "train_images", "APTOS-2019 train_images"))
    table = _Table(csv_path)
    id_col, dx_col = table.column("id_code"), table.column("diagnosis")
    items = []
    for n, row in table.records():
        where = f"CSV {csv_path}, row {n}"
        items.append({"image": index.find(row[id_col], where),
                      "label": _int_label(row[dx_col], 0, 4, where, "diagnosis")})
    if not items:
        raise ValueError(f"CSV {csv_path} has no rows.")
    return _write(_carve(items, val_fraction, test_fraction, seed, f"APTOS-2019 set {root}"), out,
                  {"class_names": DR_GRADES})


def _exam_pairs(pairs_csv: Path) -> dict[str, str]:
    """Image name (lower case, no extension) -> examination id, from a table with one examination per row."""
    table = _Table(pairs_csv)
    exam_of = {}
    for n, row in table.records():
        names = [Path(c).stem.lower() for c in row if c.lower().endswith(IMAGE_EXTENSIONS)]
        if not names:
            raise ValueError(f"Examination list {pairs_csv}, row {n}: no image names in {row}.")
        for name in names:
            exam_of[name] = f"exam{n}"
    return exam_of


def messidor2_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None,
                          val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                          csv_path: str | os.PathLike | None = None,
                          pairs_csv: str | os.PathLike | None = None) -> dict:
    """MESSIDOR-2 (images from ADCIS, adjudicated grades from Kaggle ``google-brain/messidor2-dr-grades``).

    Layout: ``ROOT/messidor_data.csv`` (or ``csv_path``) with columns ``image_id`` (a file name like
    ``20051020_43808_0100_PP.png`` or ``IM000001.JPG``), ``adjudicated_dr_grade`` (0-4) and
    ``adjudicated_gradable`` (1/0); the images anywhere under ``ROOT`` (``IMAGES/`` in the ADCIS archive,
    ``messidor-2/preprocess/`` in some Kaggle copies), matched by file name, or by name without extension
    (``.tif`` vs ``.png``), case-insensitively. Rows with ``adjudicated_gradable`` 0 (ungradable) or an empty grade
    (ungraded) are skipped and counted in ``"excluded"``.

    Grouping rule (the two eyes of one examination in the same split): a ``patient_id`` or ``exam_id`` column in the
    CSV, else ``pairs_csv``, the ADCIS examination list exported as CSV (one examination per row; every cell that
    is an image file name belongs to that examination). The image names themselves do not identify the
    examination (Messidor-Original names are per-photo acquisition ids), so without either, each image is placed
    on its own and the datalist's ``"note"`` says so. Validation and test are carved, stratified by grade.
    """
    root = _dir(Path(root), "MESSIDOR-2 dataset")
    csv_path = Path(csv_path) if csv_path is not None else root / "messidor_data.csv"
    if not csv_path.is_file():
        raise ValueError(f"MESSIDOR-2 grades CSV {csv_path} does not exist (Kaggle google-brain/messidor2-dr-grades "
                         "messidor_data.csv).")
    table = _Table(csv_path)
    id_col, grade_col = table.column("image_id"), table.column("adjudicated_dr_grade")
    gradable_col = table.column("adjudicated_gradable", required=False)
    patient_col = table.column("patient_id", "exam_id", required=False)
    exam_of = _exam_pairs(Path(pairs_csv)) if pairs_csv is not None else None
    index = _ImageIndex(root, recursive=True)
    items, excluded = [], Counter()
    for n, row in table.records():
        where = f"CSV {csv_path}, row {n}"
        if gradable_col is not None and row[gradable_col].strip() in ("0", "0.0"):
            excluded["ungradable"] += 1
            continue
        if row[grade_col].strip().lower() in _MISSING:
            excluded["ungraded"] += 1
            continue
        item = {"image": index.find(row[id_col], where),
                "label": _int_label(row[grade_col], 0, 4, where, "adjudicated_dr_grade")}
        if patient_col is not None and row[patient_col].strip():
            item["patient_id"] = row[patient_col].strip()
        elif exam_of is not None:
            stem = Path(row[id_col].strip()).stem.lower()
            if stem not in exam_of:
                raise ValueError(f"{where}: image {row[id_col]!r} is in no examination of {pairs_csv}.")
            item["patient_id"] = exam_of[stem]
        items.append(item)
    if not items:
        raise ValueError(f"CSV {csv_path} has no gradable, graded rows.")
    extras = {"class_names": DR_GRADES, **({"excluded": dict(excluded)} if excluded else {})}
    if patient_col is None and exam_of is None:
        extras["note"] = ("no examination list given: the two eyes of an examination may be in different splits "
                          "(give pairs_csv)")
    result = _carve(items, val_fraction, test_fraction, seed, f"MESSIDOR-2 set {root}")
    return _write(result, out, extras)


# --- OCT ----------------------------------------------------------------------------------------------------------

OCTID_CLASSES = {"AMD": ["AMD", "AMRD", "ARMD"], "CSR": ["CSR", "CSCR"],
                 "DR": ["DR", "Diabetic retinopathy"], "MH": ["MH", "Macular hole"], "NORMAL": ["NORMAL"]}
KERMANY_CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


def octid_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                      test_fraction: float = 0.2, seed: int = 0) -> dict:
    """OCTID B-scans -> 5-class datalist (AMD, CSR, DR, MH, NORMAL).

    Layout: one folder per class directly in ``ROOT``: ``AMD`` (or ``AMRD``/``ARMD``), ``CSR``, ``DR`` (or
    ``Diabetic retinopathy``), ``MH`` (or ``Macular hole``), ``NORMAL``; names case-insensitive, ``_`` read as a
    space. Other folders are ignored. Validation and test are carved, stratified by class (no patient ids).
    """
    root = Path(root)
    folders = _match_folders(root, OCTID_CLASSES, "OCTID dataset")
    items = _class_items(folders)
    return _write(_carve(items, val_fraction, test_fraction, seed, f"OCTID set {root}"), out,
                  {"class_names": list(OCTID_CLASSES)})


_KERMANY_NAME = re.compile(r"^([A-Za-z]+)-(\d+)-(\d+)$")


def kermany_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.1,
                        seed: int = 0) -> dict:
    """Kermany OCT2017 (``ROOT/{train,test,val?}/{CNV,DME,DRUSEN,NORMAL}/CLASS-PATIENTID-N.jpeg``) -> datalist.

    ``ROOT`` may also be the folder holding ``OCT2017``. The patient id is the middle number of the file name and
    is kept as ``patient_id``; a name of another form is an error. The official test set is the test split. An
    existing ``val/`` folder is used as the validation split (the Kaggle one is tiny: 8 images per class);
    without it validation is carved from ``train``, stratified by class and grouped by patient. A patient found
    in two official splits is reported in ``"excluded"`` as ``"patients_in_two_official_splits"`` (their images are
    kept; the official split is not changed).
    """
    root = Path(root)
    if not (root / "train").is_dir() and (root / "OCT2017").is_dir():
        root = root / "OCT2017"
    _dir(root / "train", "Kermany OCT2017 train")

    def read(split_dir: Path) -> list[dict]:
        items = []
        for label, folder in enumerate(_match_folders(split_dir, {c: [c] for c in KERMANY_CLASSES},
                                                      "Kermany OCT2017 split")):
            for image in _class_folder_images(folder):
                m = _KERMANY_NAME.match(image.stem)
                if not m:
                    raise ValueError(f"Kermany image {image}: the name is not CLASS-PATIENTID-N (no patient id).")
                items.append({"image": image, "label": label, "patient_id": m.group(2)})
        return items

    official = {"training": read(root / "train"),
                "test": read(root / "test") if (root / "test").is_dir() else [],
                "validation": read(root / "val") if (root / "val").is_dir() else []}
    if official["validation"]:
        result = official
    else:
        result = _carve(official["training"], val_fraction, 0.0, seed, f"Kermany OCT2017 train set {root}")
        result["test"] = official["test"]
    splits_of: dict[str, set] = {}
    for split in SPLITS:
        for item in result[split]:
            splits_of.setdefault(item["patient_id"], set()).add(split)
    shared = sorted(p for p, s in splits_of.items() if len(s) > 1)
    excluded = {"patients_in_two_official_splits": len(shared)} if shared else {}
    # The leak check in _write is for the splits we make; an overlap of the official ones is the dataset's own.
    return _write(result, out, {"class_names": list(KERMANY_CLASSES), **({"excluded": excluded} if excluded else {})},
                  check_patients=not shared)


# --- glaucoma -----------------------------------------------------------------------------------------------------

GLAUCOMA_CLASSES = ["non_glaucoma", "glaucoma"]


def refuge_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                       test_fraction: float = 0.2, seed: int = 0, val_images: str | None = None,
                       val_labels: str | None = None, test_images: str | None = None,
                       test_labels: str | None = None) -> dict:
    """REFUGE glaucoma classification -> datalist with classes ``non_glaucoma`` (0) and ``glaucoma`` (1).

    Accepted layout: the training release's class folders ``Glaucoma/`` and ``Non-Glaucoma/`` in ``ROOT`` or in
    ``ROOT/Training400`` (``g0001.jpg``, ``n0001.jpg``). Optional official splits: ``val_images`` (a folder,
    e.g. ``REFUGE-Validation400``) with ``val_labels`` and ``test_images`` with ``test_labels`` (relative to ROOT or
    absolute): a CSV (or its .xlsx when openpyxl is installed) with an image-name column (``ImgName``, ``image``
    or ``Image name``) and a label column (``Glaucoma Label``, ``label`` or ``glaucoma``; 1 = glaucoma). A split
    not given is carved from training, stratified by class (REFUGE has no patient ids).
    """
    root = Path(root)
    train_root = root / "Training400" if (root / "Training400").is_dir() else root
    folders = _match_folders(train_root, {"non_glaucoma": ["Non-Glaucoma", "Non Glaucoma", "NonGlaucoma"],
                                          "glaucoma": ["Glaucoma"]}, "REFUGE training")
    training = _class_items(folders)

    def labelled(images: str | None, labels: str | None, split: str) -> list[dict] | None:
        if images is None and labels is None:
            return None
        if images is None or labels is None:
            raise ValueError(f"REFUGE {split}: give both the image folder and the label CSV.")
        image_dir, label_path = root / images, root / labels  # an absolute path stays absolute
        index = _ImageIndex(_dir(image_dir, f"REFUGE {split} images"))
        if not label_path.is_file():
            raise ValueError(f"REFUGE {split} label file {label_path} does not exist.")
        table = _Table(label_path)
        name_col = table.column("ImgName", "image", "Image name", "filename")
        label_col = table.column("Glaucoma Label", "label", "glaucoma")
        items = [{"image": index.find(row[name_col], f"CSV {label_path}, row {n}"),
                  "label": _int_label(row[label_col], 0, 1, f"CSV {label_path}, row {n}", table.header[label_col])}
                 for n, row in table.records()]
        if not items:
            raise ValueError(f"REFUGE {split} label file {label_path} has no rows.")
        return items

    val = labelled(val_images, val_labels, "validation")
    test = labelled(test_images, test_labels, "test")
    result = _carve(training, 0.0 if val is not None else val_fraction, 0.0 if test is not None else test_fraction,
                    seed, f"REFUGE training set {train_root}")
    if val is not None:
        result["validation"] = val
    if test is not None:
        result["test"] = test
    return _write(result, out, {"class_names": list(GLAUCOMA_CLASSES)})


def _papila_id(text: str) -> str | None:
    digits = re.sub(r"\D", "", text)
    return str(int(digits)) if digits else None


def papila_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                       test_fraction: float = 0.2, seed: int = 0, suspect: str = "exclude") -> dict:
    """PAPILA -> glaucoma datalist, both eyes of a patient in the same split.

    Layout (the figshare release): ``ROOT/FundusImages/RET002OD.jpg``, ``RET002OS.jpg``, ... and the clinical data
    ``ROOT/ClinicalData/patient_data_od.csv`` and ``patient_data_os.csv`` (the release ships ``.xlsx``; export each
    sheet as CSV, or install openpyxl to read the ``.xlsx`` directly). Each table has a header row with ``ID``
    (e.g. ``#002``) and ``Diagnosis`` (0 healthy, 1 glaucoma, 2 suspect), possibly after title rows; the diagnosis
    is of that eye. ``suspect="exclude"`` (default) skips suspect eyes (counted in ``"excluded"``);
    ``suspect="class"`` keeps them as a third class. Every row needs its image and every image a row. The patient
    id is the number in ``ID``; validation and test are carved, stratified by class and grouped by patient.
    """
    if suspect not in ("exclude", "class"):
        raise ValueError(f"PAPILA suspect must be 'exclude' or 'class', got {suspect!r}.")
    root = Path(root)
    image_dir = _dir(root / "FundusImages", "PAPILA FundusImages")
    clinical = root / "ClinicalData" if (root / "ClinicalData").is_dir() else root
    index = _ImageIndex(image_dir)
    items, used, excluded = [], set(), Counter()
    for eye in ("OD", "OS"):
        candidates = [clinical / f"patient_data_{eye.lower()}{ext}" for ext in (".csv", ".xlsx")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(f"PAPILA clinical data for {eye} eyes not found: expected {candidates[0]} (the "
                             f"release's {candidates[1].name} exported as CSV).")
        rows = _read_table(path)
        header = next((i for i, r in enumerate(rows)
                       if {"id", "diagnosis"} <= {c.strip().lower() for c in r}), None)
        if header is None:
            raise ValueError(f"PAPILA clinical data {path} has no header row with columns ID and Diagnosis.")
        table = _Table(path, header_row=header)
        id_col, dx_col = table.column("ID"), table.column("Diagnosis")
        for n, row in table.records():
            where = f"CSV {path}, row {n}"
            pid = _papila_id(row[id_col])
            if pid is None:
                raise ValueError(f"{where}: ID {row[id_col]!r} has no patient number.")
            dx = _int_label(row[dx_col], 0, 2, where, "Diagnosis")
            image = index.find(f"RET{int(pid):03d}{eye}", where)
            used.add(image)
            if dx == 2 and suspect == "exclude":
                excluded["suspect"] += 1
                continue
            items.append({"image": image, "label": dx, "patient_id": pid})
    unlabelled = [p for p in _images_in(image_dir) if p not in used]
    if unlabelled:
        raise ValueError(f"PAPILA image {unlabelled[0]} has no row in the clinical data.")
    classes = ["healthy", "glaucoma"] + (["suspect"] if suspect == "class" else [])
    result = _carve(items, val_fraction, test_fraction, seed, f"PAPILA set {root}")
    return _write(result, out, {"class_names": classes, **({"excluded": dict(excluded)} if excluded else {})})


# --- multi-disease, folders ---------------------------------------------------------------------------------------


def jsiec_to_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                      test_fraction: float = 0.2, seed: int = 0) -> dict:
    """JSIEC (1000 fundus images, 39 classes) -> datalist.

    Layout: one folder per class in ``ROOT``, named ``<number>.<number>.<name>`` (``0.0.Normal``,
    ``0.1.Tessellated fundus``, ..., ``29.1.Blur fundus with suspected PDR``). Classes are ordered by the numbers
    (so ``10.0`` comes after ``9.1``) and named by the folder name without the numbers. Other folders are ignored.
    Validation and test are carved, stratified by class (no patient ids; a class with fewer images than needed for
    a share stays in training).
    """
    root = _dir(Path(root), "JSIEC dataset")
    pattern = re.compile(r"^(\d+)\.(\d+)\.\s*(.+)$")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and pattern.match(p.name)),
                     key=lambda p: tuple(int(x) for x in pattern.match(p.name).groups()[:2]))
    if len(folders) < 2:
        raise ValueError(f"JSIEC folder {root} has {len(folders)} class folders named like '0.0.Normal'; "
                         "expected 39.")
    items = _class_items(folders)
    return _write(_carve(items, val_fraction, test_fraction, seed, f"JSIEC set {root}"), out,
                  {"class_names": [pattern.match(p.name).group(3).strip() for p in folders]})


def retfound_split_datalist(root: str | os.PathLike, out: str | os.PathLike | None = None,
                            val_fraction: float = 0.2, seed: int = 0,
                            class_names: list[str] | None = None, dataset: str | None = None) -> dict:
    """The RETFound folder layout ``ROOT/{train,val,test}/<class>/`` (see ``retfound_to_datalist``) -> datalist.

    Without a ``val`` folder, validation is carved from ``train`` (stratified by class, seeded); ``val_fraction=0``
    keeps it empty. With ``dataset`` (a key of ``visionfm_core.data.datasets.public.PUBLIC_DATASETS``), the class
    folders are matched to that dataset's classes and labelled in the original's order (label k is output k of the
    original's released model), and ``class_names`` are the dataset's; a folder that matches no class is refused.
    """
    from visionfm_core.data.datalist import retfound_to_datalist
    from visionfm_core.data.datasets.public import get_public_dataset, order_class_folders

    public = None
    if dataset is not None:
        if class_names is not None:
            raise ValueError("give either dataset (the original's class order) or class_names, not both")
        public = get_public_dataset(dataset)
        train = Path(root) / "train"
        folders = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if train.is_dir() else []
        if train.is_dir():  # a missing train/ is reported by retfound_to_datalist
            class_names = order_class_folders(public, folders, str(train))
    result = retfound_to_datalist(root, out=None, class_names=class_names)  # absolute paths
    if public is not None:
        result["class_names"] = list(public.class_names)
    if not result["validation"] and val_fraction > 0:
        carved = _carve(result["training"], val_fraction, 0.0, seed, f"RETFound train folder {root}")
        result["training"], result["validation"] = carved["training"], carved["validation"]
    return _write(result, out, {})


# --- generic CSV --------------------------------------------------------------------------------------------------


def _name_and_unit(header: str) -> tuple[str, str]:
    """``"hba1c (%)"`` -> ``("hba1c", "%")``; ``"systolic pressure [mmHg]"`` -> ``("systolic_pressure", "mmHg")``."""
    m = re.match(r"^(.*?)\s*[(\[]([^()\[\]]*)[)\]]\s*$", header)
    name, unit = (m.group(1), m.group(2).strip()) if m else (header, "")
    return re.sub(r"\s+", "_", name.strip()), unit


def csv_to_datalist(csv_path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                    out: str | os.PathLike | None = None, kind: str = "auto",
                    class_names: Sequence[str] | None = None, val_fraction: float = 0.2,
                    test_fraction: float = 0.2, seed: int = 0) -> dict:
    """A generic CSV (one row per image) -> classification, multi-task or regression datalist.

    Columns: ``image`` (a path relative to ``image_dir``, default the CSV's folder, or absolute); optional
    ``patient_id`` (images of one patient stay in one split) and ``split`` (training/validation/test or
    train/val/test: then the splits are kept; validation is carved from training if no row has it); and

    - ``kind="classification"`` (auto when there is a ``label`` column): ``label``, integer class indices (names
      from ``class_names``, default ``"0"``.. ``"K-1"``) or class names (order from ``class_names``, default
      sorted); -> ``{"image", "label"}`` and ``"class_names"``.
    - ``kind="multitask"`` (auto when every other column is a key of :data:`MULTITASK_LABELS`): integer columns
      ``dr_grade`` (0-4), ``dr``, ``glaucoma``, ... (0/1) -> ``{"image", "labels": {...}}``.
    - ``kind="regression"`` (otherwise): every other column is a numeric target; the header gives name and unit
      (``hba1c (%)`` -> name ``hba1c``, unit ``%``; spaces in names become ``_``) -> ``{"image", "targets"}``
      with ``"target_names"`` and ``"target_units"``.

    An empty cell (or NA/NaN/null) of a target or task is ``null`` (masked later); a row with none at all, a
    non-numeric value or a label out of range is an error naming the CSV row and column. Carved splits are
    stratified by class for classification and not stratified for multi-task and regression data.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"CSV {csv_path} does not exist.")
    image_dir = Path(image_dir) if image_dir is not None else csv_path.parent
    table = _Table(csv_path)
    header = [h.strip() for h in table.header]
    if "image" not in header:
        raise ValueError(f"CSV {csv_path}: there is no 'image' column (header: {table.header}).")
    special = {"image", "patient_id", "split"}
    columns = [(i, h) for i, h in enumerate(header) if h not in special and h]
    if kind == "auto":
        kind = ("classification" if "label" in header else
                "multitask" if columns and all(h in MULTITASK_LABELS for _, h in columns) else "regression")
    if kind not in ("classification", "multitask", "regression"):
        raise ValueError(f"CSV kind must be auto, classification, multitask or regression, got {kind!r}.")
    if kind == "classification":
        columns = [(header.index("label"), "label")] if "label" in header else []
        if not columns:
            raise ValueError(f"CSV {csv_path}: a classification CSV needs a 'label' column.")
    if not columns:
        raise ValueError(f"CSV {csv_path}: no label or target columns besides image/patient_id/split.")
    if kind == "multitask":
        unknown = [h for _, h in columns if h not in MULTITASK_LABELS]
        if unknown:
            raise ValueError(f"CSV {csv_path}: columns {unknown} are not multi-task labels "
                             f"({', '.join(MULTITASK_LABELS)}).")
    names_units = [_name_and_unit(h) for _, h in columns] if kind == "regression" else []
    col = {h: i for i, h in enumerate(header)}

    rows, seen = [], {}
    for n, row in table.records():
        where = f"CSV {csv_path}, row {n}"
        cell = row[col["image"]].strip()
        if not cell:
            raise ValueError(f"{where}: the image is missing.")
        image = image_dir / cell
        if not image.is_file():
            raise ValueError(f"{where}: image {image} does not exist.")
        if image.resolve() in seen:
            raise ValueError(f"{where}: image {cell} already appears on row {seen[image.resolve()]}.")
        seen[image.resolve()] = n
        item = {"image": image}
        if kind == "regression":
            targets = {}
            for (i, h), (name, _) in zip(columns, names_units):
                text = row[i].strip()
                if text.lower() in _MISSING:
                    targets[name] = None
                    continue
                try:
                    value = float(text)
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise ValueError(f"{where}, column {h!r}: {text!r} is not a number.")
                targets[name] = value
            if all(v is None for v in targets.values()):
                raise ValueError(f"{where}: no target value at all (columns {[h for _, h in columns]}).")
            item["targets"] = targets
        elif kind == "multitask":
            labels = {h: (None if row[i].strip().lower() in _MISSING else
                          _int_label(row[i], 0, MULTITASK_LABELS[h] - 1, where, f"column {h!r}"))
                      for i, h in columns}
            if all(v is None for v in labels.values()):
                raise ValueError(f"{where}: no task label at all (columns {[h for _, h in columns]}).")
            item["labels"] = labels
        else:
            text = row[columns[0][0]].strip()
            if text.lower() in _MISSING:
                raise ValueError(f"{where}: the label is missing.")
            item["label"] = text
        if "patient_id" in col and row[col["patient_id"]].strip():
            item["patient_id"] = row[col["patient_id"]].strip()
        split = None
        if "split" in col:
            value = row[col["split"]].strip().lower()
            if value not in _SPLIT_NAMES:
                raise ValueError(f"{where}: split {row[col['split']]!r} is not one of training, validation, test "
                                 "(or train, val).")
            split = _SPLIT_NAMES[value]
        rows.append((n, split, item))
    if not rows:
        raise ValueError(f"CSV {csv_path} has no rows.")

    extras: dict = {}
    if kind == "classification":
        extras["class_names"] = _class_labels(rows, class_names, csv_path)
    elif kind == "regression":
        extras["target_names"] = [name for name, _ in names_units]
        extras["target_units"] = [unit for _, unit in names_units]
        if len(set(extras["target_names"])) != len(names_units):
            raise ValueError(f"CSV {csv_path}: target names {extras['target_names']} repeat.")
    items = [item for _, _, item in rows]
    stratify = "label" if kind == "classification" else None
    if "split" in col:
        result = {s: [item for _, split, item in rows if split == s] for s in SPLITS}
        if not result["training"]:
            raise ValueError(f"CSV {csv_path}: no row has split 'training'.")
        if not result["validation"] and val_fraction > 0:
            carved = _carve(result["training"], val_fraction, 0.0, seed, f"training rows of CSV {csv_path}",
                            label=stratify)
            result["training"], result["validation"] = carved["training"], carved["validation"]
    else:
        result = _carve(items, val_fraction, test_fraction, seed, f"CSV {csv_path}", label=stratify)
    return _write(result, out, extras)


def _class_labels(rows: list, class_names: Sequence[str] | None, csv_path: Path) -> list[str]:
    """Turn the ``label`` cells into class indices in place; return the class names."""
    texts = [item["label"] for _, _, item in rows]
    numeric = all(re.fullmatch(r"[+-]?\d+(\.0*)?", t) for t in texts)
    if class_names is not None:
        class_names = [str(c) for c in (class_names.split(",") if isinstance(class_names, str) else class_names)]
    if numeric:
        top = max(int(float(t)) for t in texts)
        names = class_names if class_names is not None else [str(i) for i in range(top + 1)]
        for n, _, item in rows:
            item["label"] = _int_label(item["label"], 0, len(names) - 1, f"CSV {csv_path}, row {n}",
                                       "column 'label'")
        return list(names)
    names = class_names if class_names is not None else sorted(set(texts))
    for n, _, item in rows:
        if item["label"] not in names:
            raise ValueError(f"CSV {csv_path}, row {n}, column 'label': {item['label']!r} is not one of the classes "
                             f"{names}.")
        item["label"] = names.index(item["label"])
    return list(names)


# --- report -------------------------------------------------------------------------------------------------------


def summarize_datalist(datalist: dict) -> str:
    """Counts per split, and per class (``label``/``labels``) or per target (present values), one line each."""
    lines = []
    classes = datalist.get("class_names")
    for split in SPLITS:
        items = datalist.get(split, [])
        parts = [f"{split}: {len(items)} images"]
        patients = {it["patient_id"] for it in items if "patient_id" in it}
        if patients:
            parts[0] += f", {len(patients)} patient{'s' if len(patients) != 1 else ''}"
        if items and "label" in items[0]:
            counts = Counter(it["label"] for it in items)
            parts += [f"{classes[k] if classes and 0 <= k < len(classes) else k}={counts[k]}" for k in sorted(counts)]
        for key in ("labels", "targets"):
            if items and key in items[0]:
                names = datalist.get("target_names") or list(MULTITASK_LABELS)
                present = Counter(k for it in items for k, v in it[key].items() if v is not None)
                parts.append("present values: " + ", ".join(f"{k}={present[k]}" for k in names
                                                            if k in present or key == "targets"))
        lines.append("  " + ", ".join(parts))
    if datalist.get("excluded"):
        lines.append("  excluded: " + ", ".join(f"{k}={v}" for k, v in datalist["excluded"].items()))
    if datalist.get("note"):
        lines.append(f"  note: {datalist['note']}")
    return "\n".join(lines)


def report_datalist(out: str | os.PathLike, datalist: dict) -> None:
    """Print what ``visionfm prepare-data`` wrote: the split sizes, then :func:`summarize_datalist`."""
    counts = {k: len(datalist[k]) for k in SPLITS}
    names = datalist.get("class_names") or datalist.get("target_names")
    print(f"wrote {out}: {counts}" + (f", {'classes' if 'class_names' in datalist else 'targets'} {names}"
                                      if names else ""))
    print(summarize_datalist(datalist))
