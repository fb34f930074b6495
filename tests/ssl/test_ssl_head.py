"""iBOT head: state-dict names of the original checkpoints, weight-norm loading, masked-only forward."""

import copy
import warnings

import pytest
import torch
from torch import nn

from visionfm_core.ssl.head import IBOTHead, IBOTModel, WeightNormLinear, build_ibot_models, masked_patch_index

EXPECTED_KEYS = {
    "mlp.0.weight",
    "mlp.0.bias",
    "mlp.2.weight",
    "mlp.2.bias",
    "mlp.4.weight",
    "mlp.4.bias",
    "last_layer.weight_g",
    "last_layer.weight_v",
}


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models gain nothing from threads, and oversubscribed CI machines lose a lot
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _OriginalStyleHead(nn.Module):
    """The layout of the original checkpoints' head, built with torch's (old) weight_norm."""

    def __init__(self, in_dim, out_dim, hidden, bottleneck, param_api=False):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wn = torch.nn.utils.parametrizations.weight_norm if param_api else torch.nn.utils.weight_norm
            self.last_layer = wn(nn.Linear(bottleneck, out_dim, bias=False))

    def forward(self, x):
        return self.last_layer(nn.functional.normalize(self.mlp(x), dim=-1))


def test_state_dict_names_and_shapes():
    head = IBOTHead(768, 8192, 2048, 256)
    sd = head.state_dict()
    assert set(sd) == EXPECTED_KEYS
    assert sd["last_layer.weight_g"].shape == (8192, 1) and sd["last_layer.weight_v"].shape == (8192, 256)
    assert sd["mlp.0.weight"].shape == (2048, 768) and sd["mlp.4.weight"].shape == (256, 2048)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) for m in head.modules())


def test_gain_fixed_at_one_when_norm_last_layer():
    head = IBOTHead(32, 64, 48, 16, norm_last_layer=True)
    assert not head.last_layer.weight_g.requires_grad
    assert torch.all(head.last_layer.weight_g == 1)
    out = head(torch.randn(5, 32))
    assert out.shape == (5, 64) and out.abs().max() <= 1 + 1e-5  # cosine similarities
    free = IBOTHead(32, 64, 48, 16, norm_last_layer=False)
    assert free.last_layer.weight_g.requires_grad
    assert torch.all(free.last_layer.weight_g == 1)  # a trainable gain also starts at 1, as DINO/iBOT fill it


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_last_layer_keeps_default_linear_init_as_the_original(norm_last_layer):
    # the original makes the weight-normed last layer after the MLP's trunc_normal(0.02) init, so its direction
    # keeps nn.Linear's default init: kaiming-uniform with bound 1 / sqrt(fan_in), std = bound / sqrt(3)
    torch.manual_seed(0)
    head = IBOTHead(32, 4096, 48, 256, norm_last_layer=norm_last_layer)
    v = head.last_layer.weight_v.detach()
    bound = 1 / 256**0.5
    assert v.abs().max() <= bound
    assert v.std().item() == pytest.approx(bound / 3**0.5, rel=0.02)  # 0.036, not 0.02
    assert v.mean().abs() < 1e-3
    assert torch.all(head.last_layer.weight_g == 1)  # gain filled with 1 whether trained or not
    for layer in (head.mlp[0], head.mlp[2], head.mlp[4]):  # the MLP keeps trunc_normal(0.02), zero bias
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.all(layer.bias == 0)


@pytest.mark.parametrize("param_api", [False, True])
def test_loads_torch_weight_norm_checkpoints(param_api):
    torch.manual_seed(0)
    original = _OriginalStyleHead(32, 64, 48, 16, param_api=param_api)
    with torch.no_grad():
        original.last_layer.weight.mul_(1.0)  # materialise; gain stays ||v||
    sd = original.state_dict()
    if not param_api:
        assert set(sd) == EXPECTED_KEYS
    head = IBOTHead(32, 64, 48, 16, norm_last_layer=False)
    head.load_state_dict(sd, strict=True)
    x = torch.randn(7, 32)
    torch.testing.assert_close(head(x), original(x))
    # and the fixed-gain head loads a file whose gains are 1 (how the original saves norm_last_layer heads)
    with torch.no_grad():
        for k in list(sd):
            if k.endswith(("weight_g", "original0")):
                sd[k] = torch.ones_like(sd[k])
    fixed = IBOTHead(32, 64, 48, 16)
    fixed.load_state_dict(sd)
    assert not fixed.last_layer.weight_g.requires_grad
    torch.testing.assert_close(fixed.last_layer.weight.norm(dim=1), torch.ones(64))


