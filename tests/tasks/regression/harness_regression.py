"""Bundle-check data for the regression kind (fundus_biomarker_regression): fundus phantoms with random targets in
plausible units, some missing (null or absent), the datalist naming its targets and units."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness_multitask import write_images

TARGETS = {"age": ("years", 60.0, 10.0), "hba1c": ("%", 6.0, 1.0), "systolic_bp": ("mmHg", 130.0, 15.0)}


def random_targets(rng: np.random.Generator, targets: dict = TARGETS) -> dict:
    """One value per target of `targets` ({name: (unit, mean, std)}), about a quarter missing (null or absent);
    never all missing."""
    out = {}
    for name, (_, mean, std) in targets.items():
        r = rng.random()
        if r < 0.1:
            continue  # absent
        out[name] = None if r < 0.25 else round(float(rng.normal(mean, std)), 2)
    if all(v is None for v in out.values()):
        name, (_, mean, std) = next(iter(targets.items()))
        out[name] = round(float(rng.normal(mean, std)), 2)
    return out


def write_regression_dataset(root: Path, counts=(8, 4, 4), seed: int = 0, targets: dict = TARGETS) -> str:
    rng = np.random.default_rng(seed)
    data = {"target_names": list(targets), "target_units": [u for u, _, _ in targets.values()]}
    for s, (split, n) in enumerate(zip(("training", "validation", "test"), counts)):
        images = write_images(root / "images" / split, n, seed=10 + s)
        data[split] = [{"image": f"images/{split}/{name}", "targets": random_targets(rng, targets)} for name in images]
    path = root / "datalist.json"
    path.write_text(json.dumps(data, indent=1))
    return str(path)


def make_data(bundle: Path, root: Path) -> dict:
    datalist = write_regression_dataset(root / "data")
    return {"train": {"dataset_dir": str(root / "data"), "datalist": datalist},
            "infer_dir": str(root / "data" / "images" / "test"), "trained": "model.pt"}
