"""Bundle-check plug-in for the forecasting kind (tests/bundle_harness.py): phantom fundus pairs with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SPLITS = {"training": 8, "validation": 4, "test": 4}


def write_forecasting_dataset(root: Path, size: int = 48, modality: str = "Fundus", seed: int = 0) -> str:
    """Baseline and follow-up phantoms, intervals across (0, 6500] and balanced 0/1 labels in every split."""
    from visionfm_core.data import make_phantom

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    datalist, k = {}, 0
    for split, n in SPLITS.items():
        entries = []
        for i in range(n):
            names = []
            for visit in ("baseline", "followup"):
                name = f"{split}_{i:02d}_{visit}.png"
                Image.fromarray(make_phantom(modality, size, seed + k)).save(root / name)
                names.append(name)
                k += 1
            entries.append({"image": names[0], "followup": names[1], "patient_id": f"{split}_{i}",
                            "interval_days": float(rng.integers(30, 6500)) if i else 6500.0, "label": i % 2})
        datalist[split] = entries
    path = root / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1))
    return str(path)


def make_data(bundle: Path, root: Path) -> dict:
    datalist = write_forecasting_dataset(root / "data")
    return {"train": {"dataset_dir": str(root / "data"), "datalist": datalist}, "infer_dir": datalist,
            "trained": "model.pt"}


def forward_args(batch: int) -> dict:
    """interval_days (B,): spread over the encoding's range, the 6500-day limit included."""
    return {"interval_days": torch.linspace(6500.0, 30.0, batch) if batch > 1 else torch.tensor([365.0])}