def test_weight_norm_linear_gradients_and_deepcopy():
    layer = WeightNormLinear(8, 4, fix_gain=True)
    layer(torch.randn(3, 8)).sum().backward()
    assert layer.weight_v.grad is not None and layer.weight_g.grad is None
    clone = copy.deepcopy(layer)
    torch.testing.assert_close(clone.weight, layer.weight)


def _tiny_pair(**kw):
    torch.manual_seed(0)
    return build_ibot_models("vit_tiny", 16, 32, out_dim=64, hidden_dim=32, bottleneck_dim=16, **kw)


def test_build_models_teacher_is_copy_without_mask_token_or_drop_path():
    student, teacher = _tiny_pair(drop_path_rate=0.1)
    s, t = student.state_dict(), teacher.state_dict()
    assert set(s) - set(t) == {"backbone.masked_embed"}
    assert all(torch.equal(s[k], t[k]) for k in t)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert student.backbone.blocks[-1].drop_path.rate == pytest.approx(0.1)
    assert all(b.drop_path.rate == 0 for b in teacher.backbone.blocks)
    assert {k.split(".")[0] for k in t} == {"backbone", "head"}  # the original teacher's key layout


def test_masked_only_forward_equals_full_head_gathered():
    student, teacher = _tiny_pair(drop_path_rate=0.0)
    student.eval()
    b = 3
    g = [torch.randn(b, 3, 32, 48), torch.randn(b, 3, 32, 48)]  # 2 x 3 patch grid
    locs = [torch.randn(b, 3, 16, 16)] * 2
    masks = torch.zeros(2 * b, 2, 3, dtype=torch.bool)
    masks[0, 0, :2] = True
    masks[3, 1, 1] = True
    masks[5] = True
    cls, patch = student(g, masks=masks, local_crops=locs)
    assert cls.shape == (4, b, 64)
    idx = masked_patch_index(masks)
    assert patch.shape == (len(idx), 64) == (2 + 1 + 6, 64)
    with torch.no_grad():
        tokens = student.backbone.forward_features(torch.cat(g), mask=masks.flatten(1))
        full = student.head(tokens[:, 1:])  # the head on every patch token, then gathered
        torch.testing.assert_close(patch, full.flatten(0, 1)[idx])
        torch.testing.assert_close(cls[:2].flatten(0, 1), student.head(tokens[:, 0]))
        local_cls = student.head(student.backbone.forward_features(torch.cat(locs))[:, 0])
        torch.testing.assert_close(cls[2:].flatten(0, 1), local_cls)
        # the teacher sees the unmasked crop but is read out at the same positions
        t_cls, t_patch = teacher(g, masks=masks, mask_input=False)
        t_tokens = teacher.backbone.forward_features(torch.cat(g))
        torch.testing.assert_close(t_patch, teacher.head(t_tokens[:, 1:]).flatten(0, 1)[idx])
    assert student(g)[1] is None
    with pytest.raises(TypeError, match="lists of crops"):
        student(torch.cat(g))


def test_head_trains_shared_for_cls_and_patches():
    student, _ = _tiny_pair(drop_path_rate=0.0)
    g = [torch.randn(2, 3, 32, 32)] * 2
    masks = torch.ones(4, 4, dtype=torch.bool)
    cls, patch = student(g, masks=masks)
    patch.sum().backward()  # patch logits alone reach the shared head and the mask token
    assert student.head.mlp[0].weight.grad.abs().sum() > 0
    assert student.backbone.masked_embed.grad.abs().sum() > 0
    assert isinstance(student, IBOTModel)
