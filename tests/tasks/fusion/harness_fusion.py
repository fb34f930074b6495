"""Bundle-check plug-in for the fusion kind (tests/bundle_harness.py): per-patient phantoms of each modality, some
patients missing one."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

SPLITS = {"training": 8, "validation": 4, "test": 4}


def write_fusion_dataset(root: Path, modalities=("Fundus", "OCT"), num_classes: int = 4, size: int = 48,
                         seed: int = 0) -> str:
    """One entry per patient; patients 1, 4, 7... lack the last modality, patients 3, 8, 13... the first."""
    from visionfm_core.data import make_phantom
    from visionfm_core.tasks.fusion import modality_key

    root.mkdir(parents=True, exist_ok=True)
    datalist = {"modalities": list(modalities)}
    k = 0
    for split, n in SPLITS.items():
        entries = []
        for i in range(n):
            entry = {"patient_id": f"{split}_{i}", "label": i % num_classes}
            for j, m in enumerate(modalities):
                missing = (j == len(modalities) - 1 and i % 3 == 1) or (j == 0 and i % 5 == 3)
                if missing:
                    entry[modality_key(m)] = None
                    continue
                name = f"{split}_{i:02d}_{modality_key(m)}.png"
                Image.fromarray(make_phantom(m, size, seed + k)).save(root / name)
                entry[modality_key(m)] = name
                k += 1
            entries.append(entry)
        datalist[split] = entries
    path = root / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1))
    return str(path)


def make_data(bundle: Path, root: Path) -> dict:
    from bundle_harness import metadata

    num_classes = metadata(bundle)["network_data_format"]["outputs"]["pred"]["num_channels"]
    datalist = write_fusion_dataset(root / "data", num_classes=num_classes)
    return {"train": {"dataset_dir": str(root / "data"), "datalist": datalist}, "infer_dir": datalist,
            "trained": "model.pt"}


def forward_args(batch: int) -> dict:
    """present (B, 2): both modalities, then one missing, alternately."""
    return {"present": torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]).repeat(batch, 1)[:batch]}
