import pytest
import torch

from visionfm_core import build_encoder
from visionfm_core.models import ARCHS

BACKBONE_KEYS = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                 "norm.bias"}
BLOCK_KEYS = {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
              "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
              "mlp.fc2.bias"}


def expected_keys(depth, masked=False):
    keys = set(BACKBONE_KEYS) | {f"blocks.{i}.{k}" for i in range(depth) for k in BLOCK_KEYS}
    return keys | {"masked_embed"} if masked else keys


def test_vit_base_matches_the_original_layout():
    enc = build_encoder("vit_base")
    sd = enc.state_dict()
    assert set(sd) == expected_keys(12)
    assert sd["pos_embed"].shape == (1, 197, 768)
    assert sum(p.numel() for p in enc.parameters()) == pytest.approx(85.8e6, rel=0.002)
    enc = build_encoder("vit_base", masked_im_modeling=True)
    assert set(enc.state_dict()) == expected_keys(12, masked=True)
    assert enc.state_dict()["masked_embed"].shape == (1, 768)


@pytest.mark.parametrize("arch, patch", [("vit_tiny", 16), ("vit_small", 16), ("vit_small", 8), ("vit_base", 8),
                                         ("vit_large", 16)])
def test_archs_build(arch, patch):
    enc = build_encoder(arch, patch_size=patch, img_size=32)
    assert set(enc.state_dict()) == expected_keys(ARCHS[arch][1])
    assert enc.patch_embed.proj.kernel_size == (patch, patch)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_encoder("vit_huge")
    with pytest.raises(ValueError, match="patch sizes"):
        build_encoder("vit_tiny", patch_size=8)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        build_encoder("vit_tiny", img_size=32).eval()(torch.zeros(1, 3, 40, 32))


def test_outputs_and_any_input_size():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    tokens = enc.forward_features(x)
    assert tokens.shape == (2, 1 + 16, 192)
    assert torch.allclose(enc(x), tokens[:, 0])
    layers = enc.get_intermediate_layers(x, 4)
    assert len(layers) == 4 and torch.allclose(layers[-1], tokens, atol=1e-6)
    # non-square and larger inputs work: the position embeddings are resampled on the fly
    assert enc.forward_features(torch.randn(1, 3, 48, 96)).shape == (1, 1 + 3 * 6, 192)
    assert enc(torch.randn(1, 3, 128, 128)).shape == (1, 192)


def test_mask_token_written_at_masked_patches():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", img_size=32, masked_im_modeling=True).eval()
    with torch.no_grad():
        enc.masked_embed.normal_()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = True
    with torch.no_grad():
        tokens = enc.prepare_tokens(x, mask)
        plain = enc.prepare_tokens(x)
        pos = enc.pos_embed[0, 2]
    assert torch.allclose(tokens[0, 2], enc.masked_embed[0] + pos)  # patch 1 is token 2 (after CLS)
    assert torch.allclose(tokens[1], plain[1]) and torch.allclose(tokens[0, [0, 1, 3, 4]], plain[0, [0, 1, 3, 4]])
    assert not torch.allclose(enc.forward_features(x, mask)[0], enc.forward_features(x)[0])
    with pytest.raises(ValueError, match="masked_im_modeling"):
        build_encoder("vit_tiny", img_size=32).forward_features(x, mask)


def test_same_output_as_timm_with_the_same_weights(timm):
    torch.manual_seed(0)
    ours = build_encoder("vit_base").eval()
    ref = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()
    result = ref.load_state_dict(ours.state_dict(), strict=True)  # every key matched, nothing left over
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() < 1e-4
        ours_layers = ours.get_intermediate_layers(x, 4)
        ref_layers = ref.forward_intermediates(x, indices=4, norm=True, output_fmt="NLC", intermediates_only=True,
                                               return_prefix_tokens=True)
        assert (ours_layers[0][:, 1:] - ref_layers[0][0]).abs().max() < 1e-4


def test_drop_path_only_in_training():
    enc = build_encoder("vit_tiny", img_size=32, drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    enc.eval()
    assert torch.equal(enc(x), enc(x))
    enc.train()
    torch.manual_seed(1)
    a = enc(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, enc(x))
