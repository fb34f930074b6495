"""Fusion inputs: one image per modality with a presence mask."""

from __future__ import annotations

import numbers
import os
from typing import Hashable, Mapping, Sequence

import torch
from monai.transforms import Compose, EnsureTyped, LoadImaged, MapTransform

from visionfm_core.data.io.readers import DEFAULT_MAX_PIXELS, EyeImageReader
from visionfm_core.data.modality_check import ModalityCheckd
from visionfm_core.data.multi_input import datalist_source, read_datalist_json
from visionfm_core.data.resize import EyeResized
from visionfm_core.data.transforms import EyeChannelsd, ModalityNormalized
from visionfm_core.modalities import get_modality

__all__ = ["modality_key", "load_fusion_datalist", "FusionInputsd"]


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
    src, name = datalist_source(source, split)
    data = read_datalist_json(src)
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
    ``decode_size`` and ``max_pixels`` go to the reader (:class:`EyeImageReader`): inference reads each image
    reduced to about twice ``spatial_size`` and refuses files over ``max_pixels``.
    """

    def __init__(self, modalities: Sequence[str], spatial_size: int | Sequence[int], image_key: str = "image",
                 present_key: str = "present", warning_key: str = "modality_warning", patient_key: str = "patient_id",
                 encoder: str = "visionfm", decode_size: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.modalities = [get_modality(m).name for m in modalities]
        self.keys_ = [modality_key(m) for m in self.modalities]
        super().__init__(self.keys_, allow_missing_keys=True)
        size = [int(spatial_size)] * 2 if isinstance(spatial_size, numbers.Integral) else [int(s) for s in spatial_size]
        self.size = size
        self.image_key, self.present_key = image_key, present_key
        self.warning_key, self.patient_key = warning_key, patient_key
        self.pipelines = {
            m: Compose([
                LoadImaged("image", reader=EyeImageReader(decode_size=decode_size, max_pixels=max_pixels),
                           image_only=True),
                ModalityCheckd("image", m, warning_key="warning"),
                EyeChannelsd("image", m),
                EyeResized("image", size, mode="bilinear"),
                ModalityNormalized("image", m, encoder=encoder),  # the encoder family's normalisation
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
