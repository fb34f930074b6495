"""The original VisionFM multi-task fundus head: a 5-way DR grade and 8 binary diseases from one set of features.

Outputs (13 logits), in the reference order: Healthy, DR-1, DR-2, DR-3, DR-4 (the 5-way DR grade, softmax), then
binary DR, Glaucoma, AMD, Cataract, Hypertensive Retinopathy, Retinal Vein Occlusion, Myopia, Retinal Detachment
(one sigmoid each). Labels are a (9,) vector per image, in `MULTITASK_TASKS` order: the grade 0-4 then eight 0/1
labels, with -1 for "unknown" (a task not graded for that image); unknown labels are masked out of the loss and
the metrics.

The loss is the reference's: 5 x CE(grade) + the sum of one BCE per binary task, hypertensive retinopathy
weighted x5. Each term is the mean over the images labelled for that task, so a batch where a task has no label
contributes exactly 0 for it (never NaN).
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch import nn

from visionfm_core.models.heads import register_head
from visionfm_core.tasks.classification.head import CLSClassificationHead, OriginalClassificationHead

__all__ = ["GRADE_TASK", "GRADE_CLASSES", "BINARY_TASKS", "MULTITASK_TASKS", "MULTITASK_OUTPUTS",
           "DEFAULT_BINARY_WEIGHTS", "MultiTaskHead", "OriginalMultiTaskHead", "MultiTaskLoss",
           "multitask_probabilities", "MultiTaskProbabilitiesd"]

GRADE_TASK = "dr_grade"
GRADE_CLASSES = ("healthy", "dr_1", "dr_2", "dr_3", "dr_4")
BINARY_TASKS = ("dr", "glaucoma", "amd", "cataract", "hypertensive_retinopathy", "retinal_vein_occlusion", "myopia",
                "retinal_detachment")
MULTITASK_TASKS = (GRADE_TASK, *BINARY_TASKS)            # the (9,) label vector
MULTITASK_OUTPUTS = (*GRADE_CLASSES, *BINARY_TASKS)       # the 13 outputs
# the reference weights hypertensive retinopathy x5 among the binary tasks
DEFAULT_BINARY_WEIGHTS = tuple(5.0 if t == "hypertensive_retinopathy" else 1.0 for t in BINARY_TASKS)


@register_head("multitask")
class MultiTaskHead(CLSClassificationHead):
    """The VisionFM classification head (BN-MLP on the last-4 CLS tokens) with `num_grades` grade logits followed
    by `num_outputs - num_grades` binary logits (13 = 5 + 8 for the reference). Same keys (`layers.*`) and init as
    the classification head, so the two are interchangeable on one encoder."""

    def __init__(self, encoder: nn.Module, num_outputs: int = len(MULTITASK_OUTPUTS), num_grades: int = 5,
                 n_last_blocks: int = 4, dropout: float = 0.1):
        if not 2 <= num_grades < num_outputs:
            raise ValueError(f"multitask head: need 2 <= num_grades < num_outputs, got num_grades={num_grades}, "
                             f"num_outputs={num_outputs}")
        super().__init__(encoder, num_outputs, n_last_blocks, dropout)
        self.num_grades = num_grades


@register_head("original_multitask")
class OriginalMultiTaskHead(OriginalClassificationHead):
    """The original release's multi-task head under its tensor names: its `ClsHead` (layers 3) on the CLS tokens of
    the last 4 blocks after the final norm, with 13 outputs (`channel_bn.*`, `classifier.{0,3,6}.*`), so its
    trained heads run unchanged. The first `num_grades` logits are the grade (softmax), the rest binary."""

    def __init__(self, encoder: nn.Module, num_outputs: int = len(MULTITASK_OUTPUTS), num_grades: int = 5,
                 n_last_blocks: int = 4, dropout: float = 0.1):
        if not 2 <= num_grades < num_outputs:
            raise ValueError(f"multitask head: need 2 <= num_grades < num_outputs, got num_grades={num_grades}, "
                             f"num_outputs={num_outputs}")
        super().__init__(encoder, num_outputs, n_last_blocks=n_last_blocks, avgpool_patchtokens=0, layers=3,
                         dropout=dropout)
        self.num_grades = num_grades


def multitask_probabilities(logits: torch.Tensor, num_grades: int = len(GRADE_CLASSES)) -> torch.Tensor:
    """Softmax over the first `num_grades` logits, sigmoid over the rest, along the last dimension."""
    grade, binary = logits[..., :num_grades], logits[..., num_grades:]
    return torch.cat([torch.softmax(grade.float(), dim=-1), torch.sigmoid(binary.float())], dim=-1)


class MultiTaskProbabilitiesd(MapTransform):
    """Postprocessing: the 13 logits under `keys` -> probabilities (:func:`multitask_probabilities`); works on a
    batch (B, 13) or a decollated sample (13,)."""

    def __init__(self, keys: KeysCollection = "pred", num_grades: int = len(GRADE_CLASSES),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_grades = int(num_grades)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = multitask_probabilities(torch.as_tensor(d[key]), self.num_grades)
        return d


class MultiTaskLoss(nn.Module):
    """`grade_weight` x CE(grade logits, grade) + sum_t `binary_weights[t]` x BCE(logit_t, label_t), masked.

    Args:
        grade_weight: weight of the grade cross-entropy (5, the reference's).
        binary_weights: one weight per binary task, in `BINARY_TASKS` order (hypertensive retinopathy x5 by
            default, the reference's).
        num_grades: number of grade logits at the start of the output.

    `forward(logits (B, G + T), labels (B, 1 + T))`: labels hold the grade then the binary labels, -1 (or any
    negative value, or NaN) where unknown. Each term is the mean over the images that have that label; a task
    with no label in the batch contributes 0.
    """

    def __init__(self, grade_weight: float = 5.0, binary_weights: Sequence[float] = DEFAULT_BINARY_WEIGHTS,
                 num_grades: int = len(GRADE_CLASSES)):
        super().__init__()
        self.grade_weight = float(grade_weight)
        self.num_grades = int(num_grades)
        self.register_buffer("binary_weights", torch.as_tensor(list(binary_weights), dtype=torch.float32),
                             persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n_binary = self.binary_weights.numel()
        if logits.ndim != 2 or logits.shape[1] != self.num_grades + n_binary:
            raise ValueError(f"MultiTaskLoss: logits must be (B, {self.num_grades + n_binary}), got "
                             f"{tuple(logits.shape)}")
        labels = torch.as_tensor(labels).as_subclass(torch.Tensor).to(logits.device, torch.float32)
        if labels.shape != (logits.shape[0], 1 + n_binary):
            raise ValueError(f"MultiTaskLoss: labels must be (B, {1 + n_binary}) with -1 for unknown, got "
                             f"{tuple(labels.shape)}")
        labels = torch.nan_to_num(labels, nan=-1.0)
        known = labels >= 0
        # grade: CE summed over labelled images / their count (ignore_index gives 0 for the others)
        grade = torch.where(known[:, 0], labels[:, 0], torch.full_like(labels[:, 0], -100)).long()
        ce = F.cross_entropy(logits[:, : self.num_grades].float(), grade, ignore_index=-100, reduction="sum")
        ce = ce / known[:, 0].sum().clamp(min=1)
        # binary: BCE per element, zeroed where unknown, mean per task over its labelled images
        mask = known[:, 1:].float()
        bce = F.binary_cross_entropy_with_logits(logits[:, self.num_grades:].float(), labels[:, 1:].clamp(min=0),
                                                 reduction="none") * mask
        per_task = bce.sum(dim=0) / mask.sum(dim=0).clamp(min=1)
        return self.grade_weight * ce + (self.binary_weights.to(per_task.device) * per_task).sum()
