"""Bundle-check plug-in for the volume MIL kind (tests/bundle_harness.py): tiny OCT-like cubes whose class is
visible in a few B-scans only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPLITS = {"training": 2, "validation": 1, "test": 1}  # cubes per class
# the harness's overrides on top of bundle_harness.TINY: few B-scans per training cube, all in one encoder pass
OVERRIDES = {"num_slices": 4, "slice_batch_size": 16}


def make_cube(label: int, num_classes: int, shape=(40, 48, 6), signal_slices=(1, 4), seed: int = 0) -> np.ndarray:
    """An (I, J, K) uint8 cube: speckle noise over a bright retina-like band in every B-scan; for label > 0 a bright
    blob in `signal_slices` only, its lateral position telling the class (label 0 "normal": no blob)."""
    rng = np.random.default_rng(seed)
    i, j, k = shape
    cube = rng.normal(40, 12, size=shape)
    top = i // 3
    cube[top: top + i // 6] += 80  # the retina: a band at the same depth in every B-scan
    if label > 0:
        centre = int((label - 0.5) * j / max(num_classes - 1, 1))
        rows, cols = np.ogrid[:i, :j]
        blob = (rows - (top + i // 3)) ** 2 / (i / 8) ** 2 + (cols - centre) ** 2 / (j / 8) ** 2 <= 1
        for s in signal_slices:
            cube[blob, s] += 150
    return np.clip(cube, 0, 255).astype(np.uint8)


def write_mil_dataset(root: Path, class_names: list[str], splits: dict = SPLITS, shape=(40, 48, 6),
                      seed: int = 0) -> tuple[str, dict]:
    """Cubes as NIfTI under `root` and `root/datalist.json` (with "class_names"); returns the datalist path and
    {file: signal slices} (which B-scans carry the class). The signal slices differ between cubes."""
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    datalist, signal = {"class_names": list(class_names)}, {}
    n = 0
    for split, per_class in splits.items():
        (root / split).mkdir(exist_ok=True)
        entries = []
        for label in range(len(class_names)):
            for c in range(per_class):
                k = shape[2] + (n % 2)  # 6 or 7 B-scans: cubes differ in length
                slices = tuple(sorted(rng.choice(k, size=2, replace=False).tolist()))
                cube = make_cube(label, len(class_names), (*shape[:2], k), slices, seed=seed + n)
                rel = f"{split}/{class_names[label]}_{c}.nii.gz"
                nib.save(nib.Nifti1Image(cube, np.diag([0.0039, 0.0117, 0.12, 1.0])), str(root / rel))
                entries.append({"image": rel, "label": class_names[label]})
                signal[str(root / rel)] = slices if label > 0 else ()
                n += 1
        datalist[split] = entries
    path = root / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1))
    return str(path), signal


def make_data(bundle: Path, root: Path) -> dict:
    train = json.loads((bundle / "configs" / "train.json").read_text())
    datalist, _ = write_mil_dataset(root / "data", train["default_class_names"])
    return {"train": {"dataset_dir": str(root / "data"), "datalist": datalist, **OVERRIDES},
            "infer_dir": str(root / "data" / "test"), "trained": "model.pt", "infer": {"slice_batch_size": 16, "batch_size": 1}}


def export_shapes(channels: int) -> list[tuple[int, ...]]:
    """The export size, then another batch, B-scan size and number of B-scans."""
    return [(1, channels, 32, 32, 5), (2, channels, 48, 32, 3)]
