"""Schedules at key points, AdamW parameter groups, per-parameter clipping, last-layer freeze."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from visionfm_core.ssl.head import build_ibot_models
from visionfm_core.ssl.recipe import IBOTRecipe
from visionfm_core.ssl.schedules import (
    IBOTSchedules,
    cancel_last_layer_gradients,
    clip_gradients,
    cosine_schedule,
    param_groups,
    scaled_lr,
    teacher_temp_schedule,
)


def test_cosine_schedule_key_points():
    s = cosine_schedule(1.0, 0.1, epochs=10, iters_per_epoch=4, warmup_epochs=2, start_warmup=0.0)
    assert len(s) == 40
    assert s[0] == 0.0 and s[4] == pytest.approx(0.5)  # linear warm-up over 8 iterations
    assert s[7] < 1.0 and s[8] == pytest.approx(1.0)  # peak right after the warm-up
    assert s[-1] == pytest.approx(0.1)  # reaches the final value at the last iteration
    assert s[8 + 31 // 2] == pytest.approx(0.55, abs=0.03)  # half-way down the cosine
    assert np.all(np.diff(s[8:]) <= 0)
    flat = cosine_schedule(0.04, 0.4, epochs=3, iters_per_epoch=5)
    assert flat[0] == pytest.approx(0.04) and flat[-1] == pytest.approx(0.4) and np.all(np.diff(flat) >= 0)


def test_visionfm_schedules():
    sch = IBOTSchedules.build(IBOTRecipe(), iters_per_epoch=10, total_batch=1024)
    peak = 7.5e-5 * 1024 / 256
    assert scaled_lr(1024) == pytest.approx(peak)
    assert sch.lr[0] == 0.0 and sch.lr[500] == pytest.approx(peak)  # 50 warm-up epochs
    assert sch.lr[250] == pytest.approx(peak / 2)
    assert sch.lr[-1] == pytest.approx(2e-6)
    assert sch.weight_decay[0] == pytest.approx(0.04) and sch.weight_decay[-1] == pytest.approx(0.4)
    assert sch.momentum[0] == pytest.approx(0.996) and sch.momentum[-1] == pytest.approx(1.0)
    assert len(sch) == 1000 and sch.warmup_epochs == 50
    at = sch.at(500)
    assert (at.lr, at.weight_decay, at.momentum) == (
        pytest.approx(peak), pytest.approx(sch.weight_decay[500]), pytest.approx(sch.momentum[500]))
    assert sch.at(10**6) == sch.at(999)  # beyond the end the last values hold
    short = IBOTSchedules.build(IBOTRecipe(epochs=2), iters_per_epoch=3, total_batch=8)  # warm-up cut to the run
    assert short.warmup_epochs == 2 and len(short) == 6
    with pytest.raises(ValueError):
        IBOTSchedules.build(IBOTRecipe(), iters_per_epoch=0, total_batch=8)


def test_teacher_temperatures_per_iteration():
    sch = IBOTSchedules.build(IBOTRecipe(), iters_per_epoch=10, total_batch=256)
    cls = [sch.at(epoch * 10 + 5).teacher_temp for epoch in range(100)]
    patch = [sch.at(epoch * 10 + 5).patch_teacher_temp for epoch in range(100)]
    assert cls[0] == pytest.approx(0.07) and cls[29] == pytest.approx(0.04)  # VisionFM: CLS 0.07 -> 0.04 over 30
    assert cls[30] == cls[99] == sch.at(10**6).teacher_temp == pytest.approx(0.04)
    assert 0.04 < cls[15] < 0.07
    assert patch[0] == pytest.approx(0.04) and patch[29] == patch[99] == pytest.approx(0.07)  # patch 0.04 -> 0.07
    assert len(set(sch.teacher_temp[150:160])) == 1  # constant within an epoch, as in the original
    assert len(set(sch.teacher_temp[150:161])) == 2
    short = IBOTSchedules.build(IBOTRecipe(epochs=3, warmup_teacher_temp_epochs=5), iters_per_epoch=2, total_batch=8)
    assert len(short.teacher_temp) == len(short.patch_teacher_temp) == 6


def test_teacher_temp_schedule():
    t = teacher_temp_schedule(0.07, 0.04, 30, 100)
    assert len(t) == 100 and t[0] == pytest.approx(0.07) and t[29] == pytest.approx(0.04) and t[-1] == 0.04
    assert np.all(np.diff(t[:30]) < 0)


def test_param_groups_skip_only_biases_and_1d_parameters():
    student, _ = build_ibot_models("vit_tiny", 16, 32, out_dim=16, hidden_dim=16, bottleneck_dim=8)
    wrapped = nn.ModuleDict({"module": student})  # names gain a prefix, as under DDP
    for model, prefix in ((student, ""), (wrapped, "module.")):
        decay, no_decay = param_groups(model)
        assert decay["apply_wd"] and not no_decay["apply_wd"] and no_decay["weight_decay"] == 0.0
        names = {id(p): n for n, p in model.named_parameters()}
        no_decay_names = {names[id(p)] for p in no_decay["params"]}
        decay_names = {names[id(p)] for p in decay["params"]}
        for n in ("backbone.pos_embed", "backbone.cls_token", "backbone.masked_embed"):  # decayed, as the original
            assert prefix + n in decay_names
        assert prefix + "backbone.norm.weight" in no_decay_names
        assert prefix + "backbone.blocks.0.attn.qkv.bias" in no_decay_names
        assert prefix + "backbone.blocks.0.attn.qkv.weight" in decay_names
        assert prefix + "head.last_layer.weight_v" in decay_names
        assert prefix + "head.last_layer.weight_g" not in decay_names | no_decay_names  # frozen gain
        assert all(p.ndim > 1 for p in decay["params"])
    opt = torch.optim.AdamW(param_groups(student))
    assert len(opt.param_groups) == 2


def test_clip_gradients_per_parameter():
    a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(3))
    model = nn.ParameterList([a, b])
    a.grad = torch.full((4,), 5.0)  # norm 10
    b.grad = torch.tensor([1.0, 0.0, 0.0])  # norm 1: left alone (a global clip would shrink it)
    norms = clip_gradients(model, clip=3.0)
    torch.testing.assert_close(norms, torch.tensor([10.0, 1.0]))
    assert a.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    torch.testing.assert_close(b.grad, torch.tensor([1.0, 0.0, 0.0]))
    assert math.isclose(float(a.grad[0]), 1.5, rel_tol=1e-5)  # direction kept


def test_cancel_last_layer_gradients():
    student, _ = build_ibot_models("vit_tiny", 16, 32, out_dim=16, hidden_dim=16, bottleneck_dim=8)
    for p in student.parameters():
        p.grad = torch.ones_like(p)
    cancel_last_layer_gradients(student, epoch=3, freeze_epochs=3)
    assert student.head.last_layer.weight_v.grad is not None
    cancel_last_layer_gradients(student, epoch=2, freeze_epochs=3)
    assert student.head.last_layer.weight_v.grad is None
    assert student.head.mlp[0].weight.grad is not None
