"""The dense heads' two decoders, the light one (the 2-D default) and UNETR, chosen by `decoder`, and a trained model.pt
rebuilt with the decoder it holds."""

import copy

import pytest
import torch
from bundle_harness import REPO
from tests_common import assert_close_to_scale
from monai.bundle import ConfigParser

from visionfm_core.engine.checkpoint import SafeCheckpointLoader
from visionfm_core.models import (
    DEFAULT_DENSE_DECODER,
    LightDecoder2d,
    UNETRDecoder2d,
    VisionFMTaskModel,
    trained_decoder,
)

TINY = {"arch": "vit_tiny", "img_size": 32, "feature_size": 8}
VESSELS = REPO / "bundles" / "fundus_vessel_segmentation" / "configs"


def tiny(head="segmentation", num_outputs=2, **kwargs):
    torch.manual_seed(0)
    return VisionFMTaskModel(head, num_outputs, **{**TINY, **kwargs})


@pytest.mark.parametrize("decoder", ["light", "unetr"])
def test_output_has_the_inputs_exact_size_and_gradients_reach_every_weight(decoder):
    model = tiny(decoder=decoder, freeze_encoder=False)
    # square, non-square and odd multiples of the patch (the bundles' windows and whole B-scans)
    for h, w in [(32, 32), (48, 80), (112, 16)]:
        out = model(torch.randn(2, 3, h, w))
        assert out.shape == (2, 2, h, w)
    out.square().mean().backward()
    starved = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not starved


def test_the_light_decoder_takes_patch_sizes_unetr_cannot():
    model = tiny(encoder="dinov2_vitb14", img_size=28, decoder="light")  # patch 14: not a power of 2
    assert isinstance(model.head.decoder, LightDecoder2d)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 42, 70)).shape == (1, 2, 42, 70)
    with pytest.raises(ValueError, match="power of 2.*decoder='light'"):
        tiny(encoder="dinov2_vitb14", img_size=28, decoder="unetr")


def test_decoder_is_chosen_by_name_or_head_options():
    assert isinstance(tiny().head.decoder, LightDecoder2d)  # the 2-D default
    assert isinstance(tiny("landmarks", head_options={"decoder": "unetr"}).head.decoder, UNETRDecoder2d)
    assert isinstance(tiny(decoder="unetr").head.decoder, UNETRDecoder2d)
    with pytest.raises(ValueError, match="unknown dense decoder 'fpn'; choose one of light, unetr"):
        tiny(decoder="fpn")
    volume = {"spatial_dims": 3, "img_size": 32}
    assert isinstance(tiny(**volume).head.decoder, UNETRDecoder2d)  # 3-D keeps UNETR
    with pytest.raises(ValueError, match="2-D only"):
        tiny(decoder="light", **volume)


@pytest.mark.parametrize("decoder", ["light", "unetr"])
def test_network_scripts_to_the_same_output(decoder):
    model = tiny(decoder=decoder).eval()
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        assert_close_to_scale(torch.jit.script(model)(x), model(x))


