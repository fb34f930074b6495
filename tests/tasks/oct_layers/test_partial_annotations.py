"""Partially annotated OCT cubes (Duke DME annotates 11 of 61 B-scans, each over a central band): voxels marked
IGNORE_LABEL are neither taught (loss, crops) nor scored (Dice, thickness errors)."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.losses import DiceCELoss, DiceLoss

from visionfm_core.tasks.oct_layers import (
    IGNORE_LABEL,
    KeepAnnotatedSlicesd,
    MaskedDiceCELoss,
    MaskIgnoredd,
    ValidateLabelVolumed,
    dice_per_class,
)
from tests_common import assert_close_to_scale


def test_masked_loss_is_monais_dice_ce_and_leaves_unannotated_voxels_out():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8, 1), torch.randint(0, 4, (2, 1, 8, 8, 1))
    reference = DiceCELoss(softmax=True, to_onehot_y=True, batch=True)
    assert_close_to_scale(MaskedDiceCELoss()(logits, target), reference(logits, target))
    # annotated over a band only: the loss is that of the annotated voxels alone (as a flat list of voxels)
    partial = target.clone()
    partial[..., :3, :] = IGNORE_LABEL
    keep = (partial != IGNORE_LABEL)[:, 0]  # (B, H, W, 1)
    flat_logits = logits.movedim(1, -1)[keep].T[None, :, :, None]  # (1, C, N, 1)
    flat_target = partial[:, 0][keep][None, None, :, None]
    ce = torch.nn.functional.cross_entropy(flat_logits, flat_target[:, 0])
    dice = DiceLoss(softmax=True, to_onehot_y=True, batch=True)(flat_logits, flat_target)
    assert_close_to_scale(MaskedDiceCELoss()(logits, partial), dice + ce)
    # changing the logits of unannotated voxels changes nothing; a batch with no annotation gives 0 and a gradient
    moved = logits.clone()
    moved[..., :3, :] += 5.0
    assert_close_to_scale(MaskedDiceCELoss()(moved, partial), MaskedDiceCELoss()(logits, partial))
    nothing = torch.full_like(target, IGNORE_LABEL)
    leaf = logits.clone().requires_grad_(True)
    loss = MaskedDiceCELoss()(leaf, nothing)
    loss.backward()
    assert loss.item() == 0.0 and leaf.grad is not None


def test_training_keeps_only_annotated_bscans_and_refuses_a_cube_without_any():
    image = MetaTensor(torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 3, 3, 4).clone())
    label = MetaTensor(torch.full((1, 3, 3, 4), IGNORE_LABEL), meta={"filename_or_obj": "cube_layers.nii.gz"})
    label[..., 1] = 2
    label[0, 0, 0, 3] = 1  # B-scan 3: one annotated voxel is enough
    out = KeepAnnotatedSlicesd(["image", "label"])({"image": image, "label": label})
    assert out["image"].shape[-1] == 2 and out["image"][0, 0, 0].tolist() == [1.0, 3.0]
    assert out["label"].shape[-1] == 2
    with pytest.raises(ValueError, match=r"cube_layers.nii.gz: no annotated B-scan"):
        KeepAnnotatedSlicesd(["image", "label"])({"image": image, "label": label.fill_(IGNORE_LABEL)})


def test_label_values_outside_the_classes_and_the_ignore_value_are_named():
    image = MetaTensor(torch.zeros(1, 4, 4, 2), meta={"filename_or_obj": "cube.nii.gz"})
    label = MetaTensor(torch.zeros(1, 4, 4, 2), meta={"filename_or_obj": "cube_layers.nii.gz"})
    label[0, 0, 0, 0], label[0, 1, 0, 0] = IGNORE_LABEL, 3
    ValidateLabelVolumed("label", 9, ignore_index=IGNORE_LABEL)({"image": image, "label": label})
    with pytest.raises(ValueError, match=r"cube_layers.nii.gz .*values 255 are outside the 9 classes"):
        ValidateLabelVolumed("label", 9)({"image": image, "label": label})
    label[0, 2, 0, 0], label[0, 3, 0, 0] = 12, 254
    with pytest.raises(ValueError, match=r"values 12, 254 are outside the 9 classes 0..8 and the ignore value 255"):
        ValidateLabelVolumed("label", 9, ignore_index=IGNORE_LABEL)({"image": image, "label": label})


def test_scores_leave_unannotated_voxels_out():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (10, 6, 4))
    pred = truth.copy()
    pred[:, :2] = 0  # wrong in columns 0-1 ...
    label = truth.copy()
    label[:, :2] = IGNORE_LABEL  # ... which nobody annotated: Dice is perfect on the annotated voxels
    assert dice_per_class(pred, label, 3) == [1.0, 1.0]
    assert dice_per_class(pred, truth, 3)[0] < 1.0
    # validation postprocessing: probabilities and label become background where unannotated
    probs = torch.softmax(torch.randn(3, 10, 6, 4), 0)
    masked = MaskIgnoredd()({"pred": probs, "label": torch.as_tensor(label)[None]})
    assert int(masked["label"].max()) == 2 and bool((masked["pred"].argmax(0)[:, :2] == 0).all())
    assert torch.equal(masked["pred"][:, :, 2:], probs[:, :, 2:])
