"""Synthetic OCT cubes with known retinal layers and fluid, for tests and the demo (no real OCT cube installs
offline).

A cube is (I, J, K) = (axial depth, lateral, B-scans), uint8, saved as NIfTI with a non-trivial affine (axial
0.0039 mm, lateral 0.0117 mm, 0.12 mm between B-scans by default; i points posterior, j right, k inferior), with a
label map of the same geometry. Classes: 0 background (vitreous, choroid and below), the 7 layers of the Duke DME
dataset (Chiu et al. 2015) and fluid:
1 RNFL, 2 GCL+IPL, 3 INL, 4 OPL, 5 ONL+ISM, 6 ISE, 7 OS+RPE, 8 fluid.
Layer boundaries are smooth surfaces varying across J and K (a foveal pit where the inner layers thin out, a tilt
and gentle waves); reflectivity differs per layer, with multiplicative speckle. Fluid pockets are dark
ellipsoids in the INL and ONL (the cysts of diabetic macular oedema).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["OCT_LAYER_CLASSES", "OCT_SPACING_MM", "oct_affine", "make_oct_cube", "write_oct_cube",
           "write_oct_dataset"]

OCT_LAYER_CLASSES = ["background", "RNFL", "GCL+IPL", "INL", "OPL", "ONL+ISM", "ISE", "OS+RPE", "fluid"]
OCT_SPACING_MM = (0.0039, 0.0117, 0.12)
# typical macular thicknesses in um (share of the retina each layer takes) and reflectivity (0-255)
_THICKNESS_UM = np.array([30.0, 70.0, 35.0, 30.0, 90.0, 20.0, 45.0])
_REFLECTIVITY = np.array([200.0, 130.0, 60.0, 150.0, 55.0, 225.0, 235.0])
_VITREOUS, _CHOROID, _FLUID = 12.0, 110.0, 14.0


def oct_affine(spacing=OCT_SPACING_MM, origin=(-3.0, 2.0, 3.0)) -> np.ndarray:
    """RAS affine of a cube: i (depth) goes posterior (-A), j (lateral) right (+R), k (B-scans) inferior (-S)."""
    si, sj, sk = spacing
    affine = np.array([[0.0, sj, 0.0, origin[0]], [-si, 0.0, 0.0, origin[1]], [0.0, 0.0, -sk, origin[2]],
                       [0.0, 0.0, 0.0, 1.0]])
    return affine


def make_oct_cube(shape=(64, 64, 8), seed: int = 0, fluid: bool = False, retina_fraction: float = 0.55,
                  speckle: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(volume uint8 (I, J, K), labels uint8 (I, J, K)) of a macular cube.

    The retina fills about `retina_fraction` of the depth, whatever `shape`, so even tiny test cubes show every
    layer; layer shares follow typical thicknesses. `speckle` is the shape of the gamma-distributed multiplicative
    noise (smaller: noisier). With `fluid`, 1-3 dark pockets (class 8) sit in the INL or ONL.
    """
    rng = np.random.default_rng(seed)
    depth, width, n_scans = shape
    u = (np.arange(width) + 0.5) / width - 0.5                      # lateral, -0.5..0.5
    v = (np.arange(n_scans) + 0.5) / max(n_scans, 1) - 0.5          # across B-scans
    uu, vv = np.meshgrid(u, v, indexing="ij")                        # (J, K)
    fovea = np.exp(-((uu - rng.uniform(-0.05, 0.05)) ** 2 + (vv - rng.uniform(-0.05, 0.05)) ** 2) / 0.02)
    phase = rng.uniform(0, 2 * np.pi, 3)
    top = depth * (0.18 + 0.04 * np.sin(2 * np.pi * uu + phase[0]) + 0.03 * vv * np.cos(phase[1])
                   + 0.02 * np.sin(3 * np.pi * vv + phase[2]))
    share = _THICKNESS_UM / _THICKNESS_UM.sum() * retina_fraction * depth
    thick = np.repeat(share[:, None, None], width, 1).repeat(n_scans, 2)  # (7, J, K)
    thick[:4] *= (1 - 0.8 * fovea)[None]                             # inner layers thin out in the foveal pit
    thick[4] *= 1 + 0.3 * fovea                                      # the ONL thickens under it
    thick *= 1 + 0.08 * np.sin(4 * np.pi * uu + phase[1])[None]
    bounds = top[None] + np.concatenate([np.zeros((1, width, n_scans)), np.cumsum(thick, 0)])  # (8, J, K)

    z = np.arange(depth)[:, None, None] + 0.5                        # voxel centres along I
    labels = np.zeros(shape, np.uint8)
    for c in range(7):
        labels[(z >= bounds[c][None]) & (z < bounds[c + 1][None])] = c + 1
    base = np.full(shape, _VITREOUS)
    base[z >= bounds[-1][None]] = _CHOROID * np.exp(-(z - bounds[-1][None]) / (0.15 * depth))[z >= bounds[-1][None]]
    for c in range(7):
        base[labels == c + 1] = _REFLECTIVITY[c]

    if fluid:
        jj, kk = np.meshgrid(np.arange(width), np.arange(n_scans), indexing="ij")
        for _ in range(rng.integers(1, 4)):
            layer = rng.choice([2, 4])                                 # INL or ONL (0-based)
            j0 = int(rng.integers(width // 4, 3 * width // 4))
            k0 = int(rng.integers(0, n_scans))
            centre = 0.5 * (bounds[layer][j0, k0] + bounds[layer + 1][j0, k0])
            ri = max(1.0, 0.7 * thick[layer][j0, k0])
            rj = max(1.5, width * rng.uniform(0.04, 0.08))
            rk = rng.uniform(0.6, 1.6)                                 # B-scans are far apart: 1-3 scans deep
            inside = ((z - centre) / ri) ** 2 + ((jj - j0) / rj)[None] ** 2 + ((kk - k0) / rk)[None] ** 2 <= 1
            labels[inside] = 8
            base[inside] = _FLUID

    noisy = base * rng.gamma(speckle, 1.0 / speckle, shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8), labels


def write_oct_cube(path: str | os.PathLike, array: np.ndarray, spacing=OCT_SPACING_MM) -> str:
    """Save an (I, J, K) array as NIfTI with `oct_affine(spacing)`."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), oct_affine(spacing))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return str(path)


def write_oct_dataset(root: str | os.PathLike, counts=(4, 2, 2), shape=(64, 64, 8), seed: int = 0,
                      spacing=OCT_SPACING_MM, partial: bool = False) -> str:
    """Cubes and label maps under `root/images/<split>/` and `root/labels/<split>/` plus `root/datalist.json`
    ({"training", "validation", "test"} entries {"image", "label"} with relative paths, and "class_names").
    Every other cube has fluid. `partial`: annotated as Duke DME is, every other B-scan only and over the central
    lateral half of it; the other voxels are the ignore value (`visionfm_core.tasks.oct_layers.IGNORE_LABEL`).
    Returns the datalist path."""
    root = Path(root)
    datalist: dict = {"class_names": OCT_LAYER_CLASSES}
    n = 0
    for split, count in zip(("training", "validation", "test"), counts):
        entries = []
        for i in range(count):
            volume, labels = make_oct_cube(shape, seed=seed + n, fluid=n % 2 == 1)
            if partial:
                from visionfm_core.tasks.oct_layers.annotations import IGNORE_LABEL

                width = labels.shape[1]
                annotated = np.zeros(labels.shape, bool)
                annotated[:, width // 4: width - width // 4, 1::2] = True
                labels = np.where(annotated, labels, IGNORE_LABEL).astype(labels.dtype)
            name = f"oct_{split}_{i:02d}"
            write_oct_cube(root / "images" / split / f"{name}.nii.gz", volume, spacing)
            write_oct_cube(root / "labels" / split / f"{name}_layers.nii.gz", labels, spacing)
            entries.append({"image": f"images/{split}/{name}.nii.gz", "label": f"labels/{split}/{name}_layers.nii.gz"})
            n += 1
        datalist[split] = entries
    path = root / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1))
    return str(path)
