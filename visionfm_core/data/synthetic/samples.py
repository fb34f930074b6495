"""Built-in demo data (no downloads): a real fundus photo and synthetic diabetic-retinopathy-like phantoms.

The phantoms are not medically realistic; they only need to look roughly like a colour fundus photograph and
carry a learnable signal (the number of lesions grows with the grade), so demos and tests can train end to end.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["real_fundus_photo", "make_fundus_phantom", "write_demo_dataset"]

# Lesions per DR grade 0..4 (before a small random extra): red dots (microaneurysms / haemorrhages), exudates.
# Counts and sizes (radius 2-4.5 px at 224) are chosen so that the grade survives the demo's resize to 64 px: with
# the former 1-2.5 px dots and fewer lesions, a linear probe on a ViT-Ti embedding stayed at chance there.
_RED_DOTS = (0, 6, 14, 26, 40)
_EXUDATES = (0, 0, 5, 10, 18)


def real_fundus_photo() -> np.ndarray:
    """The colour fundus photograph shipped with scikit-image, as (3, H, W) float32 in [0, 1]."""
    from skimage.data import retina

    return np.ascontiguousarray(retina().transpose(2, 0, 1), dtype=np.float32) / 255.0


def make_fundus_phantom(grade: int, size: int = 224, seed: int = 0, lesion_scale: float = 1.0) -> np.ndarray:
    """A synthetic colour fundus image for DR grade 0..4, as (size, size, 3) uint8. Deterministic for a seed.

    Dark background, orange-red retina disc, bright optic disc, branching dark-red vessels, and red dots /
    yellow exudates whose number increases with ``grade`` (none at grade 0). ``lesion_scale`` multiplies the
    lesions' radii (1: radius 2-4.5 px at 224 px).
    """
    from skimage.draw import disk
    from skimage.filters import gaussian

    grade = int(grade)
    if not 0 <= grade < len(_RED_DOTS):
        raise ValueError(f"grade must be in 0..{len(_RED_DOTS) - 1}, got {grade}.")
    rng = np.random.default_rng(seed)
    s = size / 224.0  # feature sizes below are tuned for 224 px and scaled with the image
    centre = np.array([size / 2, size / 2]) + rng.normal(0, 3 * s, 2)
    radius = size * rng.uniform(0.43, 0.47)

    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = np.hypot(yy - centre[0], xx - centre[1]) / radius
    inside = r <= 1.0

    # Retina: orange-red, darker towards the rim (vignetting), with smooth low-frequency mottling.
    base = np.array([205, 95, 40], np.float32) * rng.uniform(0.9, 1.1, 3)
    shade = np.clip(1.0 - 0.45 * r**2, 0, 1)[..., None]
    mottle = gaussian(rng.normal(0, 1, (size, size)).astype(np.float32), sigma=8 * s)[..., None]
    img = base * shade * (1 + 2.0 * mottle)

    # Optic disc left or right of centre (left or right eye), about halfway to the rim.
    side = rng.choice([-1, 1])
    disc = centre + np.array([rng.normal(0, 4 * s), side * 0.55 * radius])
    disc_r = 0.16 * radius
    d = np.hypot(yy - disc[0], xx - disc[1]) / disc_r
    glow = np.exp(-(d**4))[..., None]  # flat bright disc with a soft rim
    img = img * (1 - glow) + np.array([250, 215, 140], np.float32) * glow

    # Vessels: four main arcades leaving the disc, each branching a few times. They are traced as centre-line points
    # with a width, then rasterised in one go: a pixel is vessel if it is within the width of its nearest point.
    points: list[tuple[float, float, float]] = []
    for angle in (0.35, 0.85, -0.35, -0.85):
        direction = np.pi * (0.5 + 0.5 * side) + angle * np.pi / 2  # head away from the disc, across the retina
        _trace_vessel(points, rng, disc.copy(), direction, 2.6 * s, 0.9 * radius, depth=0, step=1.5 * s)
    vessel = vessel_mask(points, size)
    img[vessel] = np.array([125, 25, 15], np.float32)

    # Lesions, away from the optic disc.
    def spots(count: int, colour, r_lo: float, r_hi: float) -> None:
        placed = 0
        while placed < count:
            p = centre + rng.uniform(-radius, radius, 2) * 0.85
            if np.hypot(*(p - centre)) > 0.85 * radius or np.hypot(*(p - disc)) < 1.6 * disc_r:
                continue
            rr, cc = disk(tuple(p), rng.uniform(r_lo, r_hi) * s, shape=(size, size))
            img[rr, cc] = colour * rng.uniform(0.9, 1.1)
            placed += 1

    extra = int(rng.integers(0, 3)) if grade > 0 else 0
    lesion = lesion_scale
    spots(_RED_DOTS[grade] + extra, np.array([110, 15, 10], np.float32), 2.0 * lesion, 4.0 * lesion)
    spots(_EXUDATES[grade] + (extra if grade >= 2 else 0), np.array([235, 215, 90], np.float32), 2.5 * lesion,
          4.5 * lesion)

    # Camera-like softness and sensor noise, then the black surround.
    img = gaussian(img, sigma=0.6 * s, channel_axis=-1, preserve_range=True)
    img = img + rng.normal(0, 3, img.shape).astype(np.float32)
    img = img * inside[..., None] + np.array([4, 2, 1], np.float32) * ~inside[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def vessel_mask(points, size: int) -> np.ndarray:
    """(size, size) bool mask of the vessels traced as (row, col, half-width) points: every pixel within the
    half-width of its nearest traced point."""
    from scipy.ndimage import distance_transform_edt

    pts = np.array(points)
    rows, cols = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
    ok = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    width_at = np.zeros((size, size))
    np.maximum.at(width_at, (rows[ok], cols[ok]), pts[ok, 2])
    dist, (iy, ix) = distance_transform_edt(width_at == 0, return_indices=True)
    return dist <= width_at[iy, ix]


def _trace_vessel(points, rng, pos, direction, width, length, depth, step) -> None:
    """Append (row, col, width) points of one wiggly vessel getting thinner, spawning up to two branches."""
    steps = max(int(length / step), 1)
    n_branches = 2 if depth < 2 and steps > 5 else 0
    branch_at = set(rng.choice(np.arange(steps // 5, steps), size=n_branches, replace=False).tolist())
    for i in range(steps):
        direction += rng.normal(0, 0.06)
        pos += step * np.array([np.sin(direction), np.cos(direction)])
        w = max(width * (1 - 0.6 * i / steps), 0.8)
        points.append((pos[0], pos[1], w))
        if i in branch_at:
            fork = direction + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9)
            _trace_vessel(points, rng, pos.copy(), fork, 0.7 * w, 0.5 * length * (1 - i / steps), depth + 1, step)


def write_demo_dataset(
    root: str | os.PathLike, per_class: int = 8, size: int = 224, seed: int = 0, num_classes: int = 5,
    lesion_scale: float = 1.0,
) -> str:
    """Write phantom PNGs in the RETFound layout ``root/{train,val,test}/<grade>/`` plus ``root/datalist.json``.

    ``train`` gets ``per_class`` images per grade, ``val`` and ``test`` ``max(2, per_class // 2)``. Class folders
    are ``"0"`` .. ``str(num_classes - 1)`` (grades 0..4 at most). ``lesion_scale``: see `make_fundus_phantom` (the
    demo draws 2.5x larger lesions, whose grade iBOT can learn as a texture). Returns the datalist path.
    """
    from PIL import Image

    from visionfm_core.data.datalist import retfound_to_datalist

    if not 2 <= num_classes <= len(_RED_DOTS):
        raise ValueError(f"num_classes must be in 2..{len(_RED_DOTS)}, got {num_classes}.")
    counts = {"train": per_class, "val": max(2, per_class // 2), "test": max(2, per_class // 2)}
    for split_index, (split, n) in enumerate(counts.items()):
        for grade in range(num_classes):
            folder = os.path.join(os.fspath(root), split, str(grade))
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                # A distinct, reproducible seed for every image, derived from (seed, split, grade, index).
                image_seed = int(np.random.SeedSequence([seed, split_index, grade, i]).generate_state(1)[0])
                phantom = make_fundus_phantom(grade, size=size, seed=image_seed, lesion_scale=lesion_scale)
                Image.fromarray(phantom).save(
                    os.path.join(folder, f"{split}_g{grade}_{i:03d}.png"), compress_level=1  # fast; demo data only
                )
    out = os.path.join(os.fspath(root), "datalist.json")
    retfound_to_datalist(root, out=out)
    return out
