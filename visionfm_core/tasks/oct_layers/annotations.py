"""Partially annotated OCT cubes: voxels nobody annotated are neither taught nor scored.

Public OCT datasets annotate a few B-scans of each cube, often only over a central lateral band (Duke DME, Chiu et
al. 2015: 11 of 61 B-scans). A label volume marks every voxel without an annotation with `IGNORE_LABEL` (255); then
- the loss leaves those voxels out (`MaskedDiceCELoss`: cross-entropy with `ignore_index`, Dice on the annotated
  voxels only),
- training crops only from B-scans that carry an annotation (`KeepAnnotatedSlicesd`; a cube without any annotated
  B-scan is refused),
- validation Dice and the thickness errors leave them out (`MaskIgnoredd` before the one-hot; the thickness
  writer scores only fully annotated A-scans).
"""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.losses import DiceLoss
from monai.transforms import MapTransform
from torch import nn

__all__ = ["IGNORE_LABEL", "MaskedDiceCELoss", "KeepAnnotatedSlicesd", "MaskIgnoredd"]

IGNORE_LABEL = 255  # a uint8 label volume's "not annotated" value


class MaskedDiceCELoss(nn.Module):
    """Dice + cross-entropy (as MONAI's `DiceCELoss(softmax=True, to_onehot_y=True, batch=True)`) over the annotated
    voxels only: target voxels equal to `ignore_index` add nothing to either term. Logits (B, C, ...), target
    (B, 1, ...) class indices. A batch without any annotated voxel gives a zero loss (with a gradient path)."""

    def __init__(self, ignore_index: int = IGNORE_LABEL, lambda_dice: float = 1.0, lambda_ce: float = 1.0):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.dice = DiceLoss(include_background=True, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.as_subclass(torch.Tensor).long()
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return logits.sum() * 0.0
        ce = F.cross_entropy(logits, target[:, 0], ignore_index=self.ignore_index)
        mask = valid.to(logits.dtype)
        onehot = F.one_hot(target.masked_fill(~valid, 0)[:, 0], logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        dice = self.dice(logits.softmax(dim=1) * mask, onehot * mask)
        return self.lambda_dice * dice + self.lambda_ce * ce


def _name(x) -> str:
    return str(getattr(x, "meta", {}).get("filename_or_obj", "<label>"))


class KeepAnnotatedSlicesd(MapTransform):
    """Keep only the B-scans (last axis) whose label has at least one annotated voxel, in every key, so training
    crops come from annotated B-scans. A cube with none is refused naming its label file."""

    def __init__(self, keys: KeysCollection, label_key: str = "label", ignore_index: int = IGNORE_LABEL,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key, self.ignore_index = label_key, int(ignore_index)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        label = d[self.label_key]
        annotated = (torch.as_tensor(label) != self.ignore_index).flatten(0, -2).any(dim=0)  # (K,)
        if not bool(annotated.any()):
            raise ValueError(f"label {_name(label)}: no annotated B-scan (every voxel is the ignore value "
                             f"{self.ignore_index}): nothing to train on in this cube")
        if bool(annotated.all()):
            return d
        keep = torch.nonzero(annotated).flatten()
        for key in self.key_iterator(d):
            d[key] = d[key][..., keep]
        return d


class MaskIgnoredd(MapTransform):
    """Before scoring: voxels whose label is `ignore_index` become background in both the label and the prediction
    (class probabilities (C, ...) or indices (1, ...)), so they count as neither hit nor miss of any foreground
    class (foreground Dice leaves them out)."""

    def __init__(self, pred_key: str = "pred", label_key: str = "label", ignore_index: int = IGNORE_LABEL,
                 allow_missing_keys: bool = False) -> None:
        super().__init__([pred_key, label_key], allow_missing_keys)
        self.pred_key, self.label_key, self.ignore_index = pred_key, label_key, int(ignore_index)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        label, pred = d[self.label_key], d[self.pred_key]
        ignored = torch.as_tensor(label) == self.ignore_index  # (1, ...)
        if not bool(ignored.any()):
            return d
        d[self.label_key] = label.masked_fill(ignored, 0)
        if pred.shape[0] == 1:  # class indices
            d[self.pred_key] = pred.masked_fill(ignored, 0)
        else:  # probabilities: all on the background
            background = torch.zeros_like(pred)
            background[0] = 1
            d[self.pred_key] = torch.where(ignored.expand_as(pred), background, pred)
        return d
