"""What the bundle checks need to know about each kind of bundle: tiny overrides and small generated data.

Every bundle under bundles/ is checked; a bundle's kind is the last part of its folder name
(`<modality>_<target>_<task>`), and each kind has a data builder below.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parent.parent for p in (REPO / "bundles").glob("*/configs/metadata.json"))
SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"
# shrink every bundle to seconds: ViT-Tiny at 32 px, no worker processes
TINY = {"arch": "vit_tiny", "image_size": 32, "batch_size": 4, "num_workers": 0}


def task_of(bundle: Path) -> str:
    return bundle.name.rsplit("_", 1)[-1]


def config(bundle: Path, name: str) -> str:
    return str(bundle / "configs" / f"{name}.json")


def metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def make_classification_data(root: Path, num_classes: int) -> dict:
    """Graded phantoms in the RETFound layout + datalist; returns the overrides that point the bundle at them."""
    from visionfm_core.data import write_demo_dataset

    datalist = write_demo_dataset(root / "data", per_class=2, size=48, num_classes=num_classes)
    infer_dir = root / "data" / "test"
    return {"dataset_dir": str(root / "data"), "datalist": datalist, "infer_dir": str(infer_dir)}


def make_data(bundle: Path, root: Path) -> dict:
    task = task_of(bundle)
    if task == "classification":
        meta = metadata(bundle)
        return make_classification_data(root, meta["network_data_format"]["outputs"]["pred"]["num_channels"])
    raise NotImplementedError(f"no test data builder for {task} bundles ({bundle.name}): add one in {__file__}")
