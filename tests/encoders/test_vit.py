import pytest
import torch

from visionfm_core import build_encoder
from visionfm_core.encoders import ARCHS, resample_pos_embed
from tests_common import assert_close_to_scale

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
        assert_close_to_scale(ours(x), ref(x))
        ours_layers = ours.get_intermediate_layers(x, 4)
        ref_layers = ref.forward_intermediates(x, indices=4, norm=True, output_fmt="NLC", intermediates_only=True,
                                               return_prefix_tokens=True)
        assert_close_to_scale(ours_layers[0][:, 1:], ref_layers[0][0])


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


def test_forward_intermediates_maps_and_tokens():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", img_size=32).eval()
    x = torch.randn(2, 3, 32, 48)  # non-square and not the built size: a 2 x 3 patch grid
    with torch.no_grad():
        maps = enc.forward_intermediates(x, 4)
        tokens = enc.forward_intermediates(x, 4, output_fmt="NLC")
        layers = enc.get_intermediate_layers(x, 4)
        picked = enc.forward_intermediates(x, [-1, 3, 5], output_fmt="NLC")  # negatives count from the end
        raw = enc.forward_intermediates(x, [11], output_fmt="NLC", norm=False)[0]
    assert [tuple(m.shape) for m in maps] == [(2, 192, 2, 3)] * 4
    assert [tuple(t.shape) for t in tokens] == [(2, 6, 192)] * 4
    for m, t, full in zip(maps, tokens, layers):
        assert torch.equal(t, full[:, 1:])  # the patch tokens of get_intermediate_layers, CLS left out
        assert torch.equal(m.flatten(2).transpose(1, 2), t)  # row-major grid: token r * 3 + c is map[:, :, r, c]
    assert torch.equal(picked[-1], tokens[-1])  # shallow to deep, whatever the order asked
    assert torch.equal(picked[0], enc.get_intermediate_layers(x, [3])[0][:, 1:])
    assert torch.allclose(enc.norm(raw), tokens[-1], atol=1e-6) and not torch.allclose(raw, tokens[-1], atol=1e-3)
    with pytest.raises(ValueError, match="out of range"):
        enc.forward_intermediates(x, [12])
    with pytest.raises(ValueError, match="last 13 blocks"):
        enc.forward_intermediates(x, 13)
    with pytest.raises(ValueError, match="output_fmt"):
        enc.forward_intermediates(x, 1, output_fmt="NHWC")


def test_encoder_scripts_with_the_same_outputs():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", img_size=32, masked_im_modeling=True).eval()
    scripted = torch.jit.script(enc)
    x = torch.randn(1, 3, 48, 32)
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, 2] = True
    with torch.no_grad():
        assert_close_to_scale(scripted(x), enc(x))
        assert_close_to_scale(scripted.forward_features(x, mask), enc.forward_features(x, mask))
        indices = [3, 5, 7, 11]
        for ours, ref in zip(scripted.forward_intermediates(x, indices), enc.forward_intermediates(x, indices)):
            assert_close_to_scale(ours, ref)
        for ours, ref in zip(scripted.get_intermediate_layers(x, 2), enc.get_intermediate_layers(x, 2)):
            assert_close_to_scale(ours, ref)
    resample = torch.jit.script(resample_pos_embed)
    assert torch.equal(resample(enc.pos_embed, (3, 5), 1), resample_pos_embed(enc.pos_embed, (3, 5)))
    assert torch.equal(resample(enc.pos_embed, (2, 2), 1), enc.pos_embed)  # the built grid: unchanged
    assert resample_pos_embed(enc.pos_embed, (2, 2)) is enc.pos_embed


def test_forward_intermediates_same_as_timm(timm):
    torch.manual_seed(0)
    ours = build_encoder("vit_tiny", img_size=32).eval()
    # timm built for the non-square size, holding our position embeddings resampled to its grid
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=(32, 48)).eval()
    state = dict(ours.state_dict(), pos_embed=resample_pos_embed(ours.pos_embed.detach(), (2, 3)))
    ref.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        for indices in (4, [3, 5, 7, 11], [0, -1]):
            for fmt in ("NCHW", "NLC"):
                for norm in (True, False):
                    got = ours.forward_intermediates(x, indices, output_fmt=fmt, norm=norm)
                    want = ref.forward_intermediates(x, indices=indices, norm=norm, output_fmt=fmt,
                                                     intermediates_only=True)
                    assert len(got) == len(want)
                    assert all(a.shape == b.shape and (a - b).abs().max() < 1e-4 for a, b in zip(got, want))


def test_bf16_cpu_training_takes_matmul_attention_as_accurate_as_the_fused_kernel():
    """bf16 training on a CPU with native bf16 runs attention as plain matmuls (the fused kernel's backward is slow
    there); outputs and gradients keep the fused bf16 kernel's accuracy against fp32, with and without an additive
    key bias. (Forced here with `matmul_attention_max_tokens`, so the check runs on every CPU.)"""
    import copy

    from visionfm_core.encoders.vit import Attention, use_matmul_attention

    torch.manual_seed(0)
    attn = Attention(64, 4)
    x, grad_out = torch.randn(3, 50, 64), torch.randn(3, 50, 64)
    q = torch.randn(3, 4, 50, 16, dtype=torch.bfloat16)
    assert use_matmul_attention(q.requires_grad_(), 640)
    assert not use_matmul_attention(q.detach(), 640)  # inference: the fused kernel
    assert not use_matmul_attention(q.float().requires_grad_(), 640)  # fp32: the fused kernel
    assert not use_matmul_attention(q.half().requires_grad_(), 640)  # fp16 (no CPU training path): the fused kernel
    assert not use_matmul_attention(q, 49)  # long sequences: the fused kernel

    def run(dtype, max_tokens, bias):
        module = copy.deepcopy(attn).to(dtype)
        module.matmul_attention_max_tokens = max_tokens
        inp = x.detach().to(dtype, copy=True).requires_grad_()
        out = module(inp, None if bias is None else bias.to(dtype))
        out.backward(grad_out.to(dtype))
        return [t.float() for t in (out, inp.grad, module.qkv.weight.grad, module.qkv.bias.grad)]

    for bias in (None, torch.linspace(-2, 2, 50).reshape(1, 1, 1, 50)):
        reference = run(torch.float32, 0, bias)
        matmul, fused = run(torch.bfloat16, 640, bias), run(torch.bfloat16, 0, bias)
        for name, m, f, r in zip(("output", "input grad", "qkv weight grad", "qkv bias grad"), matmul, fused, reference):
            scale = r.abs().max().item()
            error_matmul, error_fused = (m - r).abs().max().item(), (f - r).abs().max().item()
            # bf16 keeps ~3 significant digits: both paths land within a few percent of the largest value, and the
            # matmul path no further than twice the fused kernel's own error (a lost scale or bias is ~100 %)
            assert error_matmul <= 0.03 * scale, (name, error_matmul, scale)
            assert error_matmul <= 2 * error_fused + 0.005 * scale, (name, error_matmul, error_fused, scale)
