"""Built-in synthetic data for the dense tasks (no downloads): fundus-like phantoms with a vessel tree and its exact
mask, and phantoms with landmarks drawn at known sub-pixel positions (fundus: optic disc and fovea; UBM: angle
points). Like the classification phantoms, they only need to look roughly right and carry a learnable signal.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from visionfm_core.data.synthetic.phantoms import make_phantom
from visionfm_core.data.synthetic.samples import _trace_vessel, vessel_mask
from visionfm_core.engine.io import atomic_write_text
from visionfm_core.modalities import get_modality

__all__ = ["make_vessel_phantom", "write_vessel_dataset", "make_landmark_phantom", "write_landmark_dataset",
           "LANDMARK_NAMES"]

# Default landmark names per modality (the UBM task marks 3 anterior-chamber-angle points).
LANDMARK_NAMES = {"Fundus": ("optic_disc", "fovea"), "UBM": ("angle_point_1", "angle_point_2", "angle_point_3")}


def _retina(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Orange-red retina disc on black: (image float32 (H, W, 3) 0-255, FOV bool, centre (row, col), radius)."""
    from skimage.filters import gaussian

    centre = np.array([size / 2, size / 2]) + rng.normal(0, size / 80, 2)
    radius = size * rng.uniform(0.43, 0.47)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = np.hypot(yy - centre[0], xx - centre[1]) / radius
    base = np.array([205, 95, 40], np.float32) * rng.uniform(0.9, 1.1, 3)
    mottle = gaussian(rng.normal(0, 1, (size, size)).astype(np.float32), sigma=size / 28)[..., None]
    img = base * np.clip(1.0 - 0.45 * r**2, 0, 1)[..., None] * (1 + 1.5 * mottle)
    return img, r <= 1.0, centre, radius


def _blob(size: int, x: float, y: float, radius: float, sharpness: float = 4.0) -> np.ndarray:
    """A flat-topped round blob centred at the sub-pixel point (x, y) (pixel centres at integer coordinates)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    return np.exp(-((np.hypot(xx - x, yy - y) / radius) ** sharpness))


def _vessel_tree(size: int, rng: np.random.Generator, start: np.ndarray, side: int, radius: float) -> np.ndarray:
    """Boolean mask of four branching arcades leaving ``start`` (row, col), traced like the DR phantoms' vessels."""

    s = size / 224.0
    points: list[tuple[float, float, float]] = []
    for angle in (0.35, 0.85, -0.35, -0.85):
        direction = np.pi * (0.5 + 0.5 * side) + angle * np.pi / 2
        # half-width (px) at least 1 and steps of at least 0.7 px: the tree stays visible and connected at 64 px
        _trace_vessel(points, rng, start.astype(np.float64).copy(), direction, max(1.6 * s, 1.0), 0.9 * radius,
                      depth=0, step=max(1.5 * s, 0.7))
    return vessel_mask(points, size)


