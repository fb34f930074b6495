"""Encoder families (RETFound-MAE, RETFound-DINOv2, DINOv2) against timm's reference networks holding the same
tensors, their published file layouts through the safe loader, and the refusals of another family's file."""

import pytest
import torch

from visionfm_core import build_encoder, save_encoder_weights
from visionfm_core.encoders import (
    ENCODER_FAMILIES,
    WeightsError,
    build_encoder3d,
    file_layout,
    get_encoder_family,
    load_encoder_weights,
    normalisation_stats,
)
from tests_common import assert_close_to_scale

TINY = 192, 12, 3  # vit_tiny: width, depth, heads (same code path as the published sizes)


def timm_reference(timm, family: str, img_size: int, **size):
    """timm's VisionTransformer with the family's settings (the class behind `vit_large_patch16_224` with global
    pool, `vit_*_patch14_dinov2`, `vit_*_patch14_reg4_dinov2`) at a small width and depth."""
    from timm.models.vision_transformer import VisionTransformer

    f = get_encoder_family(family)
    dim, depth, heads = size.get("dims", TINY)
    kwargs = dict(img_size=img_size, patch_size=f.patch_size, embed_dim=dim, depth=depth, num_heads=heads,
                  num_classes=0)
    if f.pool == "avg":
        kwargs["global_pool"] = "avg"
    if f.layer_scale is not None:
        kwargs["init_values"] = 1e-5
    if f.reg_tokens:
        kwargs.update(reg_tokens=f.reg_tokens, no_embed_class=True)
    return VisionTransformer(**kwargs).eval()


def to_timm(state: dict, ref) -> dict:
    """Our (the original) layout -> timm's, by timm's own converter (DINOv2: mask_token dropped; registers: CLS
    position folded into the CLS token, `reg_token`)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn({k: v.clone() for k, v in state.items()}, ref)


def randomise(encoder):
    """Every tensor random (LayerNorm affine and LayerScale gammas too), so no key is a no-op by its init."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            scale = 0.5 if "norm" in name or "gamma" in name else 0.05
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0  # LayerNorm gains around 1
            p.copy_(torch.randn_like(p) * scale + centre)
    return encoder.eval()


FAMILY_SIZES = [("retfound_mae", 32), ("retfound_dinov2", 28), ("dinov2_vits14", 28), ("dinov2_vitb14_reg", 28)]


@pytest.mark.parametrize("family, size", FAMILY_SIZES)
def test_image_feature_and_intermediates_equal_timm(timm, family, size):
    ours = randomise(build_encoder("vit_tiny", img_size=size, encoder=family))
    ref = timm_reference(timm, family, size)
    result = ref.load_state_dict(to_timm(ours.state_dict(), ref), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert_close_to_scale(ours(x), ref(x))
        ours_maps = ours.forward_intermediates(x, [3, 7, 11], output_fmt="NCHW")
        ref_maps = ref.forward_intermediates(x, indices=[3, 7, 11], norm=True, output_fmt="NCHW",
                                             intermediates_only=True)
        for a, b in zip(ours_maps, ref_maps, strict=True):
            assert (a - b).abs().max() <= 1e-4
        # the classification-type heads' per-block feature: the last block's is the image feature
        assert_close_to_scale(ours.block_features(x, [11])[0], ref(x))
    assert (ours(x) - ref(x)).abs().max() <= 1e-4


def test_retfound_feature_is_the_fc_norm_patch_mean_without_final_norm():
    enc = randomise(build_encoder("vit_tiny", img_size=32, encoder="retfound_mae"))
    keys = set(enc.state_dict())
    assert {"fc_norm.weight", "fc_norm.bias"} <= keys and "norm.weight" not in keys
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = enc.forward_features(x)
        assert torch.allclose(enc(x), enc.fc_norm(tokens[:, 1:].mean(1)))


def test_dinov2_layout_keys():
    enc = build_encoder(encoder="dinov2_vitb14_reg", arch="vit_tiny", img_size=28)
    sd = enc.state_dict()
    assert sd["mask_token"].shape == (1, 192) and sd["register_tokens"].shape == (1, 4, 192)
    assert sd["pos_embed"].shape == (1, 1 + 4, 192)  # CLS + a 2 x 2 grid; the registers have no position
    assert "blocks.0.ls1.gamma" in sd and "blocks.11.ls2.gamma" in sd and enc.num_prefix_tokens == 5


@pytest.mark.slow  # two ViT-L networks: seconds on a quiet machine, more on a shared one
def test_the_real_vit_large_retfound_equals_timm(timm):
    """RETFound's published architecture at full size (random weights, one 224 px image)."""
    torch.manual_seed(0)
    ours = build_encoder(encoder="retfound_mae").eval()
    assert ours.embed_dim == 1024 and len(ours.blocks) == 24 and ours.patch_size == 16
    assert ours.dense_blocks == [5, 11, 17, 23]  # evenly spaced over 24 blocks
    ref = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, global_pool="avg").eval()
    result = ref.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-4


