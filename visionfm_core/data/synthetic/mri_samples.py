"""Small synthetic orbital MRI phantoms with label maps, written as NIfTI, for tests and the demo.

Each phantom is a T1-like volume of one orbit: the globe (a sphere, dark vitreous with a bright rim), the optic nerve
(a cylinder running back from the globe), four extraocular muscles (thin rods around the nerve) and the orbital fat
(the bright cone between them). Labels: 0 background, 1 globe, 2 optic_nerve, 3 extraocular_muscles, 4 orbital_fat.
The affine is not the identity (anisotropic spacing, axes flipped and swapped, an offset), so orientation and
spacing handling are exercised. Not anatomy: shapes only, for correctness tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["ORBIT_CLASSES", "make_orbit_phantom", "write_orbit_phantom", "write_orbit_dataset", "PHANTOM_AFFINE"]

ORBIT_CLASSES = ["background", "globe", "optic_nerve", "extraocular_muscles", "orbital_fat"]
# voxel (i, j, k) -> RAS mm: i runs left (-x), j runs up (+z), k runs anterior (+y) -> axcodes "LSA", spacing
# 0.9 x 0.9 x 1.2 mm, and an offset; Orientationd("RAS") and Spacingd have real work to do
PHANTOM_AFFINE = np.array([[-0.9, 0.0, 0.0, 30.0],
                           [0.0, 0.0, 1.2, -20.0],
                           [0.0, 0.9, 0.0, -15.0],
                           [0.0, 0.0, 0.0, 1.0]])
_INTENSITY = {0: 0.05, 1: 0.2, 2: 0.55, 3: 0.4, 4: 0.9}  # T1-like: fat bright, vitreous dark


def make_orbit_phantom(size: int | tuple[int, int, int] = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in [0, 1], labels uint8), both of shape `size`; k (the last axis) runs anterior."""
    shape = (size,) * 3 if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    ni, nj, nk = shape
    ci, cj = ni / 2 + rng.uniform(-1.5, 1.5), nj / 2 + rng.uniform(-1.5, 1.5)  # the orbit's axis (along k)
    globe_r = 0.22 * min(ni, nj) * rng.uniform(0.9, 1.1)
    globe_k = nk - globe_r - 0.08 * nk  # the globe at the front
    apex_k = 0.08 * nk  # the orbital apex at the back
    r = np.sqrt((i - ci) ** 2 + (j - cj) ** 2)  # distance from the orbit's axis
    t = np.clip((k - apex_k) / max(globe_k - apex_k, 1.0), 0.0, 1.0)  # 0 at the apex, 1 at the globe's centre
    labels = np.zeros(shape, np.uint8)
    # fat: the cone from the apex to the globe, widening forwards
    cone = (k >= apex_k) & (k <= globe_k) & (r <= 0.12 * min(ni, nj) + t * 1.2 * globe_r)
    labels[cone] = 4
    # four muscles: rods at 90-degree steps around the nerve, following the cone's wall
    wall = 0.06 * min(ni, nj) + t * 0.9 * globe_r
    rod = max(1.2, 0.045 * min(ni, nj))
    for angle in (0.0, 0.5 * np.pi, np.pi, 1.5 * np.pi):
        mi, mj = ci + wall * np.cos(angle), cj + wall * np.sin(angle)
        labels[(np.sqrt((i - mi) ** 2 + (j - mj) ** 2) <= rod) & (k >= apex_k) & (k <= globe_k)] = 3
    # the optic nerve: a cylinder on the axis from the apex into the back of the globe
    labels[(r <= max(1.5, 0.06 * min(ni, nj))) & (k >= apex_k) & (k <= globe_k)] = 2
    labels[np.sqrt((i - ci) ** 2 + (j - cj) ** 2 + (k - globe_k) ** 2) <= globe_r] = 1
    image = np.vectorize(_INTENSITY.get, otypes=[np.float32])(labels)
    shell = (labels == 1) & (np.sqrt((i - ci) ** 2 + (j - cj) ** 2 + (k - globe_k) ** 2) > globe_r - 1.2)
    image[shell] = 0.6  # sclera / lens rim brighter than the vitreous
    image = image + rng.normal(0.0, 0.03, shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32), labels


def write_orbit_phantom(path_image: str | os.PathLike, path_label: str | os.PathLike | None = None,
                        size: int | tuple[int, int, int] = 40, seed: int = 0, scale: float = 1000.0) -> None:
    """One phantom as NIfTI (image scaled to MRI-like values 0..`scale`, int16; labels uint8), `PHANTOM_AFFINE`."""
    import nibabel as nib

    image, labels = make_orbit_phantom(size, seed)
    img = nib.Nifti1Image((image * scale).astype(np.int16), PHANTOM_AFFINE)
    img.set_qform(PHANTOM_AFFINE, code=1)
    img.set_sform(PHANTOM_AFFINE, code=1)
    nib.save(img, os.fspath(path_image))
    if path_label is not None:
        lab = nib.Nifti1Image(labels, PHANTOM_AFFINE)
        lab.set_qform(PHANTOM_AFFINE, code=1)
        lab.set_sform(PHANTOM_AFFINE, code=1)
        nib.save(lab, os.fspath(path_label))


def write_orbit_dataset(root: str | os.PathLike, n_train: int = 2, n_val: int = 1, n_test: int = 1,
                        size: int | tuple[int, int, int] = 40) -> str:
    """`root/imagesTr|labelsTr/orbit_<n>.nii.gz` and `root/datalist.json` with training / validation / test lists of
    {"image", "label"} (paths relative to root); test images are also under `root/imagesTs/` (unlabelled, for
    inference). Returns the datalist path."""
    root = Path(root)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    counts = {"training": n_train, "validation": n_val, "test": n_test}
    n = 0
    for split, count in counts.items():
        for _ in range(count):
            name = f"orbit_{n:03d}.nii.gz"
            write_orbit_phantom(root / "imagesTr" / name, root / "labelsTr" / name, size=size, seed=n)
            if split == "test":
                write_orbit_phantom(root / "imagesTs" / name, None, size=size, seed=n)
            splits[split].append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
            n += 1
    out = root / "datalist.json"
    out.write_text(json.dumps(splits, indent=1) + "\n")
    return str(out)