def _finish_photo(img: np.ndarray, fov: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    from skimage.filters import gaussian

    img = gaussian(img, sigma=max(0.6 * size / 224, 0.3), channel_axis=-1, preserve_range=True)
    img = img + rng.normal(0, 3, img.shape)
    img = img * fov[..., None] + np.array([4, 2, 1], np.float32) * ~fov[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def make_vessel_phantom(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fundus-like photo with a branching vessel tree: (image (H, W, 3) uint8, vessels bool, FOV bool).

    The vessel mask is exactly what was drawn, cut to the FOV (as in DRIVE-style annotations).
    """
    rng = np.random.default_rng(seed)
    img, fov, centre, radius = _retina(size, rng)
    side = int(rng.choice([-1, 1]))
    disc = centre + np.array([rng.normal(0, size / 60), side * 0.55 * radius])
    glow = _blob(size, disc[1], disc[0], 0.16 * radius)[..., None]
    img = img * (1 - glow) + np.array([250, 215, 140], np.float32) * glow
    vessels = _vessel_tree(size, rng, disc, side, radius) & fov
    img[vessels] = np.array([120, 25, 15], np.float32) * rng.uniform(0.9, 1.1)
    return _finish_photo(img, fov, rng, size), vessels, fov


def _split_counts(n: int) -> dict[str, int]:
    if n < 3:
        raise ValueError(f"n must be >= 3 (one image each for training, validation and test), got {n}.")
    n_val = n_test = max(1, round(0.2 * n))
    return {"training": n - n_val - n_test, "validation": n_val, "test": n_test}


def _png(path: str, array: np.ndarray) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def write_vessel_dataset(root: str | os.PathLike, n: int = 6, size: int = 64, seed: int = 0) -> str:
    """Write ``n`` vessel phantoms: ``images/vessel_NNN.png``, ``labels/vessel_NNN.png`` (0/255) and
    ``fov/vessel_NNN.png`` (0/255) under ``root``, and ``root/datalist.json`` (training/validation/test, about
    60/20/20 %, items ``{"image", "label", "fov"}`` relative to the datalist). Returns the datalist path."""
    root = os.fspath(root)
    datalist: dict[str, list] = {}
    index = 0
    for split, count in _split_counts(n).items():
        datalist[split] = []
        for _ in range(count):
            image_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
            photo, vessels, fov = make_vessel_phantom(size, image_seed)
            item = {"image": f"images/vessel_{index:03d}.png", "label": f"labels/vessel_{index:03d}.png",
                    "fov": f"fov/vessel_{index:03d}.png"}
            _png(os.path.join(root, item["image"]), photo)
            _png(os.path.join(root, item["label"]), vessels.astype(np.uint8) * 255)
            _png(os.path.join(root, item["fov"]), fov.astype(np.uint8) * 255)
            datalist[split].append(item)
            index += 1
    out = os.path.join(root, "datalist.json")
    atomic_write_text(out, json.dumps(datalist, indent=2) + "\n")
    return out


def make_landmark_phantom(size: int = 64, modality: str = "Fundus", num_landmarks: int | None = None,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A phantom with landmarks at known sub-pixel positions: (image (H, W, 3) uint8, points (L, 2) float (x, y)).

    Fundus: a bright optic disc (landmark 0, its centre) left or right of centre and a dark fovea (landmark 1)
    near the centre, plus vessels leaving the disc. UBM: a grey speckled ultrasound-like image with
    ``num_landmarks`` (default 3) small bright marks, landmark k in the k-th vertical band from the left.
    """
    name = get_modality(modality).name
    rng = np.random.default_rng(seed)
    if name == "Fundus":
        if num_landmarks not in (None, 2):
            raise ValueError(f"Fundus landmark phantoms have 2 landmarks (optic disc, fovea), not {num_landmarks}.")
        img, fov, centre, radius = _retina(size, rng)
        side = int(rng.choice([-1, 1]))
        disc = (centre[1] + side * 0.5 * radius + rng.uniform(-0.05, 0.05) * radius,
                centre[0] + rng.uniform(-0.1, 0.1) * radius)  # (x, y)
        fovea = (centre[1] - side * 0.1 * radius + rng.uniform(-0.08, 0.08) * radius,
                 centre[0] + rng.uniform(-0.08, 0.08) * radius)
        vessels = _vessel_tree(size, rng, np.array([disc[1], disc[0]]), side, radius) & fov
        img[vessels] = np.array([120, 25, 15], np.float32)
        dip = _blob(size, *fovea, 0.09 * radius, sharpness=2.0)[..., None]
        img = img * (1 - 0.8 * dip)
        glow = _blob(size, *disc, 0.15 * radius)[..., None]
        img = img * (1 - glow) + np.array([250, 215, 140], np.float32) * glow
        return _finish_photo(img, fov, rng, size), np.array([disc, fovea], dtype=np.float64)
    if name == "UBM":
        count = 3 if num_landmarks is None else int(num_landmarks)
        if count < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}.")
        img = make_phantom("UBM", size, seed).astype(np.float64)
        points = []
        for k in range(count):
            x = (k + rng.uniform(0.3, 0.7)) * size / count - 0.5
            y = rng.uniform(0.3, 0.7) * size - 0.5
            img = np.maximum(img, 255 * _blob(size, x, y, max(size / 40, 1.2), sharpness=2.0)[..., None])
            points.append((x, y))
        return np.clip(img, 0, 255).astype(np.uint8), np.array(points, dtype=np.float64)
    raise ValueError(f"Landmark phantoms exist for Fundus and UBM, not {name}.")


def write_landmark_dataset(root: str | os.PathLike, n: int = 6, size: int = 64, modality: str = "Fundus",
                           names: Sequence[str] | None = None, seed: int = 0) -> str:
    """Write ``n`` landmark phantoms ``root/images/landmark_NNN.png`` and ``root/datalist.json`` (training/
    validation/test, items ``{"image", "landmarks": [[x, y], ...]}`` in pixels, plus ``"landmark_names"``).

    ``names`` defaults to :data:`LANDMARK_NAMES` of the modality (Fundus: optic_disc, fovea; UBM: 3 angle points);
    for UBM their number sets how many points are drawn. Returns the datalist path.
    """
    root = os.fspath(root)
    modality = get_modality(modality).name
    if modality not in LANDMARK_NAMES:
        raise ValueError(f"Landmark phantoms exist for {', '.join(LANDMARK_NAMES)}, not {modality}.")
    names = list(names) if names is not None else list(LANDMARK_NAMES[modality])
    datalist: dict[str, list] = {}
    index = 0
    for split, count in _split_counts(n).items():
        datalist[split] = []
        for _ in range(count):
            image_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
            photo, points = make_landmark_phantom(size, modality, len(names), image_seed)
            image = f"images/landmark_{index:03d}.png"
            _png(os.path.join(root, image), photo)
            datalist[split].append({"image": image, "landmarks": np.round(points, 4).tolist()})
            index += 1
    datalist["landmark_names"] = names
    out = os.path.join(root, "datalist.json")
    atomic_write_text(out, json.dumps(datalist, indent=2) + "\n")
    return out