def test_families_declare_what_the_library_needs():
    assert get_encoder_family(None).name == "visionfm" and get_encoder_family("DINOv2-ViTB14").name == "dinov2_vitb14"
    for f in ENCODER_FAMILIES.values():
        assert f.patch_size in (14, 16) and f.normalisation in ("modality", "imagenet") and f.licence and f.weights
    assert ENCODER_FAMILIES["visionfm"].dense_block_indices(12) == [3, 5, 7, 11]  # VisionFM's recipe, unchanged
    assert ENCODER_FAMILIES["dinov2_vitb14"].dense_block_indices(12) == [2, 5, 8, 11]
    assert normalisation_stats("retfound_mae", "OCT") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert normalisation_stats("visionfm", "OCT")[0][0] == pytest.approx(0.21091926)
    with pytest.raises(ValueError, match="unknown encoder 'resnet'.*retfound_mae"):
        get_encoder_family("resnet")


def test_patch14_refuses_an_image_size_naming_the_nearest_valid_ones():
    with pytest.raises(ValueError, match=r"256 is not a multiple of the dinov2_vitb14 encoder's patch size 14: "
                                         r"use 252 or 266"):
        build_encoder(encoder="dinov2_vitb14", img_size=256)
    with pytest.raises(ValueError, match="supports patch sizes \\(14,\\), not 16"):
        build_encoder(encoder="dinov2_vitb14", patch_size=16)


# --- published layouts through the safe loader -------------------------------------------------------------------

def mae_pretraining_file(encoder) -> dict:
    """RETFound-MAE's released layout: {"model": encoder with its final `norm` (no fc_norm) + the MAE decoder}."""
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("fc_norm")}
    dim = encoder.embed_dim
    state.update({"norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim), "mask_token": torch.zeros(1, 1, 64),
                  "decoder_embed.weight": torch.randn(64, dim), "decoder_pos_embed": torch.zeros(1, 5, 64),
                  "decoder_pred.weight": torch.randn(768, 64)})
    return {"model": state, "epoch": 799, "optimizer": {"param_groups": []}}


