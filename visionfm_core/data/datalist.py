"""MONAI datalists (``{"training": [...], "validation": [...], "test": [...]}``) for VisionFM classification.

Problems in a datalist (a missing file, a label out of range) are reported up front, naming the datalist file and
the entry index, rather than as a crash in a DataLoader worker hours into training.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

from visionfm_core.data.io.readers import _find_images, list_images
from visionfm_core.engine.io import atomic_write_text

__all__ = [
    "load_datalist",
    "retfound_to_datalist",
    "folder_to_datalist",
    "datalist_class_names",
    "trained_class_names",
    "save_class_names",
    "CLASS_NAMES_FILE",
]

# written next to a trained classifier (models/class_names.json): the class list the model's outputs follow
CLASS_NAMES_FILE = "class_names.json"

# RETFound/VisionFM folder names -> MONAI datalist keys.
_RETFOUND_SPLITS = {"train": "training", "val": "validation", "test": "test"}


def load_datalist(
    datalist: str | os.PathLike | dict,
    split: str,
    base_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
    required: bool = True,
    path_keys: tuple[str, ...] = ("label", "fov"),
    class_names: list[str] | None = None,
    modality: str | None = None,
) -> list[dict]:
    """Load one split of a MONAI datalist, with image paths made absolute and checked.

    Args:
        datalist: path to a datalist JSON file, or the already-loaded dict.
        split: key to read, e.g. ``"training"``, ``"validation"`` or ``"test"``.
        base_dir: folder that relative image paths are resolved against; default: the datalist file's folder
            (the current directory for a dict).
        num_classes: if given, every ``"label"`` present must be an integer in ``0 .. num_classes - 1``.
            Entries without a label (e.g. an unlabelled test split) are allowed.
        required: if False, a missing or empty split returns ``[]`` instead of raising.
        path_keys: keys whose string values are files (segmentation masks, field-of-view masks): made absolute
            against the same folder and checked to exist. With ``num_classes`` given, ``"label"`` is a class index.
        class_names: the class list labels index (implies ``num_classes = len(class_names)``); errors name it, and
            a label may also be given as one of these names (it becomes its index).
        modality: if given, the split's images must look like this modality (colour photographs for Fundus,
            SlitLamp, External; grey images for the others): see
            :func:`visionfm_core.data.unlabelled.check_modality_of_images`. Catches e.g. a folder of fundus photos given to
            an OCT bundle before any training starts.

    Returns:
        Copies of the entries, with ``"image"`` an absolute path to an existing file.

    Raises:
        ValueError: naming the datalist (and entry index): unreadable JSON, missing or empty split (when required),
            an entry without ``"image"``, an image file that does not exist, a bad label, or (with ``modality``)
            images of another modality.
    """
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if num_classes is not None and int(num_classes) != len(class_names):
            raise ValueError(f"num_classes {num_classes} differs from the {len(class_names)} class names "
                             f"{class_names}.")
        num_classes = len(class_names)
    if isinstance(datalist, dict):
        name, data = "<datalist dict>", datalist
        default_base = os.getcwd()
    else:
        name = os.fspath(datalist)
        default_base = os.path.dirname(os.path.abspath(name))
        try:
            with open(name, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"Datalist {name} could not be read as JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"Datalist {name} must be a JSON object with split keys, got {type(data).__name__}.")
    base = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else default_base

    entries = data.get(split)
    if not entries:
        if not required:
            return []
        if split not in data:
            splits = [k for k, v in data.items() if isinstance(v, list)]
            raise ValueError(f"Datalist {name} has no {split!r} split (splits found: {splits}).")
        raise ValueError(f"Datalist {name} has an empty {split!r} split.")
    if not isinstance(entries, list):
        raise ValueError(f"Datalist {name}: split {split!r} must be a list of entries, got {type(entries).__name__}.")

    out = []
    for i, entry in enumerate(entries):
        where = f"Datalist {name}, {split!r} entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object like {{\"image\": ..., \"label\": ...}}, got {entry!r}.")
        image = entry.get("image")
        if not isinstance(image, str) or not image:
            raise ValueError(f"{where} has no \"image\" path: {entry!r}.")
        path = os.path.normpath(os.path.join(base, os.path.expanduser(image)))  # join keeps absolute paths as is
        if not os.path.isfile(path) and not os.path.isdir(path):  # a folder: a DICOM series (volume bundles)
            raise ValueError(f"{where}: image file {path} does not exist.")
        entry = {**entry, "image": path}
        for key in path_keys:
            if key == "label" and num_classes is not None:
                continue  # a classification datalist: the label is a class index, checked below
            if isinstance(entry.get(key), str):
                entry[key] = os.path.normpath(os.path.join(base, os.path.expanduser(entry[key])))
                if not os.path.isfile(entry[key]):
                    raise ValueError(f"{where}: {key} file {entry[key]} (for image {path}) does not exist.")
        if class_names is not None and isinstance(entry.get("label"), str):
            if entry["label"] not in class_names:
                raise ValueError(f"{where} ({path}): label {entry['label']!r} is not in the class list {class_names}.")
            entry["label"] = class_names.index(entry["label"])
        if "label" in entry and (num_classes is not None or not isinstance(entry["label"], str)):
            _check_label(entry["label"], num_classes, where, path, class_names, "class_names" in data)
        out.append(entry)
    if modality is not None:
        from visionfm_core.data.unlabelled import check_modality_of_images  # imports this module

        try:
            check_modality_of_images([e["image"] for e in out], modality)
        except ValueError as e:
            raise ValueError(f"Datalist {name}, {split!r} split: {e} (to use these images anyway, turn the check off: "
                             "--check_image_modality False in the bundles)") from e
    return out


def _check_label(label: object, num_classes: int | None, where: str, path: str,
                 class_names: list[str] | None = None, named_in_datalist: bool = False) -> None:
    # bool is an int subclass, but true/false in a datalist is almost surely a mistake.
    if isinstance(label, bool) or not isinstance(label, numbers.Integral):
        raise ValueError(f"{where} ({path}): label {label!r} is not an integer class index.")
    if num_classes is not None and not 0 <= int(label) < num_classes:
        if class_names is None:
            raise ValueError(f"{where} ({path}): label {label} is outside 0..{num_classes - 1}.")
        hint = "" if named_in_datalist else (" (the datalist has no top-level \"class_names\"; add one to train on "
                                             "other classes)")
        raise ValueError(f"{where} ({path}): label {label} is outside the class list {class_names} "
                         f"(0..{num_classes - 1}){hint}.")


def _check_class_names(names: object, source: str) -> list[str]:
    if (not isinstance(names, list) or len(names) < 2
            or not all(isinstance(c, str) and c.strip() for c in names)):
        raise ValueError(f"{source}: \"class_names\" must be a list of at least 2 non-empty strings, got {names!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: \"class_names\" {names} has duplicates.")
    return list(names)


def datalist_class_names(datalist: str | os.PathLike | dict, default: list[str],
                         num_classes: int | None = None) -> list[str]:
    """The class list a classification bundle trains on: the datalist's top-level ``"class_names"`` when it has
    one (its order = label index), else ``default`` (the bundle's classes).

    Class folders named by label index (``"0"``, ``"1"``, ...; e.g. APTOS-style grade folders) name nothing: when
    there are as many as the defaults, the defaults are used.

    Args:
        datalist: datalist JSON file (or loaded dict); a file that does not exist yet gives ``default`` so a
            bundle's configs still parse without data (the training split's check then reports the missing file).
        default: the bundle's default class list.
        num_classes: if given, the list must have exactly this many classes (binary bundles: 2).
    """
    if isinstance(datalist, dict):
        name, data = "<datalist dict>", datalist
    else:
        name = os.fspath(datalist)
        data = {}
        if os.path.isfile(name):
            try:
                with open(name, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"Datalist {name} could not be read as JSON: {e}") from e
    names = data.get("class_names") if isinstance(data, dict) else None
    names = _check_class_names(names, f"Datalist {name}") if names is not None else [str(c) for c in default]
    if names == [str(i) for i in range(len(default))]:
        # class folders named by label index ("0", "1", ...) name nothing: the bundle's names say what they mean
        names = [str(c) for c in default]
    if num_classes is not None and len(names) != int(num_classes):
        raise ValueError(f"Datalist {name}: this bundle is for {num_classes} classes, but the class list is {names}.")
    return names


def save_class_names(folder: str | os.PathLike, class_names: list[str]) -> str:
    """Write ``<folder>/class_names.json`` atomically (the class list a model was trained with); returns the path."""
    path = os.path.join(os.fspath(folder), CLASS_NAMES_FILE)
    atomic_write_text(path, json.dumps({"class_names": [str(c) for c in class_names]}, indent=1) + "\n")
    return path


def trained_class_names(model_path: str | os.PathLike, default: list[str],
                        datalist: str | os.PathLike | dict | None = None) -> list[str]:
    """The class list of a trained model: ``class_names.json`` next to ``model_path`` when it exists (written by
    training), else ``default``.

    With ``datalist`` (evaluation), a datalist that names its classes must name the same ones, in the same order,
    as the model was trained on; without a class file, the datalist's list (else ``default``) is used.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_path))), CLASS_NAMES_FILE)
    fallback = datalist_class_names(datalist, default) if datalist is not None else [str(c) for c in default]
    if not os.path.isfile(path):
        return fallback
    try:
        with open(path, encoding="utf-8") as f:
            names = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"Class list {path} could not be read as JSON: {e}") from e
    names = _check_class_names(names.get("class_names") if isinstance(names, dict) else None, f"Class list {path}")
    if datalist is not None and fallback != names and datalist_class_names(datalist, names) != names:
        raise ValueError(f"Datalist {os.fspath(datalist) if not isinstance(datalist, dict) else '<datalist dict>'} "
                         f"names the classes {fallback}, but the model next to {path} was trained on {names}.")
    return names


