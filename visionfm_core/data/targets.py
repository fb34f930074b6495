"""Labels of the multi-task bundle and targets of the regression bundle: datalist checks, tensors, statistics and
the target list saved next to a trained model.

Multi-task datalist entry: ``{"image": ..., "labels": {"dr_grade": 0-4 | null, "dr": 0 | 1 | null, "glaucoma": ...}}``
(task names in :data:`visionfm_core.tasks.multitask.head.MULTITASK_TASKS`); a missing key or null is "unknown", -1 in
the (9,) label tensor, and is masked out of the loss and the metrics.

Regression datalist entry: ``{"image": ..., "targets": {"age": 63.0, "hba1c": null, ...}}`` with top-level
``"target_names"`` and ``"target_units"`` (same order; "" for a unitless target); a missing key or null is NaN in
the (K,) target tensor and is masked. Standardisation statistics come from the training split only.
"""

from __future__ import annotations

import os
from typing import Mapping

__all__ = ["MISSING_LABEL", "datalist_name", "entry_image"]


MISSING_LABEL = -1


def datalist_name(datalist) -> str:
    return "<datalist dict>" if isinstance(datalist, dict) else os.fspath(datalist)


def entry_image(d: Mapping, image_key: str) -> str:
    img = d.get(image_key)
    meta = getattr(img, "meta", None)
    if meta and "filename_or_obj" in meta:
        return str(meta["filename_or_obj"])
    return str(img) if isinstance(img, (str, os.PathLike)) else "<unknown image>"
