"""The 3-D VisionFM encoder: inflation from 2-D weights, the repeated-slice identity, 3-D decoder shapes, export."""

import pytest
import torch

from visionfm_core.models import VisionFMTaskModel
from visionfm_core.models.decoders import UNETRDecoder2d
from visionfm_core.encoders import build_encoder
from visionfm_core.encoders import VisionTransformer3D, build_encoder3d
from visionfm_core.encoders import WeightsError, load_encoder_weights, save_encoder_weights
from tests_common import assert_close_to_scale


def _inflated_pair(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    e2 = build_encoder(arch, 16, 32).eval()
    with torch.no_grad():  # non-zero position embeddings and biases, so the test sees them
        e2.pos_embed.normal_(0, 0.5)
        e2.patch_embed.proj.bias.normal_(0, 0.5)
    e3 = build_encoder3d(arch, 16, 32).eval()
    report = load_encoder_weights(e3, e2.state_dict())
    assert report.inflated and not report.kept_initial
    return e2, e3


@pytest.mark.parametrize("arch", ["vit_tiny", "vit_base"])
def test_repeated_slice_gives_the_2d_cls_embedding(arch):
    """Every 3-D patch of a repeated slice embeds as its 2-D patch (kernel / depth_patch summed over depth_patch
    equal slices), and depth_embed is zero: the tokens are the 2-D tokens, each repeated once per depth position.
    Attention over n copies of every key equals attention over one copy (the softmax weight of a value is
    multiplied by n, then normalised away) provided every key is repeated n times, the CLS key included: the
    log(n_depth) bias on the CLS key (VisionTransformer3D.attention_bias) is that repetition. So every block gives
    the 2-D tokens again, and the CLS embedding is the 2-D one."""
    e2, e3 = _inflated_pair(arch)
    torch.manual_seed(1)
    image = torch.randn(2, 3, 32, 48)
    volume = image.unsqueeze(-1).expand(2, 3, 32, 48, 48).contiguous()  # 3 depth positions of 16 slices
    with torch.no_grad():
        assert (e3(volume) - e2(image)).abs().max() < 1e-4
        # the patch maps are the 2-D maps repeated along depth
        maps3 = e3.forward_intermediates(volume, [-1])[0]
        maps2 = e2.forward_intermediates(image, [-1])[0]
        assert maps3.shape == (2, e3.embed_dim, 2, 3, 3)
        assert (maps3 - maps2.unsqueeze(-1)).abs().max() < 1e-4


def test_3d_encoder_shapes_and_any_multiple_of_the_patch():
    e3 = build_encoder3d("vit_tiny", 16, 32, depth_patch=8).eval()
    x = torch.randn(1, 3, 48, 32, 24)
    with torch.no_grad():
        assert e3(x).shape == (1, 192)
        assert e3.forward_features(x).shape == (1, 1 + 3 * 2 * 3, 192)
        assert [t.shape for t in e3.get_intermediate_layers(x, 2)] == [(1, 19, 192)] * 2
        assert e3.forward_intermediates(x, [3, 11], "NCDHW")[1].shape == (1, 192, 3, 2, 3)
        assert e3.forward_intermediates(x, 1, "NLC")[0].shape == (1, 18, 192)
    with pytest.raises(ValueError, match="not divisible"):
        e3(torch.randn(1, 3, 32, 32, 20))


def test_inflated_loading_from_a_2d_encoder_file(tmp_path):
    torch.manual_seed(0)
    e2 = build_encoder("vit_tiny", 16, 32)
    path = tmp_path / "encoder.pt"
    save_encoder_weights(e2, path, modality="MRI", arch="vit_tiny", patch_size=16)
    net = VisionFMTaskModel("segmentation", 3, arch="vit_tiny", img_size=32, spatial_dims=3, feature_size=8,
                            pretrained=str(path), modality="MRI").eval()
    assert torch.equal(net.encoder.patch_embed.proj.weight, e2.patch_embed.proj.weight.unsqueeze(-1).expand(
        -1, -1, -1, -1, 16) / 16)
    assert torch.equal(net.encoder.depth_embed, torch.zeros_like(net.encoder.depth_embed))
    assert torch.equal(net.encoder.blocks[3].mlp.fc1.weight, e2.blocks[3].mlp.fc1.weight)
    # the header checks still apply: another architecture or modality is refused
    save_encoder_weights(build_encoder("vit_small", 16, 32), tmp_path / "small.pt", modality="MRI", arch="vit_small",
                         patch_size=16)
    with pytest.raises(WeightsError, match="vit_small"):
        VisionFMTaskModel("segmentation", 3, arch="vit_tiny", img_size=32, spatial_dims=3, pretrained=str(
            tmp_path / "small.pt"), modality="MRI")
    with pytest.raises(WeightsError, match="OCT"):
        VisionFMTaskModel("segmentation", 3, arch="vit_tiny", img_size=32, spatial_dims=3, pretrained=str(path),
                          modality="OCT")


def test_3d_checkpoint_loads_directly_and_2d_models_refuse_it(tmp_path):
    torch.manual_seed(0)
    e3 = build_encoder3d("vit_tiny", 16, 32)
    with torch.no_grad():
        e3.depth_embed.normal_()
    other = build_encoder3d("vit_tiny", 16, 64)  # another grid: pos_embed and depth_embed resampled
    report = load_encoder_weights(other, e3.state_dict())
    assert not report.inflated and set(report.resized) == {"pos_embed", "depth_embed"}
    same = build_encoder3d("vit_tiny", 16, 32)
    load_encoder_weights(same, e3.state_dict())
    assert torch.equal(same.depth_embed, e3.depth_embed)
    with pytest.raises(WeightsError, match="3-D encoder"):
        load_encoder_weights(build_encoder("vit_tiny", 16, 32), e3.state_dict())
    state = e3.state_dict()
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:10]
    with pytest.raises(WeightsError, match="does not fit"):  # strict otherwise
        load_encoder_weights(build_encoder3d("vit_tiny", 16, 32), state)


@pytest.mark.parametrize("shape,depth_patch", [((1, 3, 32, 32, 32), None), ((2, 3, 48, 32, 16), None),
                                               ((1, 3, 32, 32, 6), 2)])
def test_3d_segmentation_output_has_the_input_shape(shape, depth_patch):
    net = VisionFMTaskModel("segmentation", 5, arch="vit_tiny", img_size=32, spatial_dims=3, feature_size=8,
                            depth_patch=depth_patch).eval()
    assert isinstance(net.encoder, VisionTransformer3D)
    with torch.no_grad():
        assert net(torch.randn(*shape)).shape == (shape[0], 5, *shape[2:])


def test_3d_classification_from_cls():
    net = VisionFMTaskModel("classification", 3, arch="vit_tiny", img_size=32, spatial_dims=3).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32, 32)).shape == (2, 3)


def test_torchscript_matches_eager():
    torch.manual_seed(0)
    net = VisionFMTaskModel("segmentation", 5, arch="vit_tiny", img_size=32, spatial_dims=3, feature_size=8).eval()
    scripted = torch.jit.script(net)
    with torch.no_grad():
        for shape in [(1, 3, 32, 32, 32), (1, 3, 48, 32, 16)]:
            x = torch.randn(*shape)
            assert_close_to_scale(scripted(x), net(x))


def test_2d_decoder_name_still_builds_2d():
    decoder = UNETRDecoder2d(192, 2, 16, 3, 8)
    assert decoder.out.conv.conv.weight.dim() == 4
    with pytest.raises(ValueError, match="depth patch"):
        UNETRDecoder2d(192, 2, 16, 3, 8, spatial_dims=3, depth_patch=4)