def _as_instance_norm_nchw(decoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of a 2-D decoder with nn.InstanceNorm2d for every one-channel-per-group GroupNorm, as before its
    channels-last form; UNETR's copy also runs on NCHW activations (the light decoder converts its inputs itself)."""
    old = copy.deepcopy(decoder)
    for module in list(old.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.GroupNorm) and child.num_groups == child.num_channels:
                norm = torch.nn.InstanceNorm2d(child.num_channels, eps=child.eps, affine=child.affine)
                if child.affine:
                    norm.load_state_dict(child.state_dict())
                setattr(module, name, norm)
    old.forward = lambda maps, image: type(decoder).forward(old, [m.contiguous() for m in maps], image)
    torch.nn.Module.__setattr__(old, "channels_last", False)
    return old


@pytest.mark.parametrize("decoder", ["light", "unetr"])
def test_channels_last_decoders_compute_the_instance_norm_decoders_output(decoder):
    """The 2-D decoders run channels-last at inference with instance norm written as GroupNorm (much faster
    convolutions and norms on CPUs): the same parameter names as with nn.InstanceNorm2d, the same output to fp32
    rounding in eval and in training mode, a contiguous NCHW output, and the same gradients. Gradients are compared
    in float64: in fp32 a pre-activation within rounding of a ReLU's kink can fall on either side in the two layouts,
    and one such element moved the maps' gradients by ~1 % for one initialisation of the light decoder (both fp32
    layouts were then ~1-3 % from float64, which agreed to 1e-14)."""
    model = tiny(decoder=decoder, freeze_encoder=False)
    for m in model.head.decoder.modules():  # trained-looking affine parameters, not the identity they start at
        if isinstance(m, torch.nn.GroupNorm) and m.affine:
            torch.nn.init.uniform_(m.weight, 0.5, 1.5), torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    ours = model.head.decoder
    norms = [m for m in ours.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels for m in norms)  # per channel: instance norm
    assert not [m for m in ours.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    old = _as_instance_norm_nchw(ours)
    assert list(old.state_dict()) == list(ours.state_dict())  # model.pt files of either form load into both
    torch.manual_seed(1)
    maps = [torch.randn(2, 192, 3, 5, requires_grad=True) for _ in range(4)]
    image = torch.randn(2, 3, 48, 80)
    for training in (False, True):  # eval: channels-last; training: NCHW (GroupNorm's backward is slow channels-last)
        ours.train(training), old.train(training)
        out, expected = ours(maps, image), old(maps, image)
        assert out.is_contiguous() and out.shape == (2, 2, 48, 80)
        assert_close_to_scale(out, expected, rel=1e-4)
    ours64 = copy.deepcopy(ours).double()
    old64 = _as_instance_norm_nchw(ours64).double()
    maps64 = [m.detach().double().requires_grad_() for m in maps]
    for training in (False, True):
        ours64.train(training), old64.train(training)
        grads = torch.autograd.grad(ours64(maps64, image.double()).square().sum(), maps64)
        expected_grads = torch.autograd.grad(old64(maps64, image.double()).square().sum(), maps64)
        for g, e in zip(grads, expected_grads):
            assert_close_to_scale(g, e, rel=1e-9)


def test_model_pt_is_rebuilt_with_the_decoder_it_was_trained_with(tmp_path):
    """inference.json rebuilds the decoder a model.pt holds, whatever the bundle's default; forcing the other decoder
    is refused, naming the file and the fix."""
    overrides = {"arch": "vit_tiny", "image_size": 32, "feature_size": 8, "device": "$torch.device('cpu')"}
    for decoder in ("unetr", "light"):
        path = tmp_path / decoder / "model.pt"
        path.parent.mkdir()
        torch.save(tiny("segmentation", 1, decoder=decoder).state_dict(), path)
        assert trained_decoder(path) == decoder
        parser = ConfigParser()
        parser.read_config(str(VESSELS / "inference.json"))
        parser.update({**overrides, "ckpt_path": str(path)})
        network = parser.get_parsed_content("network_def")
        assert network.head.decoder_name == decoder
        SafeCheckpointLoader(load_path=str(path), load_dict={"model": network})(None)

    parser = ConfigParser()
    parser.read_config(str(VESSELS / "inference.json"))
    parser.update({**overrides, "ckpt_path": str(tmp_path / "light" / "model.pt"), "decoder": "unetr"})
    with pytest.raises(SystemExit, match=r"light/model\.pt holds a model trained with the light dense decoder.*"
                                         r"--decoder light"):
        SafeCheckpointLoader(load_path=str(tmp_path / "light" / "model.pt"),
                             load_dict={"model": parser.get_parsed_content("network_def")})(None)


def test_trained_decoder_falls_back_to_the_default(tmp_path):
    assert trained_decoder(tmp_path / "missing.pt") == DEFAULT_DENSE_DECODER
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert trained_decoder(tmp_path / "junk.pt", "light") == "light"  # the loader names what is wrong with it
    torch.save(VisionFMTaskModel("classification", 2, arch="vit_tiny", img_size=32).state_dict(), tmp_path / "c.pt")
    assert trained_decoder(tmp_path / "c.pt", "light") == "light"  # another head: no decoder to read
