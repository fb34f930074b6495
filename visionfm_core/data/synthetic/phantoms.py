"""Synthetic images of every modality, for tests and demos of pretraining (no downloads).

No real OCT, angiography, slit-lamp, ultrasound or UBM image ships with any installable package, so these are
phantoms: simple pictures with the modality's broad look (greyscale or colour, layered or vessel-like
structure, speckle). They let pipelines run end to end; they say nothing about clinical performance.
"""

from __future__ import annotations

import os

import numpy as np

from visionfm_core.data.synthetic.samples import make_fundus_phantom
from visionfm_core.modalities import get_modality

__all__ = ["make_phantom", "write_phantom_folder"]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32) / size


def _oct(size, rng):  # retinal layers: wavy bright/dark bands with speckle
    y, x = _grid(size)
    surface = 0.35 + 0.05 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 1.5) + rng.uniform()))
    depth = y - surface
    bands = np.where((depth > 0) & (depth < 0.3), 0.5 + 0.4 * np.cos(depth * rng.uniform(40, 70)) ** 2, 0.05)
    return bands * rng.gamma(4.0, 0.25, (size, size))


def _angiography(size, rng):  # bright vessels on a dark fundus, dark fovea
    from skimage.draw import line_aa

    y, x = _grid(size)
    img = 0.15 * np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) * 4)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    for _ in range(14):
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.7) * size
        rr, cc, val = line_aa(int(cy), int(cx), int(np.clip(cy + length * np.sin(angle), 0, size - 1)),
                              int(np.clip(cx + length * np.cos(angle), 0, size - 1)))
        img[rr, cc] = np.maximum(img[rr, cc], val * 0.9)
    return img + rng.normal(0, 0.02, (size, size))


def _ultrasound(size, rng, fine=False):  # fan-shaped speckle with a bright curved wall (globe / angle)
    y, x = _grid(size)
    r = np.hypot(x - 0.5, y + 0.1 if not fine else y - 0.2)
    wall = np.exp(-((r - rng.uniform(0.55, 0.75)) ** 2) / 0.0008)
    speckle = rng.rayleigh(0.08 if not fine else 0.12, (size, size))
    return 0.8 * wall + speckle * (r < 0.95)


def _mri(size, rng):  # an orbit-like axial slice: bright globe, darker lens, fat
    y, x = _grid(size)
    head = ((x - 0.5) ** 2 / 0.18 + (y - 0.55) ** 2 / 0.2) < 1
    img = 0.35 * head
    for side in (0.32, 0.68):
        globe = (x - side) ** 2 + (y - 0.3) ** 2 < rng.uniform(0.007, 0.01)
        img = np.where(globe, 0.8, img)
    return img + rng.normal(0, 0.03, (size, size))


def _anterior(size, rng, slit):  # slit-lamp / external eye: skin, white sclera, coloured iris, black pupil
    y, x = _grid(size)
    skin = np.array([0.85, 0.6, 0.5]) * rng.uniform(0.7, 1.0)
    img = np.ones((size, size, 3)) * skin
    eye = ((x - 0.5) ** 2 / 0.16 + (y - 0.5) ** 2 / 0.05) < 1
    img[eye] = [0.92, 0.9, 0.88]
    r = np.hypot(x - 0.5, y - 0.5)
    img[r < 0.16] = rng.choice([[0.35, 0.22, 0.1], [0.25, 0.4, 0.6], [0.3, 0.45, 0.25]])
    img[r < 0.06] = [0.03, 0.03, 0.03]
    if slit:  # the bright oblique slit beam
        img[np.abs((x - 0.5) - 0.3 * (y - 0.5)) < 0.01] = [1.0, 1.0, 0.95]
        img *= 0.6
    return img + rng.normal(0, 0.02, img.shape)


def make_phantom(modality: str, size: int = 224, seed: int = 0) -> np.ndarray:
    """A (size, size, 3) uint8 phantom of `modality` (grey modalities have 3 equal channels)."""
    name = get_modality(modality).name
    rng = np.random.default_rng(seed)
    if name == "Fundus":
        return make_fundus_phantom(int(rng.integers(0, 5)), size=size, seed=seed)
    makers = {"OCT": _oct, "FFA": _angiography, "Ultrasound": _ultrasound,
              "UBM": lambda s, g: _ultrasound(s, g, fine=True), "MRI": _mri,
              "SlitLamp": lambda s, g: _anterior(s, g, slit=True), "External": lambda s, g: _anterior(s, g, slit=False)}
    img = makers[name](size, rng)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_phantom_folder(root: str | os.PathLike, modality: str, count: int = 8, size: int = 64, seed: int = 0) -> str:
    """Write `count` PNG phantoms of `modality` under `root` (created) and return the folder."""
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    for i in range(count):
        Image.fromarray(make_phantom(modality, size, seed + i)).save(os.path.join(root, f"{modality.lower()}_{i:04d}.png"))
    return os.fspath(root)
