"""Block masks for iBOT: shapes, ratios, block structure, reproducibility."""

import numpy as np
import pytest
import torch

from visionfm_core.ssl.masking import BlockMaskGenerator, random_mask


def _components(mask: np.ndarray) -> int:
    """4-connected components of a 2-D bool array (small grids: a plain flood fill)."""
    seen = np.zeros_like(mask)
    count = 0
    for i, j in zip(*np.nonzero(mask)):
        if seen[i, j]:
            continue
        count += 1
        stack = [(i, j)]
        seen[i, j] = True
        while stack:
            y, x = stack.pop()
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                v, u = y + dy, x + dx
                if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    stack.append((v, u))
    return count


def test_shape_dtype_and_explicit_ratio():
    gen = BlockMaskGenerator(14, seed=0)
    m = gen()
    assert m.shape == (14, 14) and m.dtype == torch.bool
    assert gen(ratio=0.0).sum() == 0
    counts = [int(gen(ratio=0.3).sum()) for _ in range(200)]
    target = round(0.3 * 196)
    assert max(counts) <= target  # never overshoots the target
    assert np.mean(counts) > 0.9 * target  # and rarely stops much short of it


def test_ratio_distribution_matches_visionfm():
    gen = BlockMaskGenerator((14, 14), seed=1)
    ratios = np.array([float(gen().float().mean()) for _ in range(1500)])
    empty = ratios == 0
    assert abs(empty.mean() - 0.5) < 0.05  # ratio 0 with probability 0.5
    masked = ratios[~empty]
    # U(0.1, 0.5) has mean 0.3; BEiT-style blocks stop a little short when no block fits the remainder
    assert masked.min() > 0.05 and masked.max() <= 0.5 + 1e-9
    assert 0.26 < masked.mean() < 0.31


def test_masks_are_blocks_not_scattered_patches():
    gen = BlockMaskGenerator(14, seed=2)
    block_parts = [_components(gen(ratio=0.4).numpy()) for _ in range(100)]
    scattered = [_components(random_mask(14, 0.4, generator=i).numpy()) for i in range(100)]
    assert np.mean(block_parts) < 4  # a few rectangles
    assert np.mean(scattered) > 3 * np.mean(block_parts)


def test_reproducible_with_seed_or_generator():
    a = BlockMaskGenerator(14, seed=123).batch(16)
    b = BlockMaskGenerator(14, seed=123).batch(16)
    c = BlockMaskGenerator(14, seed=124).batch(16)
    assert a.shape == (16, 14, 14)
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = BlockMaskGenerator(14)
    d = gen.batch(16, np.random.default_rng(5))
    e = gen.batch(16, np.random.default_rng(5))
    assert torch.equal(d, e)
    assert gen.batch(0).shape == (0, 14, 14)


def test_non_square_grid_and_no_mask_option():
    gen = BlockMaskGenerator((8, 20), prob_no_mask=0.0, seed=0)
    masks = gen.batch(50)
    assert masks.shape == (50, 8, 20)
    assert (masks.flatten(1).sum(1) > 0).all()
    never = BlockMaskGenerator(14, prob_no_mask=1.0, seed=0).batch(20)
    assert never.sum() == 0


def test_random_mask_exact_count_and_validation():
    m = random_mask((10, 12), 0.25, generator=0)
    assert m.shape == (10, 12) and int(m.sum()) == 30
    with pytest.raises(ValueError):
        random_mask(14, 1.5)
    with pytest.raises(ValueError):
        BlockMaskGenerator(14, ratio_range=(0.5, 0.1))
    with pytest.raises(ValueError):
        BlockMaskGenerator(0)
