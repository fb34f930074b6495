"""Multi-crop augmentation: shapes, reproducibility, per-crop behaviour, ops vs references."""

import math

import pytest
import torch

from visionfm_core.modalities import get_modality
from visionfm_core.ssl.augment import (
    MultiCropAugmentation,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    sample_crop_boxes,
)

# everything random switched off: only the (identity) crop and the normalisation remain
IDENTITY = dict(
    global_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grey_p=0.0, blur_p=(0, 0, 0), solarize_p=0.0
)


def test_shapes_dtype_any_input_size():
    aug = MultiCropAugmentation("Fundus", global_size=32, local_size=16, n_local=3)
    crops = aug(torch.rand(5, 3, 40, 57), generator=0)
    assert [tuple(c.shape) for c in crops] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 3
    assert all(c.dtype == torch.float32 and torch.isfinite(c).all() for c in crops)
    assert len(MultiCropAugmentation("OCT", global_size=32)(torch.rand(2, 3, 32, 32))) == 2  # no locals by default


def test_reproducible_with_seed():
    aug = MultiCropAugmentation("Fundus", global_size=32, local_size=16, n_local=2)
    x = torch.rand(4, 3, 48, 48)
    a, b, c = aug(x, generator=7), aug(x, generator=7), aug(x, generator=8)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    d = aug(x, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(p, q) for p, q in zip(a, d))


def test_identity_settings_only_normalise():
    m = get_modality("fundus")
    aug = MultiCropAugmentation(m, global_size=32, **IDENTITY)
    x = torch.rand(3, 3, 32, 32)
    expected = (x - torch.tensor(m.mean).view(1, 3, 1, 1)) / torch.tensor(m.std).view(1, 3, 1, 1)
    for crop in aug(x, generator=0):
        torch.testing.assert_close(crop, expected, atol=1e-5, rtol=1e-5)


def test_solarisation_only_on_second_global_crop():
    settings = dict(IDENTITY, solarize_p=1.0)
    aug = MultiCropAugmentation("Fundus", global_size=16, local_size=8, n_local=1, normalize=False, **settings)
    x = torch.full((2, 3, 16, 16), 0.8)
    g1, g2, local = aug(x, generator=0)
    torch.testing.assert_close(g1, x)
    torch.testing.assert_close(g2, 1 - x)
    torch.testing.assert_close(local, torch.full((2, 3, 8, 8), 0.8))


def test_blur_probabilities_per_crop():
    # blur p = 1.0 on crop 1, 0.1 on crop 2 (sigma >= 1 here so that every blur is visible)
    settings = dict(IDENTITY)
    settings.pop("blur_p")
    aug = MultiCropAugmentation("Fundus", global_size=32, normalize=False, blur_sigma=(1.0, 2.0), **settings)
    x = torch.rand(64, 3, 32, 32)
    g1, g2 = aug(x, generator=0)
    changed1 = ((g1 - x).flatten(1).abs().amax(1) > 1e-4).float().mean()
    changed2 = ((g2 - x).flatten(1).abs().amax(1) > 1e-4).float().mean()
    assert changed1 == 1.0
    assert 0.0 < changed2 < 0.3


def test_grey_modality_stays_grey_and_one_channel_input():
    m = get_modality("OCT")
    aug = MultiCropAugmentation(m, global_size=32, local_size=16, n_local=2)
    grey = torch.rand(6, 1, 40, 40)
    for inp in (grey, grey.expand(-1, 3, -1, -1)):
        for crop in aug(inp, generator=3):
            pixels = crop * torch.tensor(m.std).view(1, 3, 1, 1) + torch.tensor(m.mean).view(1, 3, 1, 1)
            assert (pixels.amax(1) - pixels.amin(1)).max() < 1e-5


def test_uint8_input_and_bad_shapes():
    aug = MultiCropAugmentation("Fundus", global_size=16, normalize=False, **IDENTITY)
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(aug(x)[0], x.float() / 255, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        aug(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        aug(torch.rand(1, 2, 16, 16))  # 4 channels is RGB + alpha (see test_pretraining_fidelity.py)
    with pytest.raises(ValueError, match="Unknown modality"):
        MultiCropAugmentation("xray")


def test_crop_boxes_follow_scale_and_ratio():
    boxes = sample_crop_boxes(2000, 100, 160, (0.32, 1.0), (0.8, 1.2), torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 100).all() and (left + w <= 160).all()
    area = (h * w).double() / (100 * 160)
    assert area.min() > 0.3 and area.max() <= 1.0
    aspect = w.double() / h.double()
    assert aspect.min() > 0.75 and aspect.max() < 1.27  # (0.8, 1.2) up to rounding


def test_colour_ops_match_kornia():
    kornia = pytest.importorskip("kornia")
    torch.manual_seed(0)
    x = torch.rand(4, 3, 20, 24)
    f = torch.tensor([0.6, 0.9, 1.2, 1.4])
    shift = torch.tensor([-0.1, 0.05, 0.0, 0.1])
    hue_ref = kornia.enhance.adjust_hue(x, shift * 2 * math.pi)  # kornia takes radians
    torch.testing.assert_close(adjust_hue(x, shift), hue_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        adjust_saturation(x, f), kornia.enhance.adjust_saturation_with_gray_subtraction(x, f), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        adjust_contrast(x, f), kornia.enhance.adjust_contrast_with_mean_subtraction(x, f), atol=1e-5, rtol=0
    )
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0])
    ours = gaussian_blur(x, sigma, 13)
    for i, s in enumerate(sigma.tolist()):
        ref = kornia.filters.gaussian_blur2d(x[i : i + 1], (13, 13), (s, s), border_type="reflect")
        torch.testing.assert_close(ours[i : i + 1], ref, atol=1e-5, rtol=0)
