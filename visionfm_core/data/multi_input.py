"""Datalists and transforms for networks that take more than one image tensor.

- Forecasting (`fundus_glaucoma_forecasting`): entries ``{"image": baseline, "followup": optional path,
  "interval_days": 0 < d <= 6500, "label": 0|1}``; :func:`load_forecasting_datalist` checks them and
  :class:`ForecastingInputsd` stacks a baseline/follow-up pair and makes the interval and label tensors.
- Fusion (`multimodal_disease_classification`): one entry per patient ``{"patient_id", "fundus": path|null,
  "oct": path|null, ..., "label"}`` (image keys are the lower-case modality names); :func:`load_fusion_datalist`
  checks them and :class:`FusionInputsd` reads each modality's image with its own modality's check and
  normalisation, fills absent ones with zeros and builds the ``present`` flags.

Bad entries raise ``ValueError`` naming the datalist, split, entry index and the image or patient.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Hashable, Mapping, Sequence

import torch
from monai.transforms import Compose, EnsureTyped, LoadImaged, MapTransform

from visionfm_core.data.datalist import load_datalist
from visionfm_core.data.modality_check import ModalityCheckd
from visionfm_core.data.readers import EyeImageReader
from visionfm_core.data.resize import EyeResized
from visionfm_core.data.transforms import EyeChannelsd, ModalityNormalized
from visionfm_core.modalities import get_modality

__all__ = ["MAX_INTERVAL_DAYS", "load_forecasting_datalist", "ForecastingInputsd", "modality_key",
           "load_fusion_datalist", "FusionInputsd"]

MAX_INTERVAL_DAYS = 6500.0


def _source(source, split: str) -> tuple[str | dict, str]:
    """A datalist dict, a JSON file or a folder holding datalist.json -> (what load_datalist takes, its name)."""
    if isinstance(source, dict):
        return source, "<datalist dict>"
    path = os.fspath(source)
    if os.path.isdir(path):
        path = os.path.join(path, "datalist.json")
    if not os.path.isfile(path):
        raise ValueError(f"Datalist {path} does not exist (give a datalist JSON or a folder with datalist.json; "
                         f"split {split!r} is read).")
    return path, path


def _read_json(source: str | dict) -> dict:
    if isinstance(source, dict):
        return source
    try:
        with open(source, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"Datalist {source} could not be read as JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"Datalist {source} must be a JSON object with split keys, got {type(data).__name__}.")
    return data


# --- forecasting --------------------------------------------------------------------------------------------------


def _interval(value: object, where: str, max_days: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{where}: interval_days {value!r} is not a number of days.")
    if not 0 < float(value) <= max_days:
        raise ValueError(f"{where}: interval_days {value} is outside (0, {max_days:g}] days.")
    return float(value)


def load_forecasting_datalist(source, split: str, pair: bool = False, max_interval_days: float = MAX_INTERVAL_DAYS,
                              required: bool = True) -> list[dict]:
    """One split of a forecasting datalist, checked: files exist, 0 < interval_days <= 6500, label 0 or 1.

    Args:
        source: datalist JSON file, a folder holding ``datalist.json``, or the loaded dict.
        split: ``"training"``, ``"validation"``, ``"test"``...
        pair: the network takes baseline and follow-up: every entry needs a ``"followup"`` image.
        max_interval_days: the longest interval the interval encoding was built for.
        required: False: a missing or empty split gives ``[]``.

    Returns:
        Entries with absolute ``image`` (and ``followup``, ``""`` when there is none), ``interval_days`` a float.
    """
    src, name = _source(source, split)
    entries = load_datalist(src, split, num_classes=2, required=required, path_keys=("followup",))
    for i, entry in enumerate(entries):
        where = f"Datalist {name}, {split!r} entry {i} (image {entry['image']})"
        if "interval_days" not in entry:
            raise ValueError(f"{where} has no \"interval_days\" (the forecast interval in days).")
        entry["interval_days"] = _interval(entry["interval_days"], where, max_interval_days)
        followup = entry.get("followup")
        if followup is not None and not isinstance(followup, str):
            raise ValueError(f"{where}: followup must be an image path or null, got {followup!r}.")
        if pair and not followup:
            raise ValueError(f"{where} has no \"followup\" image, but this bundle forecasts from a baseline/"
                             "follow-up pair (pair=True); give one or set pair to False.")
        entry["followup"] = followup or ""
    return entries


class ForecastingInputsd(MapTransform):
    """After the images are loaded and normalised: the network's inputs and the target.

    - ``pair=True``: ``image`` becomes (6, H, W), baseline then follow-up; ``followup`` becomes its file name.
    - ``interval_days`` becomes a float32 scalar tensor (checked to be in (0, max]).
    - ``label`` (when present) becomes a float32 (1,) tensor, the BCE target matching the (1,) logit.
    """

    def __init__(self, pair: bool = False, max_interval_days: float = MAX_INTERVAL_DAYS, image_key: str = "image",
                 followup_key: str = "followup", interval_key: str = "interval_days", label_key: str = "label"):
        super().__init__([image_key])
        self.pair, self.max_days = bool(pair), float(max_interval_days)
        self.image_key, self.followup_key = image_key, followup_key
        self.interval_key, self.label_key = interval_key, label_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d[self.image_key]
        name = str(getattr(image, "meta", {}).get("filename_or_obj", "<image>"))
        if self.pair:
            followup = d.get(self.followup_key)
            if not isinstance(followup, torch.Tensor):
                raise ValueError(f"Image {name} has no loaded follow-up image, but pair=True needs one.")
            if tuple(followup.shape) != tuple(image.shape):
                raise ValueError(f"Follow-up of {name} is {tuple(followup.shape)} after resizing, the baseline "
                                 f"{tuple(image.shape)}: resize both to the same size.")
            d[self.followup_key] = str(getattr(followup, "meta", {}).get("filename_or_obj", ""))
            d[self.image_key] = torch.cat([torch.as_tensor(image), torch.as_tensor(followup)], dim=0)
        elif isinstance(d.get(self.followup_key), torch.Tensor):  # loaded but unused: keep the name only
            d[self.followup_key] = str(d[self.followup_key].meta.get("filename_or_obj", ""))
        interval = d.get(self.interval_key)
        interval = interval.item() if isinstance(interval, torch.Tensor) else interval
        d[self.interval_key] = torch.tensor(_interval(interval, f"Image {name}", self.max_days), dtype=torch.float32)
        if self.label_key in d:
            label = d[self.label_key]
            label = label.item() if isinstance(label, torch.Tensor) else label
            if label not in (0, 1) or isinstance(label, bool):
                raise ValueError(f"Image {name}: label {label!r} must be 0 (no progression) or 1 (progressed).")
            d[self.label_key] = torch.tensor([float(label)], dtype=torch.float32)
        return d


# --- fusion -------------------------------------------------------------------------------------------------------


def modality_key(modality: str) -> str:
    """The datalist key of a modality's image: its canonical name in lower case ("Fundus" -> "fundus")."""
    return get_modality(modality).name.lower()


