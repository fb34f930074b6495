"""iBOT losses against a direct implementation of the formulas; centres; temperatures."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from visionfm_core.ssl.head import masked_patch_index
from visionfm_core.ssl.loss import DINOClsLoss, IBOTPatchLoss, entropy, patch_weights
from visionfm_core.ssl.recipe import DEFAULT_RECIPE


def _ce(t, s_logits, temp):
    return -(t * F.log_softmax(s_logits / temp, dim=-1)).sum(-1)


def test_cls_loss_matches_direct_formula():
    torch.manual_seed(0)
    k, b, n_crops = 32, 5, 4  # 2 global + 2 local crops
    loss_fn = DINOClsLoss(k)
    loss_fn.center.normal_()
    student = torch.randn(n_crops, b, k)
    teacher_logits = torch.randn(2, b, k)
    temp = 0.05
    probs = loss_fn.softmax_center_teacher(teacher_logits, temp)
    # direct: teacher softmax((t - c) / T) on each global crop vs student log_softmax(s / 0.1) on every other crop
    total, terms = 0.0, 0
    for iq in range(2):
        t = F.softmax((teacher_logits[iq] - loss_fn.center) / temp, dim=-1)
        for v in range(n_crops):
            if v == iq:
                continue
            total += _ce(t, student[v], 0.1).mean()
            terms += 1
    torch.testing.assert_close(loss_fn(student, probs), total / terms)
    torch.testing.assert_close(loss_fn(list(student), list(probs)), total / terms)  # lists work too


def test_patch_loss_masked_only_equals_full_token_loss_masked_afterwards():
    torch.manual_seed(1)
    k, b, n = 24, 4, 9
    loss_fn = IBOTPatchLoss(k)
    loss_fn.center.normal_()
    student_full = torch.randn(2 * b, n, k)
    teacher_full = torch.randn(2 * b, n, k)
    masks = torch.rand(2 * b, n) < 0.4
    masks[1] = False  # an image without masked patches counts as 0 in its view's batch mean
    masks[2] = True
    temp = 0.07

    # direct implementation on all tokens: per image mean over its masked patches, mean over images, mean over views
    t_full = F.softmax((teacher_full - loss_fn.center) / temp, dim=-1)
    per_token = _ce(t_full, student_full, 0.1)  # (2B, N)
    per_image = (per_token * masks).sum(1) / masks.sum(1).clamp(min=1)
    reference = per_image.view(2, b).mean(1).mean()

    idx = masked_patch_index(masks)
    s_masked = student_full.flatten(0, 1)[idx]
    t_probs = loss_fn.softmax_center_teacher(teacher_full.flatten(0, 1)[idx], temp)
    ours = loss_fn(s_masked, t_probs, patch_weights(masks), n_images=2 * b)
    torch.testing.assert_close(ours, reference)


def test_patch_loss_with_no_masked_token_is_zero_and_differentiable():
    loss_fn = IBOTPatchLoss(8)
    s = torch.zeros(0, 8, requires_grad=True)
    out = loss_fn(s, torch.zeros(0, 8), torch.zeros(0), n_images=4)
    assert out.item() == 0.0
    out.backward()


def test_loss_is_ln_k_for_uniform_outputs():
    k = 8192
    cls_fn, patch_fn = DINOClsLoss(k), IBOTPatchLoss(k)
    t = cls_fn.softmax_center_teacher(torch.zeros(2, 3, k), 0.04)
    assert cls_fn(torch.zeros(2, 3, k), t).item() == pytest.approx(math.log(k), rel=1e-5)
    tp = patch_fn.softmax_center_teacher(torch.zeros(10, k), 0.07)
    w = patch_weights(torch.ones(2, 5, dtype=torch.bool))
    assert patch_fn(torch.zeros(10, k), tp, w, n_images=2).item() == pytest.approx(math.log(k), rel=1e-5)
    assert entropy(t.flatten(0, 1)).item() == pytest.approx(math.log(k), rel=1e-5)


def test_loss_near_ln_k_at_initialisation():
    from visionfm_core.ssl.head import IBOTHead

    # logits are cosines to random prototypes in the 256-d bottleneck (std 1/16): after /0.1 the student
    # is nearly uniform, so the loss starts at ln(8192) plus a few percent
    torch.manual_seed(0)
    head = IBOTHead(64, 8192, 128, 256)
    fn = DINOClsLoss(8192)
    s = head(torch.randn(2, 6, 64))
    t = fn.softmax_center_teacher(head(torch.randn(2, 6, 64)).detach(), DEFAULT_RECIPE.warmup_teacher_temp)
    assert fn(s, t).item() == pytest.approx(math.log(8192), rel=0.03)


def test_center_update_values():
    torch.manual_seed(2)
    k = 6
    fn = DINOClsLoss(k, center_momentum=0.9)
    x1, x2 = torch.randn(2, 4, k), torch.randn(2, 4, k)
    fn.update_center(x1)
    assert torch.all(fn.center == 0)  # pending until applied
    fn.apply_center_update()
    c1 = 0.1 * x1.reshape(-1, k).mean(0, keepdim=True)
    torch.testing.assert_close(fn.center, c1)
    fn.update_center(x2)
    sd = fn.state_dict()  # saving applies a pending update: a checkpoint never lags
    c2 = 0.9 * c1 + 0.1 * x2.reshape(-1, k).mean(0, keepdim=True)
    torch.testing.assert_close(sd["center"], c2)
    fn.update_center(x1 * 100)
    fn.discard_center_update()
    fn.apply_center_update()
    torch.testing.assert_close(fn.center, c2)

    patch = IBOTPatchLoss(k)
    assert patch.center.shape == (1, 1, k)
    tokens = torch.randn(11, k)
    patch.update_center(tokens)
    patch.apply_center_update()
    torch.testing.assert_close(patch.center, 0.1 * tokens.mean(0).view(1, 1, k))
    before = patch.center.clone()
    patch.update_center(torch.zeros(0, k))  # no masked token in the batch: centre unchanged
    patch.apply_center_update()
    torch.testing.assert_close(patch.center, before)
    # the centre is subtracted before sharpening
    p = patch.softmax_center_teacher(tokens, 0.5)
    torch.testing.assert_close(p, F.softmax((tokens - before.view(1, k)) / 0.5, dim=-1))


def test_center_update_all_reduces_when_distributed(tmp_path):
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        fn = DINOClsLoss(5)
        x = torch.randn(8, 5)
        fn.update_center(x)
        assert fn._pending[1] is not None  # an async work handle
        fn.apply_center_update()
        torch.testing.assert_close(fn.center, 0.1 * x.mean(0, keepdim=True))
    finally:
        dist.destroy_process_group()


def test_losses_take_their_defaults_from_the_recipe_and_own_no_schedule():
    for fn in (DINOClsLoss(), IBOTPatchLoss()):
        assert fn.out_dim == DEFAULT_RECIPE.out_dim == 8192
        assert (fn.student_temp, fn.center_momentum) == (DEFAULT_RECIPE.student_temp, DEFAULT_RECIPE.center_momentum)
        assert not hasattr(fn, "teacher_temp_schedule")
    # the temperature is the caller's, per call: a lower one sharpens the teacher
    logits = torch.randn(4, 8)
    sharp, soft = (DINOClsLoss(8).softmax_center_teacher(logits, t) for t in (0.04, 0.07))
    assert entropy(sharp) < entropy(soft)


def test_cls_loss_needs_pairs():
    fn = DINOClsLoss(4)
    with pytest.raises(ValueError):
        fn(torch.zeros(1, 2, 4), torch.full((1, 2, 4), 0.25))
