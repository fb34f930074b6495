"""Regression targets: names, units, training-split statistics and the targets of a trained model."""

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
from visionfm_core.data.targets import datalist_name, entry_image
from visionfm_core.engine.io import atomic_write_text

__all__ = ["TARGETS_FILE", "DEFAULT_TARGET_NAMES", "DEFAULT_TARGET_UNITS", "load_regression_datalist", "RegressionTargetsd", "datalist_targets", "target_stats", "save_targets", "trained_targets"]


TARGETS_FILE = "targets.json"  # written next to a trained regression model: names, units, standardisation stats


DEFAULT_TARGET_NAMES = ("age", "hba1c", "systolic_bp")


DEFAULT_TARGET_UNITS = ("years", "%", "mmHg")


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
        where = f"Datalist {datalist_name(datalist)}, {split!r} entry {i} ({entry['image']})"
        row = _target_row(entry.get("targets"), names, where)
        if split == "training" and all(math.isnan(v) for v in row):
            raise ValueError(f"{where}: every target ({names}) is missing; a training image needs at least one.")
        rows.append(row)
    if split == "training":
        empty = [n for j, n in enumerate(names) if all(math.isnan(r[j]) for r in rows)]
        if empty:
            raise ValueError(f"Datalist {datalist_name(datalist)}: target(s) {empty} have no value in the training "
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
        where = f"image {entry_image(d, self.image_key)}"
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
    name = datalist_name(datalist)
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
