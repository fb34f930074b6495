"""Patch masks for iBOT's masked image modelling.

Each global crop gets a boolean grid over its patches (True = replaced by the student's mask token).
VisionFM masks a crop with ratio 0 or U(0.1, 0.5), with equal probability, using BEiT-style
rectangular blocks: rectangles are easier to predict than scattered patches only when the model
understands the surrounding anatomy, which is what the patch loss is meant to teach.

Randomness comes from a `numpy.random.Generator` passed in (or one seeded at construction), so a
mask sequence can be replayed exactly, e.g. after resuming a run.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from visionfm_core.ssl.recipe import DEFAULT_RECIPE

__all__ = ["BlockMaskGenerator", "random_mask", "as_generator"]

SeedLike = Union[np.random.Generator, int, None]


def as_generator(seed: SeedLike) -> np.random.Generator:
    """A numpy Generator from a Generator (returned as is), an int seed or None (fresh entropy)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _grid(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"mask grid must be at least 1x1 patches, got {h}x{w}")
    return int(h), int(w)


class BlockMaskGenerator:
    """BEiT-style block masks on an (h, w) patch grid.

    Args:
        grid: patches per side, or (h, w); 14 for a 224 px crop with 16 px patches.
        ratio_range: a masked crop hides U(ratio_range) of its patches (at most; see below).
        prob_no_mask: probability that a crop is not masked at all (ratio 0).
        min_num_patches: smallest block, in patches.
        aspect_range: block aspect ratio (h / w) is log-uniform in this range.
        max_attempts: tries to place one block before giving up on it.
        seed: a numpy Generator or an int seed used when a call gets no generator.

    Blocks are added until the target count is reached; a block is only accepted when it adds at
    least one new patch and does not overshoot the target, so the masked count never exceeds
    round(ratio * h * w) and can fall slightly short when no block fits any more (as in BEiT).
    """

    def __init__(
        self,
        grid: int | tuple[int, int] = DEFAULT_RECIPE.image_size // DEFAULT_RECIPE.patch_size,
        ratio_range: tuple[float, float] = DEFAULT_RECIPE.mask_ratio_range,
        prob_no_mask: float = DEFAULT_RECIPE.prob_no_mask,
        min_num_patches: int = DEFAULT_RECIPE.mask_min_num_patches,
        aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
        max_attempts: int = 10,
        seed: SeedLike = None,
    ):
        self.height, self.width = _grid(grid)
        lo, hi = ratio_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"ratio_range must satisfy 0 <= low <= high <= 1, got {ratio_range}")
        if not 0.0 <= prob_no_mask <= 1.0:
            raise ValueError(f"prob_no_mask must be in [0, 1], got {prob_no_mask}")
        if not 0 < aspect_range[0] <= aspect_range[1]:
            raise ValueError(f"aspect_range must be positive and ordered, got {aspect_range}")
        self.ratio_range = (float(lo), float(hi))
        self.prob_no_mask = float(prob_no_mask)
        self.min_num_patches = int(min_num_patches)
        self.log_aspect = (math.log(aspect_range[0]), math.log(aspect_range[1]))
        self.max_attempts = int(max_attempts)
        self._rng = as_generator(seed)

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def sample_ratio(self, generator: np.random.Generator | None = None) -> float:
        """0 with probability `prob_no_mask`, else U(ratio_range)."""
        rng = self._rng if generator is None else generator
        if rng.random() < self.prob_no_mask:
            return 0.0
        return float(rng.uniform(*self.ratio_range))

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Try to mask one rectangle adding 1..budget new patches; return how many it added."""
        for _ in range(self.max_attempts):
            # between the minimum block and the budget (in [budget, min] when the budget is the smaller)
            area = self.min_num_patches + (budget - self.min_num_patches) * rng.random()
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if not (1 <= h <= self.height and 1 <= w <= self.width):
                continue
            top = int(rng.integers(0, self.height - h + 1))
            left = int(rng.integers(0, self.width - w + 1))
            block = mask[top : top + h, left : left + w]
            added = h * w - int(block.sum())
            if 0 < added <= budget:
                block[...] = True
                return added
        return 0

    def __call__(self, generator: np.random.Generator | None = None, ratio: float | None = None) -> torch.Tensor:
        """One (h, w) bool mask; `ratio` overrides the random ratio draw."""
        rng = self._rng if generator is None else generator
        if ratio is None:
            ratio = self.sample_ratio(rng)
        target = int(round(ratio * self.num_patches))
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < target:
            added = self._add_block(mask, target - count, rng)
            if added == 0:  # nothing fits any more: stop short rather than loop forever
                break
            count += added
        return torch.from_numpy(mask)

    def batch(self, n: int, generator: np.random.Generator | None = None) -> torch.Tensor:
        """`n` independent masks stacked as (n, h, w)."""
        rng = self._rng if generator is None else generator
        if n == 0:
            return torch.zeros(0, self.height, self.width, dtype=torch.bool)
        return torch.stack([self(rng) for _ in range(n)])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid=({self.height}, {self.width}), ratio_range={self.ratio_range}, "
            f"prob_no_mask={self.prob_no_mask}, min_num_patches={self.min_num_patches})"
        )


def random_mask(grid: int | tuple[int, int], ratio: float, generator: SeedLike = None) -> torch.Tensor:
    """An (h, w) bool mask with exactly round(ratio * h * w) patches chosen uniformly at random.

    The scattered alternative to blocks (iBOT's 'rand' shape); useful as a baseline and in tests.
    """
    h, w = _grid(grid)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    rng = as_generator(generator)
    n = h * w
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=int(round(ratio * n)), replace=False)] = True
    return torch.from_numpy(mask.reshape(h, w))
