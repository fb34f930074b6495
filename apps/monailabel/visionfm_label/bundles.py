"""Which bundles the app serves, how it serves each one, and where MONAI Label finds them.

No monailabel import, so tests in the main environment cover it. What a bundle is comes from the library's one
lookup, `visionfm_core.tasks.bundle_family` (the "family" its metadata.json records).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from visionfm_core.tasks import FamilyError, bundle_family

# How the app serves a bundle: its task family's `served_as` (visionfm_core.tasks.Family), never the folder name.
SEGMENTATION = "segmentation"
CLASSIFICATION = "classification"
LANDMARKS = "landmarks"
EMBEDDING = "embedding"
REGRESSION = "regression"
FAMILIES = (SEGMENTATION, CLASSIFICATION, LANDMARKS, EMBEDDING, REGRESSION)


class BundleError(ValueError):
    """A bundle folder the app cannot serve; the message names the folder and the problem."""


@dataclass(frozen=True)
class BundleInfo:
    name: str
    path: Path
    family: str
    dimension: int  # 2 for photos, 3 for volumes (len of the input spatial_shape)
    weights: str  # file under models/ that MONAI Label loads: model.pt, or encoder.pt for pretraining bundles
    trainable: bool  # has configs/train.json and the server's train endpoint can drive it


def read_metadata(bundle: Path) -> dict:
    path = Path(bundle) / "configs" / "metadata.json"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BundleError(f"{bundle} is not a bundle: {path} is missing") from None
    except ValueError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None


def family_of(bundle: str | os.PathLike) -> str:
    """How the app serves the bundle: one of `FAMILIES`, from the bundle's task family."""
    try:
        family = bundle_family(bundle)
    except FamilyError as error:
        raise BundleError(str(error)) from None
    if family.served_as not in FAMILIES:
        raise BundleError(f"{Path(bundle).name} is a {family.name} bundle ({family.summary[0].lower()}"
                          f"{family.summary[1:].rstrip('.')}); MONAI Label serves models that label an image")
    return family.served_as


def bundle_info(bundle: str | os.PathLike) -> BundleInfo:
    bundle = Path(bundle)
    if not (bundle / "configs" / "inference.json").is_file():
        raise BundleError(f"{bundle} has no configs/inference.json; MONAI Label serves a bundle from that file")
    read_metadata(bundle)  # a missing or broken metadata.json is named before anything else
    family = family_of(bundle)
    weights = bundle_family(bundle).weights
    # only segmentation: MONAI Label's datastore hands the trainer {"image", "label"} pairs of label maps
    trainable = family == SEGMENTATION and (bundle / "configs" / "train.json").is_file()
    return BundleInfo(bundle.name, bundle, family, bundle_family(bundle).spatial_dims, weights, trainable)


def discover(bundles_dir: str | os.PathLike) -> dict[str, Path]:
    """Every bundle folder (one with configs/metadata.json) directly under `bundles_dir`, by name."""
    root = Path(bundles_dir)
    if not root.is_dir():
        raise BundleError(f"bundles folder {root} does not exist")
    return {p.name: p for p in sorted(root.iterdir()) if (p / "configs" / "metadata.json").is_file()}


def select(available: dict[str, Path], models: str | None) -> dict[str, Path]:
    """`models`: "all" (or empty) or a comma-separated list of bundle names; unknown names are an error."""
    if not models or models.strip().lower() == "all":
        return dict(available)
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in available]
    if unknown:
        raise BundleError(f"unknown bundle(s) {', '.join(unknown)}; available: {', '.join(available) or 'none'}")
    return {m: available[m] for m in wanted}


def link_into_app(app_dir: str | os.PathLike, bundles: dict[str, Path]) -> dict[str, Path]:
    """Make each bundle visible as `<app_dir>/model/<name>` (a symlink; a copy where links are not possible).

    MONAI Label expects bundles there. An existing link to another place is replaced; a real folder of the same
    name is left alone (it is the user's own copy) and used as it is.
    """
    model_dir = Path(app_dir) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    placed = {}
    for name, src in bundles.items():
        dst = model_dir / name
        src = Path(src).resolve()
        if dst.is_symlink():
            if dst.resolve() != src:
                dst.unlink()
        if not dst.exists():
            try:
                dst.symlink_to(src, target_is_directory=True)
            except OSError:
                shutil.copytree(src, dst)
        placed[name] = dst
    return placed


def points_table(points, names: list[str]) -> list[dict]:
    """(L, 2) (x, y) pixel points -> [{"name", "x", "y"}], in the input image's pixel coordinates."""
    rows = []
    for i, (x, y) in enumerate(points):
        rows.append({"name": names[i] if i < len(names) else f"landmark_{i}", "x": float(x), "y": float(y)})
    return rows


def class_table(scores, names: list[str]) -> list[dict]:
    """Per-class scores -> [{"idx", "label", "score"}] (MONAI Label's classification result layout)."""
    return [{"idx": i, "label": names[i] if i < len(names) else f"class_{i}", "score": float(s)}
            for i, s in enumerate(scores)]


def parse_overrides(text: str | None) -> dict[str, dict]:
    """`--conf overrides '{"*": {"arch": "vit_small"}, "mri_orbit_segmentation": {"sw_overlap": 0}}'`: config ids
    to set in the inference and train configs of every bundle ("*") or of one bundle."""
    if not text:
        return {}
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise BundleError(f"--conf overrides is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
        raise BundleError('--conf overrides must map "*" or a bundle name to {config_id: value}')
    return spec


def overrides_for(spec: dict[str, dict], name: str) -> dict:
    return {**spec.get("*", {}), **spec.get(name, {})}
