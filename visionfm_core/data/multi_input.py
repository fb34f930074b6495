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
import os

__all__ = ["datalist_source", "read_datalist_json"]


def datalist_source(source, split: str) -> tuple[str | dict, str]:
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


def read_datalist_json(source: str | dict) -> dict:
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
