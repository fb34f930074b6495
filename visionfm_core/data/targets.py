"""Labels of the multi-task bundle and targets of the regression bundle: datalist checks, tensors, statistics and
the target list saved next to a trained model.

Multi-task datalist entry: ``{"image": ..., "labels": {"dr_grade": 0-4 | null, "dr": 0 | 1 | null, "glaucoma": ...}}``
(task names in :data:`visionfm_core.models.multitask.MULTITASK_TASKS`); a missing key or null is "unknown", -1 in
the (9,) label tensor, and is masked out of the loss and the metrics.

Regression datalist entry: ``{"image": ..., "targets": {"age": 63.0, "hba1c": null, ...}}`` with top-level
``"target_names"`` and ``"target_units"`` (same order; "" for a unitless target); a missing key or null is NaN in
the (K,) target tensor and is masked. Standardisation statistics come from the training split only.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from visionfm_core.data.datalist import load_datalist
from visionfm_core.io import atomic_write_text
from visionfm_core.models.multitask import GRADE_CLASSES, GRADE_TASK, MULTITASK_TASKS

__all__ = [
    "MISSING_LABEL",
    "TARGETS_FILE",
    "DEFAULT_TARGET_NAMES",
    "DEFAULT_TARGET_UNITS",
    "load_multitask_datalist",
    "MultiTaskLabelsd",
    "load_regression_datalist",
    "RegressionTargetsd",
    "datalist_targets",
    "target_stats",
    "save_targets",
    "trained_targets",
]

MISSING_LABEL = -1
TARGETS_FILE = "targets.json"  # written next to a trained regression model: names, units, standardisation stats
DEFAULT_TARGET_NAMES = ("age", "hba1c", "systolic_bp")
DEFAULT_TARGET_UNITS = ("years", "%", "mmHg")


def _datalist_name(datalist) -> str:
    return "<datalist dict>" if isinstance(datalist, dict) else os.fspath(datalist)


# --- multi-task labels --------------------------------------------------------------------------------------------


def _task_label(value: object, task: str, where: str) -> int:
    """-1 for null, else the validated integer label of `task`."""
    if value is None:
        return MISSING_LABEL
    if task == GRADE_TASK:
        ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and float(value).is_integer() \
            and 0 <= value < len(GRADE_CLASSES)
        if not ok:
            raise ValueError(f"{where}: label {task}={value!r} must be an integer DR grade 0-{len(GRADE_CLASSES) - 1} "
                             "or null.")
        return int(value)
    if isinstance(value, bool):  # true/false is a natural way to write a binary label
        return int(value)
    if not (isinstance(value, numbers.Real) and value in (0, 1)):
        raise ValueError(f"{where}: label {task}={value!r} must be 0, 1 or null.")
    return int(value)


def _multitask_row(labels: object, tasks: Sequence[str], where: str) -> list[int]:
    if labels is None:
        return [MISSING_LABEL] * len(tasks)
    if not isinstance(labels, dict):
        raise ValueError(f"{where}: \"labels\" must be an object {{task: label}}, got {labels!r}.")
    unknown = sorted(set(labels) - set(tasks))
    if unknown:
        raise ValueError(f"{where}: unknown task name(s) {unknown} in \"labels\"; the tasks are {list(tasks)}.")
    return [_task_label(labels.get(t), t, where) for t in tasks]


def load_multitask_datalist(datalist, split: str, tasks: Sequence[str] = MULTITASK_TASKS, **kwargs) -> list[dict]:
    """:func:`load_datalist` plus a check of every entry's ``"labels"``: known task names only, the grade in 0-4,
    binary labels 0/1 (or true/false), null or absent for unknown. In the training split an entry must have at
    least one known label. Errors name the datalist, split, entry index and image."""
    entries = load_datalist(datalist, split, **kwargs)
    for i, entry in enumerate(entries):
        where = f"Datalist {_datalist_name(datalist)}, {split!r} entry {i} ({entry['image']})"
        row = _multitask_row(entry.get("labels"), tasks, where)
        if split == "training" and all(v == MISSING_LABEL for v in row):
            raise ValueError(f"{where}: no known label for any task ({list(tasks)}); a training image needs one.")
    return entries


class MultiTaskLabelsd(MapTransform):
    """Pop the ``"labels"`` object of an entry and put a float32 (T,) tensor in `tasks` order under `label_key`
    (what the trainer's loss and the metrics read), -1 where unknown. An entry without labels gets all -1, so
    labelled and unlabelled entries batch together. Bad labels raise naming the image."""

    def __init__(self, keys: KeysCollection = "labels", tasks: Sequence[str] = MULTITASK_TASKS,
                 label_key: str = "label", image_key: str = "image") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.tasks = tuple(tasks)
        self.label_key, self.image_key = label_key, image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if isinstance(d.get(self.label_key), torch.Tensor):
            return d  # already converted
        values = [d.pop(key, None) for key in self.keys]
        where = f"image {_image_of(d, self.image_key)}"
        d[self.label_key] = torch.tensor(_multitask_row(values[0], self.tasks, where), dtype=torch.float32)
        return d


def _image_of(d: Mapping, image_key: str) -> str:
    img = d.get(image_key)
    meta = getattr(img, "meta", None)
    if meta and "filename_or_obj" in meta:
        return str(meta["filename_or_obj"])
    return str(img) if isinstance(img, (str, os.PathLike)) else "<unknown image>"


# --- regression targets -------------------------------------------------------------------------------------------


def _target_value(value: object, name: str, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{where}: target {name!r} = {value!r} is not a finite number (use null when unknown).")
    return float(value)


def _target_row(targets: object, names: Sequence[str], where: str) -> list[float]:
    if targets is None:
        return [math.nan] * len(names)
    if not isinstance(targets, dict):
        raise ValueError(f"{where}: \"targets\" must be an object {{name: value}}, got {targets!r}.")
    unknown = sorted(set(targets) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown target name(s) {unknown}; this bundle's targets are {list(names)} "
                         "(the datalist's top-level \"target_names\").")
    return [_target_value(targets.get(n), n, where) for n in names]


def load_regression_datalist(datalist, split: str, target_names: Sequence[str], **kwargs) -> list[dict]:
    """:func:`load_datalist` plus a check of every entry's ``"targets"``: names from `target_names` only, values
    finite numbers or null. In the training split an entry with every target missing is an error, and so is a
    target with no value at all (it could not be standardised). Errors name the datalist, split, entry and image
    (and the target)."""
    names = list(target_names)
    entries = load_datalist(datalist, split, **kwargs)
    rows = []
    for i, entry in enumerate(entries):
        where = f"Datalist {_datalist_name(datalist)}, {split!r} entry {i} ({entry['image']})"
        row = _target_row(entry.get("targets"), names, where)
        if split == "training" and all(math.isnan(v) for v in row):
            raise ValueError(f"{where}: every target ({names}) is missing; a training image needs at least one.")
        rows.append(row)
    if split == "training":
        empty = [n for j, n in enumerate(names) if all(math.isnan(r[j]) for r in rows)]
        if empty:
            raise ValueError(f"Datalist {_datalist_name(datalist)}: target(s) {empty} have no value in the training "
                             "split, so they cannot be learned or standardised.")
    return entries


class RegressionTargetsd(MapTransform):
    """Pop the ``"targets"`` object of an entry and put a float32 (K,) tensor in `target_names` order under
    `label_key`, NaN where missing (an entry without targets gets all NaN)."""

    def __init__(self, keys: KeysCollection = "targets", target_names: Sequence[str] = DEFAULT_TARGET_NAMES,
                 label_key: str = "label", image_key: str = "image") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.names = list(target_names)
        self.label_key, self.image_key = label_key, image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if isinstance(d.get(self.label_key), torch.Tensor):
            return d
        values = [d.pop(key, None) for key in self.keys]
        where = f"image {_image_of(d, self.image_key)}"
        d[self.label_key] = torch.tensor(_target_row(values[0], self.names, where), dtype=torch.float32)
        return d


def _check_list(values: object, what: str, source: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{source}: {what} must be a list of strings, got {values!r}.")
    return list(values)


def _names_units(names: object, units: object, source: str) -> dict:
    names = _check_list(names, "\"target_names\"", source)
    if not names or not all(n.strip() for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{source}: \"target_names\" must be non-empty, unique names, got {names}.")
    units = [""] * len(names) if units is None else _check_list(units, "\"target_units\"", source)
    if len(units) != len(names):
        raise ValueError(f"{source}: {len(names)} target names {names} but {len(units)} units {units}.")
    return {"names": names, "units": units}


def datalist_targets(datalist, default_names: Sequence[str] = DEFAULT_TARGET_NAMES,
                     default_units: Sequence[str] = DEFAULT_TARGET_UNITS) -> dict:
    """``{"names": [...], "units": [...]}``: the datalist's top-level ``"target_names"`` / ``"target_units"``
    (units "" when not given), else the defaults. A datalist file that does not exist yet gives the defaults, so
    configs parse without data (loading the split then reports the missing file)."""
    data: object = datalist if isinstance(datalist, dict) else {}
    name = _datalist_name(datalist)
    if not isinstance(datalist, dict) and os.path.isfile(name):
        try:
            with open(name, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"Datalist {name} could not be read as JSON: {e}") from e
    if isinstance(data, dict) and data.get("target_names") is not None:
        return _names_units(data["target_names"], data.get("target_units"), f"Datalist {name}")
    return _names_units(list(default_names), list(default_units), "default targets")


def target_stats(entries: Sequence[dict], target_names: Sequence[str]) -> tuple[list[float], list[float]]:
    """Per-target mean and standard deviation (population, ddof 0) over the values present in `entries`' targets;
    a constant target gets std 1 (nothing to scale). Raises when a target has no value."""
    rows = np.array([_target_row(e.get("targets"), target_names, f"entry {i} ({e.get('image')})")
                     for i, e in enumerate(entries)], dtype=np.float64).reshape(-1, len(target_names))
    mean, std = [], []
    for j, name in enumerate(target_names):
        values = rows[~np.isnan(rows[:, j]), j]
        if values.size == 0:
            raise ValueError(f"target {name!r} has no value in the training entries: cannot standardise it.")
        m, s = float(values.mean()), float(values.std())
        mean.append(m)
        std.append(s if s > 1e-8 * max(1.0, abs(m)) else 1.0)
    return mean, std


def save_targets(folder: str | os.PathLike, names: Sequence[str], units: Sequence[str],
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> str:
    """Write ``<folder>/targets.json`` atomically (what a regression model predicts, in which units, and the
    training statistics for the record; the model's own buffers hold the ones it uses). Returns the path."""
    record = {"target_names": list(names), "target_units": list(units)}
    if mean is not None:
        record.update(target_mean=list(mean), target_std=list(std))
    path = os.path.join(os.fspath(folder), TARGETS_FILE)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def trained_targets(model_path: str | os.PathLike, default_names: Sequence[str] = DEFAULT_TARGET_NAMES,
                    default_units: Sequence[str] = DEFAULT_TARGET_UNITS, datalist=None) -> dict:
    """``{"names", "units"}`` of a trained model: ``targets.json`` next to `model_path` when training wrote one,
    else those of `datalist` (evaluation) or the defaults. Inference uses this, so it knows K and the names
    without the training datalist."""
    path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_path))), TARGETS_FILE)
    if not os.path.isfile(path):
        if datalist is not None:
            return datalist_targets(datalist, default_names, default_units)
        return _names_units(list(default_names), list(default_units), "default targets")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"Target list {path} could not be read as JSON: {e}") from e
    if not isinstance(record, dict):
        raise ValueError(f"Target list {path} must be a JSON object with \"target_names\".")
    return _names_units(record.get("target_names"), record.get("target_units"), f"Target list {path}")
