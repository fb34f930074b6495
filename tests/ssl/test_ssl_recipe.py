"""IBOTRecipe: VisionFM's values, overrides, validation, and the components reading their defaults from it."""

import dataclasses
import inspect

import pytest

from visionfm_core.ssl import (
    DEFAULT_RECIPE,
    BlockMaskGenerator,
    IBOTRecipe,
    KNNProbe,
    MultiCropAugmentation,
    build_ibot_models,
    clip_gradients,
    scaled_lr,
)


def test_visionfm_values():
    r = IBOTRecipe()
    assert (r.arch, r.patch_size, r.image_size, r.load_size, r.out_dim, r.batch_size) == ("vit_base", 16, 224, 448,
                                                                                         8192, 128)
    assert (r.base_lr, r.lr_reference_batch, r.min_lr, r.warmup_epochs) == (7.5e-5, 256, 2e-6, 50)
    assert (r.weight_decay, r.weight_decay_end, r.momentum_teacher, r.momentum_teacher_end) == (0.04, 0.4, 0.996, 1.0)
    assert (r.warmup_teacher_temp, r.teacher_temp, r.warmup_teacher_patch_temp, r.teacher_patch_temp) == (
        0.07, 0.04, 0.04, 0.07)
    assert (r.warmup_teacher_temp_epochs, r.student_temp, r.center_momentum) == (30, 0.1, 0.9)
    assert (r.clip_grad, r.freeze_last_layer_epochs, r.drop_path_rate) == (3.0, 3, 0.1)
    assert (r.mask_ratio_range, r.prob_no_mask, r.n_local) == ((0.1, 0.5), 0.5, 0)
    assert (r.lambda_cls, r.lambda_patch, r.epochs, r.keep_every_epochs) == (1.0, 1.0, 100, 40)
    assert r.total_lr(1024) == pytest.approx(7.5e-5 * 4)
    assert r == DEFAULT_RECIPE


def test_replace_as_dict_and_errors():
    r = IBOTRecipe().replace(arch="vit_small", base_lr=1e-4, global_crops_scale=[0.4, 1.0])
    assert (r.arch, r.base_lr, r.global_crops_scale) == ("vit_small", 1e-4, (0.4, 1.0))
    assert IBOTRecipe(**r.as_dict()) == r and list(r.as_dict()) == IBOTRecipe.field_names()
    assert DEFAULT_RECIPE.arch == "vit_base"  # frozen: replace made a copy
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.arch = "vit_large"
    with pytest.raises(ValueError, match="unknown iBOT recipe setting.*'lr'.*base_lr"):
        r.replace(lr=1e-3)
    with pytest.raises(ValueError, match="image_size 230 is not a multiple of patch_size 16"):
        IBOTRecipe(image_size=230)
    with pytest.raises(ValueError, match=r"mask_ratio_range .* got \(0.6, 0.5\)"):
        IBOTRecipe(mask_ratio_range=(0.6, 0.5))


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


def test_component_defaults_are_the_recipe():
    r = DEFAULT_RECIPE
    masks = BlockMaskGenerator()
    assert (masks.height, masks.ratio_range, masks.prob_no_mask, masks.min_num_patches) == (
        r.image_size // r.patch_size, r.mask_ratio_range, r.prob_no_mask, r.mask_min_num_patches)
    aug = MultiCropAugmentation("Fundus")
    assert (aug.views[0].size, aug.views[0].scale, aug.n_local) == (r.image_size, r.global_crops_scale, r.n_local)
    assert _default(MultiCropAugmentation, "local_scale") == r.local_crops_scale
    assert [_default(build_ibot_models, n) for n in ("arch", "patch_size", "img_size", "out_dim", "drop_path_rate")] \
        == [r.arch, r.patch_size, r.image_size, r.out_dim, r.drop_path_rate]
    assert _default(clip_gradients, "clip") == r.clip_grad
    assert scaled_lr(512) == r.total_lr(512)
    assert _default(KNNProbe, "image_size") == r.image_size
