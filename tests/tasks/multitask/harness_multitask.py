"""Bundle-check data for the multi-task kind (fundus_multidisease_classification): fundus phantoms with random
labels for the 9 tasks, some unknown (null or absent), as a MONAI datalist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_images(folder: Path, n: int, seed: int, modality: str = "Fundus", size: int = 48) -> list[str]:
    """`n` phantom PNGs of `modality` in `folder`; their file names."""
    from PIL import Image

    from visionfm_core.data import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"img_{seed}_{i:03d}.png"
        Image.fromarray(make_phantom(modality, size, seed * 1000 + i)).save(folder / name)
        names.append(name)
    return names


def random_labels(rng: np.random.Generator, tasks: list[str]) -> dict:
    """Labels for every task, about a third of them unknown (null or absent); never all unknown."""
    labels = {}
    for t in tasks:
        r = rng.random()
        if r < 0.15:
            continue  # absent
        if r < 0.3:
            labels[t] = None
        else:
            labels[t] = int(rng.integers(0, 5 if t == "dr_grade" else 2))
    if all(v is None for v in labels.values()):
        labels["dr_grade"] = int(rng.integers(0, 5))
    return labels


def write_multitask_dataset(root: Path, tasks: list[str], counts=(8, 4, 4), seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    data = {}
    for s, (split, n) in enumerate(zip(("training", "validation", "test"), counts)):
        images = write_images(root / "images" / split, n, seed=s)
        data[split] = [{"image": f"images/{split}/{name}", "labels": random_labels(rng, tasks)} for name in images]
    path = root / "datalist.json"
    path.write_text(json.dumps(data, indent=1))
    return str(path)


def make_data(bundle: Path, root: Path) -> dict:
    tasks = json.loads((bundle / "configs" / "train.json").read_text())["task_names"]
    datalist = write_multitask_dataset(root / "data", tasks)
    return {"train": {"dataset_dir": str(root / "data"), "datalist": datalist},
            "infer_dir": str(root / "data" / "images" / "test"), "trained": "model.pt"}