def load_fusion_datalist(source, split: str, modalities: Sequence[str], num_classes: int | None = None,
                         required: bool = True) -> list[dict]:
    """One split of a per-patient fusion datalist, checked.

    Each entry is a patient: ``{"patient_id": ..., "<modality key>": path or null, ..., "label": int}`` with
    keys from :func:`modality_key`. A missing or null key means the patient has no image of that modality; a
    patient with no image at all is an error naming the patient. Paths are relative to the datalist's folder or
    absolute and must exist. A datalist ``"modalities"`` list, when given, must equal ``modalities``.

    Returns:
        Entries with ``patient_id`` (default ``"<split>_<index>"``) and every modality key: an absolute path or
        ``""`` (absent).
    """
    src, name = _source(source, split)
    data = _read_json(src)
    names = [get_modality(m).name for m in modalities]
    listed = data.get("modalities")
    if listed is not None and [get_modality(m).name for m in listed] != names:
        raise ValueError(f"Datalist {name} is for modalities {listed}, but the network takes {names} (in this "
                         "order): set the bundle's `modalities` to match.")
    entries = data.get(split)
    if not entries:
        if not required:
            return []
        raise ValueError(f"Datalist {name} has no {split!r} split or it is empty "
                         f"(splits found: {[k for k, v in data.items() if isinstance(v, list)]}).")
    if not isinstance(entries, list):
        raise ValueError(f"Datalist {name}: split {split!r} must be a list of patients.")
    base = os.path.dirname(os.path.abspath(name)) if isinstance(src, str) else os.getcwd()
    keys = [modality_key(m) for m in names]
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"Datalist {name}, {split!r} entry {i} must be an object, got {entry!r}.")
        patient = str(entry.get("patient_id", f"{split}_{i}"))
        where = f"Datalist {name}, {split!r} entry {i} (patient {patient})"
        entry = {**entry, "patient_id": patient}
        for key in keys:
            path = entry.get(key)
            if path is None or path == "":
                entry[key] = ""
                continue
            if not isinstance(path, str):
                raise ValueError(f"{where}: {key} must be an image path or null, got {path!r}.")
            entry[key] = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
            if not os.path.isfile(entry[key]):
                raise ValueError(f"{where}: {key} image {entry[key]} does not exist.")
        if not any(entry[k] for k in keys):
            raise ValueError(f"{where} has no image at all: give at least one of {keys}.")
        if "label" in entry:
            label = entry["label"]
            if isinstance(label, bool) or not isinstance(label, numbers.Integral) or (
                    num_classes is not None and not 0 <= label < num_classes):
                bound = f" in 0..{num_classes - 1}" if num_classes is not None else ""
                raise ValueError(f"{where}: label {label!r} is not an integer class index{bound}.")
        out.append(entry)
    return out