def retfound_to_datalist(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    class_names: list[str] | None = None,
) -> dict:
    """Convert the RETFound/VisionFM layout ``root/{train,val,test}/<class>/<images>`` to a MONAI datalist.

    Classes are the folder names, sorted, unless ``class_names`` gives the order; a label is the class index.
    ``train`` is required; ``val`` and ``test`` are optional (an absent split gives an empty list). Hidden folders
    (``.ipynb_checkpoints``) are ignored.

    Args:
        root: dataset folder.
        out: if given, the datalist JSON is written there atomically and image paths are relative to its folder
            (so the dataset and datalist can be moved together); otherwise image paths are absolute.
        class_names: class order; must name exactly the class folders.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "class_names": [...]}``.

    Raises:
        ValueError: missing root or train folder, class folders that differ between splits (or from
            ``class_names``), or a class folder without images.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(f"Dataset folder {root} does not exist.")
    if not (root_path / "train").is_dir():
        raise ValueError(f"Dataset folder {root} has no 'train' folder (expected {root}/{{train,val,test}}/<class>/).")

    split_classes = {}
    for folder in _RETFOUND_SPLITS:
        if (root_path / folder).is_dir():
            split_classes[folder] = sorted(
                p.name for p in (root_path / folder).iterdir() if p.is_dir() and not p.name.startswith(".")
            )
    train_classes = split_classes["train"]
    if not train_classes:
        raise ValueError(f"Dataset folder {root}/train has no class folders.")
    for folder, classes in split_classes.items():
        if classes != train_classes:
            raise ValueError(
                f"Dataset folder {root}: class folders in '{folder}' {classes} differ from those in 'train' "
                f"{train_classes}."
            )
    if class_names is None:
        class_names = train_classes
    else:
        class_names = [str(c) for c in class_names]
        if sorted(class_names) != train_classes:
            raise ValueError(
                f"Dataset folder {root}: class_names {class_names} do not match class folders {train_classes}."
            )

    rel_to = os.path.dirname(os.path.abspath(os.fspath(out))) if out is not None else None
    result: dict = {key: [] for key in _RETFOUND_SPLITS.values()}
    for folder in split_classes:
        for label, cls in enumerate(class_names):
            images = _find_images(str(root_path / folder / cls))
            if not images:
                raise ValueError(f"Class folder {root_path / folder / cls} has no images.")
            for img in images:
                img = os.path.abspath(img)
                if rel_to is not None:
                    img = Path(os.path.relpath(img, rel_to)).as_posix()
                result[_RETFOUND_SPLITS[folder]].append({"image": img, "label": label})
    result["class_names"] = list(class_names)

    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


def folder_to_datalist(folder: str | os.PathLike) -> list[dict]:
    """``[{"image": path}, ...]`` for every image under ``folder`` (sorted, recursive), for inference."""
    return [{"image": p} for p in list_images(folder)]


def inference_datalist(source: str | os.PathLike, split: str = "test") -> list[dict]:
    """Images to run a bundle on: every image under a folder, or the `split` of a datalist JSON file."""
    if os.path.isfile(source) and os.fspath(source).endswith(".json"):
        return load_datalist(source, split)
    return folder_to_datalist(source)
