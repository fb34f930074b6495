"""The benchmark's data: the eight public datasets in RETFound's layout, ``ROOT/<dataset>/{train,val,test}/<class>/``.

Each dataset folder found under the data root is checked before anything runs: the three splits must be there and
every class folder must name one of the dataset's classes (``visionfm_core.data.datasets.public``). A folder is
matched to its class by its normalised name (lower case, letters and digits), with or without RETFound's one-letter
order prefix (``anodr``, ``b_mild``), or by its class index (``0``, ``1``, ...). A missing split, an unknown or an
ambiguous class folder is refused naming the folder. The datalist then follows the original's class order, so test
AUROC is comparable with the released models'.

Patient ids (for the bootstrap by patient) come from an optional ``ROOT/<dataset>/patients.csv`` with the columns
``image`` (the image's path below the dataset folder, or its file name) and ``patient_id``; without one, every image
is its own unit (RETFound's layout carries no patient ids).
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from visionfm_core.data.datalist import retfound_to_datalist
from visionfm_core.data.datasets.public import PUBLIC_DATASETS, PublicDataset, normalise_folder_name

__all__ = ["BenchmarkDataError", "DatasetCopy", "SPLITS", "PATIENTS_FILE", "DATASET_FOLDERS", "find_datasets",
           "check_dataset", "match_class_folders", "write_phantom_benchmark"]

SPLITS = ("train", "val", "test")
PATIENTS_FILE = "patients.csv"

# normalised names of a dataset's folder under the data root: its id, its title and RETFound's folder name
DATASET_FOLDERS: dict[str, tuple[str, ...]] = {
    "idrid": ("idrid", "idriddata"),
    "messidor2": ("messidor2", "messidorii"),
    "aptos2019": ("aptos2019", "aptos"),
    "papila": ("papila",),
    "glaucoma_fundus": ("glaucomafundus",),
    "jsiec": ("jsiec", "jsiec1000"),
    "retina": ("retina",),
    "octid": ("octid",),
}

# folder spellings seen in copies of the benchmark beyond those public.py knows (normalised, per class index);
# RETFound's DR folders end in "dr" ("eprodr" is proliferative DR)
_EXTRA_ALIASES: dict[str, tuple[tuple[str, ...], ...]] = {
    "idrid": (("nodr",), ("mild", "milddr"), ("moderate", "moderatedr"), ("severe", "severedr"),
              ("prodr", "proliferative", "proliferativedr")),
    "papila": (("normal", "healthy", "nonglaucoma"), ("suspect", "suspectglaucoma", "glaucomasuspect"),
               ("glaucoma",)),
    "glaucoma_fundus": (("normalcontrol", "normal", "control"), ("earlyglaucoma", "early"),
                        ("advancedglaucoma", "advanced")),
    "retina": (("normal",), ("cataract",), ("glaucoma",), ("retinadisease", "retina")),
    "octid": (("normal",), ("armd", "amd"), ("csr", "centralserousretinopathy"),
              ("diabeticretinopathy", "dr"), ("macularhole", "mh")),
}
_EXTRA_ALIASES["messidor2"] = _EXTRA_ALIASES["aptos2019"] = _EXTRA_ALIASES["idrid"]


class BenchmarkDataError(ValueError):
    """A dataset folder that does not follow the benchmark layout; the message names the folder and the fix."""


@dataclass
class DatasetCopy:
    """One dataset found under the data root, checked: its datalist follows the original's class order."""

    spec: PublicDataset
    folder: Path
    class_folders: list[str]  # the folder of class k, per class index
    datalist: dict  # {"training", "validation", "test": [{"image", "label", "patient_id"?}], "class_names"}
    has_patients: bool
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def fingerprint(self) -> str:
        """sha256 of every (split, image path below the dataset folder, size, label, patient): a changed split, label
        or file gives another fingerprint, so results of another copy are never mixed with these."""
        h = hashlib.sha256()
        for split in ("training", "validation", "test"):
            for e in self.datalist[split]:
                rel = Path(os.path.relpath(e["image"], self.folder)).as_posix()
                h.update(f"{split}\t{rel}\t{os.path.getsize(e['image'])}\t{e['label']}\t"
                         f"{e.get('patient_id', '')}\n".encode())
        return h.hexdigest()


def _class_keys(spec: PublicDataset) -> list[set[str]]:
    extra = _EXTRA_ALIASES.get(spec.name, ())
    keys = []
    for i, name in enumerate(spec.class_names):
        k = {normalise_folder_name(name)}
        if i < len(spec.folder_aliases):
            k.update(spec.folder_aliases[i])
        if i < len(extra):
            k.update(extra[i])
        keys.append(k)
    return keys


