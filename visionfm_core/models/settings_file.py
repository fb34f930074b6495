"""What a bundle needs to know about a model imported from the original VisionFM release: `models/network.json`
next to `models/model.pt`, written by `visionfm import-weights --bundle` and read by the bundle configs.

It names the head variant (`original_classification`) and its options (the original's pooling and depth), and the
preprocessing the model was trained with ("original"); the bundle's `head`, `head_options` and
`preprocessing_mode` default to these values, so an imported model runs through evaluate.json, inference.json,
`visionfm export` and MONAI Label as it is. Training a bundle removes the file (the model it writes is its own).
"""

from __future__ import annotations

import json
import os

from visionfm_core.engine.io import atomic_write_text

__all__ = ["NETWORK_FILE", "network_settings", "write_network_settings", "forget_network_settings"]

NETWORK_FILE = "network.json"


def _path(model_path: str | os.PathLike) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_path))), NETWORK_FILE)


def network_settings(model_path: str | os.PathLike) -> dict:
    """The settings recorded next to `model_path` by an import ({} for a model trained by the bundle itself):
    {"head", "head_options", "preprocessing", "source", ...}."""
    path = _path(model_path)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} could not be read as JSON ({e}): run `visionfm import-weights ... --bundle` "
                         "again, or delete it if models/model.pt was trained by this bundle") from e
    if not isinstance(settings, dict) or not isinstance(settings.get("head"), str) \
            or not isinstance(settings.get("head_options", {}), dict):
        raise ValueError(f"{path} does not describe an imported network (expected \"head\" and \"head_options\"): "
                         "run `visionfm import-weights ... --bundle` again")
    return settings


def write_network_settings(models_dir: str | os.PathLike, settings: dict) -> str:
    """Write `models_dir`/network.json atomically; returns its path."""
    path = os.path.join(os.fspath(models_dir), NETWORK_FILE)
    atomic_write_text(path, json.dumps(settings, indent=1) + "\n")
    return path


def forget_network_settings(models_dir: str | os.PathLike) -> str | None:
    """Remove `models_dir`/network.json (a bundle starts training its own model there); returns the removed path."""
    path = os.path.join(os.fspath(models_dir), NETWORK_FILE)
    if os.path.isfile(path):
        os.remove(path)
        return path
    return None
