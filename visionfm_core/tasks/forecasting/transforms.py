"""Forecasting inputs: visit pairs with the interval between them."""

from __future__ import annotations

import math
import numbers
from typing import Hashable, Mapping

import torch
from monai.transforms import MapTransform

from visionfm_core.data.datalist import load_datalist
from visionfm_core.data.multi_input import datalist_source

__all__ = ["MAX_INTERVAL_DAYS", "load_forecasting_datalist", "ForecastingInputsd"]


MAX_INTERVAL_DAYS = 6500.0


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
    src, name = datalist_source(source, split)
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