def match_class_folders(spec: PublicDataset, folders: list[str], where: str) -> dict[str, int]:
    """{folder: class index} for the class folders of one split; refuses an unknown, ambiguous or repeated folder."""
    keys = _class_keys(spec)
    out: dict[str, int] = {}
    for folder in folders:
        n = normalise_folder_name(folder)
        hits = {i for i, k in enumerate(keys) if n in k}
        if not hits:  # RETFound's order prefix: a letter giving the class's position, then its name
            hits = {i for i, k in enumerate(keys) if len(n) > 1 and n[0] == chr(ord("a") + i) and n[1:] in k}
        if not hits and n.isdigit() and int(n) < spec.num_classes:
            hits = {int(n)}  # folders named by class index
        if len(hits) != 1:
            what = "unknown" if not hits else f"ambiguous (it could be {[spec.class_names[i] for i in sorted(hits)]})"
            raise BenchmarkDataError(
                f"{where}/{folder}: {what} class folder for {spec.title}; its classes, in the original's order, are "
                f"{list(spec.class_names)} (folders may carry RETFound's a/b/c prefix or be named "
                f"0..{spec.num_classes - 1})"
                ". Rename or remove the folder.")
        (i,) = hits
        if i in out.values():
            other = next(f for f, j in out.items() if j == i)
            raise BenchmarkDataError(f"{where}: class folders {other!r} and {folder!r} both name the class "
                                     f"{spec.class_names[i]!r} of {spec.title}; keep one.")
        out[folder] = i
    return out