class FusionInputsd(MapTransform):
    """A patient's images -> ``image`` (3 x M, H, W) and ``present`` (M,) float32 (1 = the image exists).

    For each modality (in order), the path under its key (:func:`modality_key`) is read with
    ``LoadImaged(reader=EyeImageReader())``, checked (:class:`ModalityCheckd`: a colour photo under a grey
    modality's key gives a warning), brought to 3 channels (:class:`EyeChannelsd`, greying grey modalities),
    resized to ``spatial_size`` and normalised with that modality's statistics. An absent image (``""`` or
    missing key) is zeros and ``present`` 0. Warnings of all images are joined under ``warning_key``.
    """

    def __init__(self, modalities: Sequence[str], spatial_size: int | Sequence[int], image_key: str = "image",
                 present_key: str = "present", warning_key: str = "modality_warning", patient_key: str = "patient_id"):
        self.modalities = [get_modality(m).name for m in modalities]
        self.keys_ = [modality_key(m) for m in self.modalities]
        super().__init__(self.keys_, allow_missing_keys=True)
        size = [int(spatial_size)] * 2 if isinstance(spatial_size, numbers.Integral) else [int(s) for s in spatial_size]
        self.size = size
        self.image_key, self.present_key = image_key, present_key
        self.warning_key, self.patient_key = warning_key, patient_key
        self.pipelines = {
            m: Compose([
                LoadImaged("image", reader=EyeImageReader(), image_only=True),
                ModalityCheckd("image", m, warning_key="warning"),
                EyeChannelsd("image", m),
                EyeResized("image", size, mode="bilinear"),
                ModalityNormalized("image", m),
                EnsureTyped("image", dtype=torch.float32, track_meta=False),
            ]) for m in self.modalities}

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        images, present, warnings = [], [], []
        for m, key in zip(self.modalities, self.keys_):
            path = d.get(key) or ""
            if not path:
                images.append(torch.zeros(3, *self.size))
                present.append(0.0)
                d[key] = ""
                continue
            out = self.pipelines[m]({"image": path})
            images.append(torch.as_tensor(out["image"]))
            present.append(1.0)
            if out["warning"]:
                warnings.append(f"{key}: {out['warning']}")
        if not any(present):
            raise ValueError(f"Patient {d.get(self.patient_key, '<unknown>')} has no image at all "
                             f"(none of {self.keys_}).")
        d[self.image_key] = torch.cat(images, dim=0)
        d[self.present_key] = torch.tensor(present, dtype=torch.float32)
        d[self.warning_key] = "; ".join(warnings)
        return d