def test_retfound_mae_pretraining_file_loads_as_retfound_fine_tunes(tmp_path, timm):
    source = randomise(build_encoder("vit_tiny", img_size=32, encoder="retfound_mae"))
    path = tmp_path / "RETFound_cfp_weights.pth"
    torch.save(mae_pretraining_file(source), path)
    enc = build_encoder("vit_tiny", img_size=32, encoder="retfound_mae")
    report = load_encoder_weights(enc, path, "teacher")  # the bundles' default key: RETFound's `model` is found
    assert report.entry == "model" and report.kept_initial == ["fc_norm.weight", "fc_norm.bias"]
    assert {"norm.weight", "decoder_embed.weight", "mask_token"} <= set(report.ignored)
    # timm loading the same file the way RETFound does (strict=False: fc_norm missing, norm and decoder unused)
    ref = timm_reference(timm, "retfound_mae", 32)
    ref.load_state_dict(torch.load(path, weights_only=True)["model"], strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (enc(x) - ref(x)).abs().max() <= 1e-4
    # a fine-tuned RETFound checkpoint holds fc_norm (and a head, ignored)
    tuned = dict(source.state_dict(), **{"head.weight": torch.randn(5, 192), "head.bias": torch.zeros(5)})
    report = load_encoder_weights(build_encoder("vit_tiny", img_size=32, encoder="retfound_mae"), {"model": tuned})
    assert report.kept_initial == [] and report.ignored == ["head.bias", "head.weight"]


def dinov2_release(encoder, grid: int) -> dict:
    """DINOv2's released layout: a bare state dict whose position embeddings hold its native grid."""
    from visionfm_core.encoders import resample_pos_embed

    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    state["pos_embed"] = resample_pos_embed(state["pos_embed"] + 0.0, (grid, grid))
    state["pos_embed"] += torch.randn_like(state["pos_embed"]) * 0.02
    return state


@pytest.mark.parametrize("family", ["dinov2_vits14", "dinov2_vits14_reg"])
def test_dinov2_release_loads_with_its_native_grid_interpolated(timm, family):
    from timm.layers import resample_abs_pos_embed

    release = dinov2_release(randomise(build_encoder("vit_tiny", img_size=28, encoder=family)), grid=5)
    enc = build_encoder("vit_tiny", img_size=28, encoder=family)
    report = load_encoder_weights(enc, release)
    assert report.resized["pos_embed"] == ((1, 26, 192), (1, 5, 192)) and not report.kept_initial
    # timm's reference: its own bicubic resampler (as RETFound's pipeline: no antialiasing) and its DINOv2 converter
    ref = timm_reference(timm, family, 28)
    theirs = dict(release, pos_embed=resample_abs_pos_embed(release["pos_embed"], [2, 2], num_prefix_tokens=1,
                                                            interpolation="bicubic", antialias=False))
    ref.load_state_dict(to_timm(theirs, ref), strict=True)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert (enc(x) - ref(x)).abs().max() <= 1e-4


def test_retfound_dinov2_training_checkpoint_loads():
    source = randomise(build_encoder("vit_tiny", img_size=28, encoder="retfound_dinov2"))
    teacher = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    teacher.update({"dino_head.mlp.0.weight": torch.randn(8, 192), "ibot_head.mlp.0.weight": torch.randn(8, 192)})
    enc = build_encoder("vit_tiny", img_size=28, encoder="retfound_dinov2")
    report = load_encoder_weights(enc, {"teacher": teacher, "iteration": 10})
    assert report.entry == "teacher" and report.ignored == ["dino_head.mlp.0.weight", "ibot_head.mlp.0.weight"]
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(enc(x), source(x))


# --- another family's file is refused, naming both layouts -----------------------------------------------------------

def test_retfound_file_given_as_visionfm_is_refused(tmp_path):
    path = tmp_path / "RETFound_oct_weights.pth"
    torch.save(mae_pretraining_file(build_encoder("vit_tiny", img_size=32, encoder="retfound_mae")), path)
    with pytest.raises(WeightsError) as e:
        load_encoder_weights(build_encoder("vit_tiny", img_size=32), path)
    message = str(e.value)
    assert str(path) in message and "RETFound-MAE (fc_norm / MAE decoder) ViT-Ti/16" in message
    assert "encoder is visionfm (VisionFM/DINO ViT (final norm) ViT-Ti/16)" in message
    assert "--encoder retfound_mae" in message


@pytest.mark.parametrize("file_family, model_family, expected", [
    ("dinov2_vits14", "visionfm", "--encoder dinov2_vits14"),
    ("visionfm", "dinov2_vits14", "VisionFM/DINO ViT"),
    ("dinov2_vits14_reg", "dinov2_vits14", "with 4 register tokens"),
    ("dinov2_vits14", "retfound_mae", "DINOv2 (LayerScale, mask_token)"),
    ("retfound_mae", "dinov2_vits14", "RETFound-MAE"),
])
def test_any_family_given_another_ones_file_is_refused(file_family, model_family, expected):
    size = lambda f: 28 if get_encoder_family(f).patch_size == 14 else 32  # noqa: E731
    source = build_encoder("vit_small", img_size=size(file_family), encoder=file_family).state_dict()
    model = build_encoder("vit_small", img_size=size(model_family), encoder=model_family)
    with pytest.raises(WeightsError, match="holds a .* encoder; this model's encoder is " + model_family) as e:
        load_encoder_weights(model, source)
    assert expected in str(e.value)


def test_header_names_the_family_of_files_of_the_same_layout(tmp_path):
    """RETFound-DINOv2 and DINOv2 ViT-L/14 share a layout: this project's files say which they are."""
    path = tmp_path / "dinov2.pt"
    save_encoder_weights(build_encoder("vit_tiny", img_size=28, encoder="dinov2_vitl14"), path, encoder="dinov2_vitl14",
                         arch="vit_tiny", patch_size=14)
    with pytest.raises(WeightsError, match=r"holds a dinov2_vitl14 encoder .*header; this model's encoder is "
                                           r"retfound_dinov2.*--encoder dinov2_vitl14"):
        load_encoder_weights(build_encoder("vit_tiny", img_size=28, encoder="retfound_dinov2"), path)
    assert file_layout(torch.load(path, weights_only=True)["state_dict"])["layout"] == "dinov2"


def test_a_2d_file_never_inflates_into_another_familys_3d_encoder():
    dinov2 = build_encoder("vit_tiny", img_size=28, encoder="dinov2_vits14").state_dict()
    with pytest.raises(WeightsError, match="DINOv2 .* this model's encoder is visionfm"):
        load_encoder_weights(build_encoder3d("vit_tiny", img_size=32, depth_patch=16), dinov2)
    # the same family inflates: a volume of one repeated slice gives the 2-D image feature
    enc3d = build_encoder3d("vit_tiny", img_size=28, encoder="dinov2_vits14", depth_patch=14)
    source = randomise(build_encoder("vit_tiny", img_size=28, encoder="dinov2_vits14"))
    report = load_encoder_weights(enc3d, source.state_dict())
    assert report.inflated
    image = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert_close_to_scale(enc3d.eval()(image.unsqueeze(-1).expand(-1, -1, -1, -1, 28)), source(image))


def test_import_weights_takes_the_encoder_family(tmp_path):
    from visionfm_core.tools.cli import main as cli_main

    source = randomise(build_encoder("vit_tiny", img_size=32, encoder="retfound_mae"))
    src = tmp_path / "RETFound_oct_weights.pth"
    torch.save(mae_pretraining_file(source), src)
    out = tmp_path / "retfound_oct.pt"
    # the command ends with one line naming the file's family and the option to pass
    with pytest.raises(SystemExit, match="RETFound-MAE .* this model's encoder is visionfm"):
        cli_main(["import-weights", str(src), "--modality", "oct", "--out", str(out), "--arch", "vit_tiny"])
    assert not out.exists()
    cli_main(["import-weights", str(src), "--modality", "oct", "--out", str(out), "--arch", "vit_tiny",
              "--encoder", "retfound_mae"])
    header = torch.load(out, weights_only=True)["visionfm_encoder"]
    assert header["encoder"] == "retfound_mae" and header["patch_size"] == 16 and "CC BY-NC" in header["licence"]
    enc = build_encoder("vit_tiny", img_size=32, encoder="retfound_mae")
    load_encoder_weights(enc, out, expected_modality="OCT")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # the imported file gives the source's blocks (fc_norm at RETFound's initial value)
        assert_close_to_scale(enc.forward_features(x), source.forward_features(x))
    with pytest.raises(WeightsError, match="holds a retfound_mae encoder .*header"):
        load_encoder_weights(build_encoder("vit_tiny", img_size=32), out)
