"""Pretraining fidelity to the original recipe (issue 11, points 1, 2 and 4): crops from a full-resolution copy
that keeps the aspect ratio, the original's weight-decay groups, and a stable from-scratch setting."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from visionfm_core.data import UnlabelledImageDataset
from visionfm_core.data.resize import resize
from visionfm_core.ssl import IBOTRecipe, MultiCropAugmentation
from visionfm_core.ssl.augment import image_extents, sample_crop_boxes
from visionfm_core.ssl.head import build_ibot_models
from visionfm_core.ssl.recipe import RECIPE_PRESETS, start_warning
from visionfm_core.ssl.schedules import param_groups
from visionfm_core.ssl.trainer import iteration_generators

FUNDUS = Path(__file__).resolve().parents[2] / "bundles" / "fundus_ibot_pretraining" / "configs"
RECIPE = IBOTRecipe()
PLAIN = dict(flip_p=0.0, jitter_p=0.0, grey_p=0.0, blur_p=(0, 0, 0), solarize_p=0.0, normalize=False)


def save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def pretraining_dataset(folder: Path, **kwargs) -> UnlabelledImageDataset:
    # the dataset as the bundles build it: the copy's size from the recipe
    return UnlabelledImageDataset(folder, "Fundus", size=RECIPE.load_size, check_modality=False, **kwargs)


def pattern_contrast(crops: torch.Tensor) -> float:
    """Mean amplitude of the vertical line pattern in crops (n, 3, h, w): std of the column profile over rows."""
    profile = crops[:, 1].mean(dim=1)  # (n, w): lines are vertical, so averaging the rows keeps them
    return float(profile.std(dim=1).mean())


def test_global_crops_keep_the_fine_detail_of_a_large_photo(tmp_path):
    """Vertical lines 6 px on / 6 px off in a 1600 x 1200 photo: a 256 px square copy (scale 0.16) cannot hold
    them, the 448 px short side copy (scale 0.37) can, and global crops at scale ~0.3 still show them."""
    columns = (np.arange(1600) // 6) % 2 * 200 + 30
    photo = np.broadcast_to(columns[None, :, None], (1200, 1600, 3)).astype(np.uint8)
    save(np.ascontiguousarray(photo), tmp_path / "lines.png")
    batch = torch.stack([pretraining_dataset(tmp_path)[0]["image"]] * 8)
    aug = MultiCropAugmentation("Fundus", RECIPE.image_size, global_scale=(0.3, 0.3), **PLAIN)
    crops = aug(batch, generator=0)[0]
    assert crops.shape == (8, 3, 224, 224)
    full_contrast = float(torch.tensor(columns / 255.0).std())
    assert pattern_contrast(crops) > 0.5 * full_contrast  # measured 0.70 x; the 256 px square copy gives 0.24 x


def test_global_crops_are_never_upsampled_and_keep_the_aspect_ratio(tmp_path):
    save(np.zeros((1500, 2000, 3), np.uint8) + 100, tmp_path / "photo_4x3.png")
    image = pretraining_dataset(tmp_path)[0]["image"]
    assert image.dtype == torch.uint8 and image.shape == (4, 448, 672)  # RGB + alpha on a 1.5:1 canvas
    heights, widths = image_extents(image[None])
    assert (int(heights), int(widths)) == (448, 597)  # 2000 x 1500 -> 597 x 448: aspect 4:3 kept
    boxes = sample_crop_boxes(2000, heights, widths, RECIPE.global_crops_scale, (0.8, 1.2), torch.Generator())
    assert int(boxes[:, 2:].min()) >= RECIPE.image_size  # every global crop spans >= 224 source pixels
    assert bool(((boxes[:, 0] + boxes[:, 2] <= 448) & (boxes[:, 1] + boxes[:, 3] <= 597)).all())


def test_the_copy_is_the_resized_image_and_long_images_are_centre_cropped(tmp_path):
    rng = np.random.default_rng(0)
    photo = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    save(photo, tmp_path / "a.png")
    ds = UnlabelledImageDataset(tmp_path, "Fundus", size=32, check_modality=False)
    item = ds[0]["image"]
    assert item.shape == (4, 32, 48)
    expected = resize(torch.from_numpy(photo).permute(2, 0, 1).float() / 255, (32, 43))  # EyeResizeShortSided's size
    assert torch.equal(item[:3, :, :43], (expected * 255).round().to(torch.uint8))  # the same resize, in 8 bits
    assert (item[3, :, :43] == 255).all() and (item[:, :, 43:] == 0).all()  # alpha marks the image, padding is 0
    # 2:1 keeps its middle 1.5:1; portrait keeps its centred square
    for shape, extent in (((40, 80, 3), (32, 48)), ((80, 40, 3), (32, 32))):
        (tmp_path / "a.png").unlink()
        save(np.full(shape, 255, np.uint8), tmp_path / "a.png")
        h, w = image_extents(ds[0]["image"][None])
        assert (int(h), int(w)) == extent


def test_crops_never_include_padding():
    """White images of different sizes in one padded batch: any padding pixel in a crop would pull values below 1."""
    extents = [(40, 60), (40, 40), (40, 52), (40, 41)]
    batch = torch.zeros(len(extents), 4, 40, 60, dtype=torch.uint8)
    for i, (h, w) in enumerate(extents):
        batch[i, :, :h, :w] = 255
    aug = MultiCropAugmentation("Fundus", 16, local_size=8, n_local=4, global_scale=(0.05, 1.0), **PLAIN)
    for seed in range(5):
        for crop in aug(batch, generator=seed):
            assert float(crop.min()) > 0.999  # a padding pixel would pull the value far below
    # whole-image crops (scale 1, the image's own aspect ratio) cover each image exactly, padding excluded
    ramp = torch.zeros(1, 4, 40, 60, dtype=torch.uint8)
    ramp[0, :3, :, :52] = torch.linspace(0, 255, 52).round().to(torch.uint8)
    ramp[0, 3, :, :52] = 255
    whole = MultiCropAugmentation("Fundus", 16, global_scale=(1.0, 1.0), ratio=(52 / 40, 52 / 40), **PLAIN)
    expected = resize(ramp[:, :3, :, :52].float(), (16, 16), "bicubic") / 255
    torch.testing.assert_close(whole(ramp, generator=0)[0], expected, atol=2e-3, rtol=0)


def test_crops_are_a_pure_function_of_seed_rank_and_iteration():
    batch = torch.zeros(3, 4, 40, 60, dtype=torch.uint8)
    batch[:, :3] = torch.randint(0, 256, (3, 3, 40, 60), dtype=torch.uint8)
    batch[0, 3, :, :50] = batch[1, 3, :, :] = batch[2, 3, :, :41] = 255
    aug = MultiCropAugmentation("Fundus", 16, local_size=8, n_local=2)
    first = aug(batch, generator=iteration_generators(0, 1, 7)[0])
    again = aug(batch, generator=iteration_generators(0, 1, 7)[0])  # a resumed run replays iteration 7
    other = aug(batch, generator=iteration_generators(0, 1, 8)[0])
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    # uint8 and float inputs give the same crops, up to the 8-bit fixed-point arithmetic of the uint8 resize
    plain = MultiCropAugmentation("Fundus", 16, local_size=8, n_local=2, **PLAIN)
    as_uint8 = plain(batch, generator=iteration_generators(0, 1, 7)[0])
    as_float = plain(batch.float() / 255, generator=iteration_generators(0, 1, 7)[0])
    assert all(float((a - b).abs().mean()) < 1 / 255 for a, b in zip(as_uint8, as_float))


def test_pretraining_decays_tokens_and_exempts_only_biases_and_1d_parameters():
    student, _ = build_ibot_models("vit_tiny", 16, 32, out_dim=16, hidden_dim=16, bottleneck_dim=8)
    decay, no_decay = param_groups(student)
    names = {id(p): n for n, p in student.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert {"backbone.cls_token", "backbone.pos_embed", "backbone.masked_embed"} <= decayed
    assert {"backbone.norm.weight", "backbone.blocks.0.norm1.weight", "backbone.patch_embed.proj.bias"} <= exempt
    assert all(p.ndim <= 1 or names[id(p)].endswith(".bias") for p in no_decay["params"])
    assert all(p.ndim > 1 for p in decay["params"])


def test_from_scratch_preset_and_the_random_start_warning():
    scratch = IBOTRecipe.from_scratch()
    assert (scratch.warmup_teacher_temp, scratch.teacher_temp) == (0.04, 0.04)
    assert scratch.replace(warmup_teacher_temp=RECIPE.warmup_teacher_temp, teacher_temp=RECIPE.teacher_temp) == RECIPE
    assert IBOTRecipe.preset("visionfm") == RECIPE and RECIPE_PRESETS["from_scratch"] == scratch
    with pytest.raises(ValueError, match="unknown iBOT recipe preset 'dino'.*from_scratch"):
        IBOTRecipe.preset("dino")
    message = start_warning(RECIPE, None)
    assert "random weights" in message and "init_weights" in message and "from_scratch" in message
    assert start_warning(RECIPE, "") == message
    assert start_warning(RECIPE, "dino_vitbase16_pretrain.pth") is None
    assert start_warning(scratch, None) is None


def test_bundle_exposes_the_load_copy_and_the_preset():
    def parsed(**overrides):
        parser = ConfigParser()
        parser.read_config(str(FUNDUS / "train.json"))
        parser.update(overrides)
        return parser

    parser = parsed()
    assert parser.get_parsed_content("recipe") == RECIPE
    dataset = parser["train"]["dataset"]
    assert (dataset["size"], dataset["max_aspect"]) == ("@load_size", "@load_max_aspect")
    assert parser.get_parsed_content("load_size") == 448
    parser = parsed(recipe_preset="from_scratch", load_size_factor=1.5)
    assert parser.get_parsed_content("recipe") == IBOTRecipe.from_scratch(load_size_factor=1.5)
    assert parser.get_parsed_content("load_size") == 336
    recipe = parsed(recipe_preset="from_scratch", teacher_temp=0.05).get_parsed_content("recipe")
    assert (recipe.warmup_teacher_temp, recipe.teacher_temp) == (0.04, 0.05)  # an explicit value wins
    readme = (FUNDUS.parent / "docs" / "README.md").read_text()
    assert "## Start from pretrained weights" in readme and "--recipe_preset from_scratch" in readme
    assert json.loads((FUNDUS / "train.json").read_text())["init_weights"] is None