def _subfolders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_patients(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise BenchmarkDataError(f"{path} could not be read as CSV: {e}") from e
    if not rows or not {"image", "patient_id"} <= set(rows[0]):
        raise BenchmarkDataError(f"{path} must be a CSV with the columns image,patient_id (one row per image).")
    return {r["image"].strip(): r["patient_id"].strip() for r in rows}


def check_dataset(spec: PublicDataset, folder: str | os.PathLike) -> DatasetCopy:
    """Check one dataset folder (every split present, every class folder known) and build its datalist."""
    folder = Path(folder)
    missing = [s for s in SPLITS if not (folder / s).is_dir()]
    if missing:
        raise BenchmarkDataError(f"{folder} ({spec.title}) has no {', '.join(repr(s) for s in missing)} folder: the "
                                 f"benchmark takes the published splits as ROOT/<dataset>/{{train,val,test}}/<class>/ "
                                 "(RETFound's benchmark layout); add the split, or leave the dataset out with "
                                 "--datasets.")
    class_of: dict[str, int] = {}
    for split in SPLITS:
        found = _subfolders(folder / split)
        if not found:
            raise BenchmarkDataError(f"{folder / split} has no class folders.")
        matched = match_class_folders(spec, found, str(folder / split))
        if class_of and set(matched) != set(class_of):
            raise BenchmarkDataError(f"{folder}: the class folders of {split!r} {sorted(matched)} differ from those of "
                                     f"'train' {sorted(class_of)}; every split needs the same class folders.")
        class_of = class_of or matched
    if len(class_of) < 2:
        raise BenchmarkDataError(f"{folder}: only one class folder ({list(class_of)}); a benchmark needs two.")
    # class index -> folder, in the original's order; classes without a folder in this copy are left out of the
    # folder list but keep their index, so outputs stay aligned with the released models
    folders = [f for f, _ in sorted(class_of.items(), key=lambda kv: kv[1])]
    data = retfound_to_datalist(folder, class_names=folders)  # labels = position in `folders`
    remap = [class_of[f] for f in folders]
    for split in ("training", "validation", "test"):
        for e in data[split]:
            e["label"] = remap[e["label"]]
    data["class_names"] = [n for n in spec.class_names]
    patients_file = folder / PATIENTS_FILE
    has_patients = patients_file.is_file()
    if has_patients:
        ids = _read_patients(patients_file)
        for split in ("training", "validation", "test"):
            for e in data[split]:
                rel = Path(os.path.relpath(e["image"], folder)).as_posix()
                pid = ids.get(rel, ids.get(os.path.basename(e["image"])))
                if pid is None:
                    raise BenchmarkDataError(f"{patients_file} has no row for {rel}; give every image its patient_id.")
                e["patient_id"] = pid
    by_class = [""] * spec.num_classes
    for f, i in class_of.items():
        by_class[i] = f
    counts = {s: len(data[s]) for s in ("training", "validation", "test")}
    return DatasetCopy(spec, folder, by_class, data, has_patients, counts)


def find_datasets(root: str | os.PathLike, names: list[str] | None = None) -> list[DatasetCopy]:
    """The public datasets under `root` (any subset), checked; `names` asks for some and refuses one not there.

    Folders under `root` that are not one of the eight datasets are ignored (a data root may hold other data).
    """
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkDataError(f"data root {root} does not exist (expected "
                                 "ROOT/<dataset>/{train,val,test}/<class>/).")
    by_key = {key: name for name, keys in DATASET_FOLDERS.items() for key in keys}
    present: dict[str, Path] = {}
    for sub in _subfolders(root):
        name = by_key.get(normalise_folder_name(sub))
        if name is None:
            continue
        if name in present:
            raise BenchmarkDataError(f"{root}: both {present[name].name!r} and {sub!r} look like "
                                     f"{PUBLIC_DATASETS[name].title}; keep one.")
        present[name] = root / sub
    if names:
        wanted = []
        for n in names:
            key = normalise_folder_name(n)
            name = by_key.get(key) or next((d for d in PUBLIC_DATASETS if normalise_folder_name(d) == key), None)
            if name is None:
                raise BenchmarkDataError(f"unknown dataset {n!r}; the benchmark's datasets are "
                                         f"{', '.join(PUBLIC_DATASETS)}.")
            if name not in present:
                raise BenchmarkDataError(f"{PUBLIC_DATASETS[name].title} was asked for but {root} has no folder for "
                                         f"it (expected one of {', '.join(DATASET_FOLDERS[name])}, any case).")
            wanted.append(name)
    else:
        wanted = [n for n in PUBLIC_DATASETS if n in present]
        if not wanted:
            raise BenchmarkDataError(
                f"{root} holds none of the benchmark's datasets: expected folders such as APTOS2019, MESSIDOR2, "
                "IDRiD_data, PAPILA, Glaucoma_fundus, JSIEC, Retina, OCTID, each with train/, val/ and test/.")
    return [check_dataset(PUBLIC_DATASETS[n], present[n]) for n in wanted]


def write_phantom_benchmark(root: str | os.PathLike, datasets: tuple[str, ...] = ("aptos2019", "papila", "octid"),
                            per_class: int = 2, size: int = 48, seed: int = 0, patients: bool = True) -> Path:
    """Phantom copies of public datasets in RETFound's layout (``ROOT/<RETFound folder>/{train,val,test}/<a..>/``)
    for tests and timings: fundus datasets get graded fundus phantoms whose lesions grow with the class index, OCT
    ones OCT phantoms whose brightness does; ``per_class`` images per class and split. With ``patients``, a
    ``patients.csv`` pairs the images two by two (two eyes of one person)."""
    import numpy as np
    from PIL import Image

    from visionfm_core.data.synthetic.phantoms import make_phantom
    from visionfm_core.data.synthetic.samples import make_fundus_phantom

    folder_names = {"idrid": "IDRiD_data", "messidor2": "MESSIDOR2", "aptos2019": "APTOS2019", "papila": "PAPILA",
                    "glaucoma_fundus": "Glaucoma_fundus", "jsiec": "JSIEC", "retina": "Retina", "octid": "OCTID"}
    root = Path(root)
    for d_index, name in enumerate(datasets):
        spec = PUBLIC_DATASETS[name]
        base = root / folder_names[name]
        rows = []
        for s_index, split in enumerate(SPLITS):
            for k, cls in enumerate(spec.class_names):
                # RETFound-style folder: order letter + name (JSIEC keeps its numbered names)
                sub = cls if name == "jsiec" else chr(ord("a") + k) + cls.replace("_", "")
                out = base / split / sub
                out.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    s = int(np.random.SeedSequence([seed, d_index, s_index, k, i]).generate_state(1)[0])
                    if spec.modality == "OCT":
                        img = make_phantom("OCT", size=size, seed=s).astype(np.float32)
                        img = np.clip(img * (0.6 + 0.1 * k), 0, 255).astype(np.uint8)
                    else:
                        img = make_fundus_phantom(min(k, 4), size=size, seed=s)
                    path = out / f"{split}_{k}_{i:03d}.png"
                    Image.fromarray(img).save(path, compress_level=1)
                    rows.append((path.relative_to(base).as_posix(), f"{split}-p{(k * per_class + i) // 2}"))
        if patients:
            text = "image,patient_id\n" + "".join(f"{a},{b}\n" for a, b in rows)
            (base / PATIENTS_FILE).write_text(text)
    return root

