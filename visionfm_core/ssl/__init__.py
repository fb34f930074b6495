"""iBOT self-supervised pretraining for VisionFM encoders (masked image modelling + self-distillation).

The recipe: `IBOTRecipe` holds every pretraining default (VisionFM's values), `build_ibot_trainer` makes the
trainer from it; bundles, tests and the benchmark go through both.

Pieces, each small and tested on its own:
- `masking`: BEiT-style block masks for the global crops.
- `augment`: batched multi-crop augmentation (CPU or GPU) with the modality normalisation.
- `head`: the shared projection head (original `head.*` key names) and the backbone+head model.
- `loss`: `DINOClsLoss` and `IBOTPatchLoss` (masked tokens only), centres in buffers; the teacher temperature
  is given per call.
- `schedules`: per-iteration lr / weight decay / momentum / teacher temperature arrays, parameter groups,
  clipping.
- `trainer`: `IBOTTrainer`, a MONAI engine running one iBOT iteration per batch, and `build_ibot_trainer`.
"""

from visionfm_core.ssl.augment import MultiCropAugmentation, image_extents
from visionfm_core.ssl.checkpoint import PretrainingCheckpoint
from visionfm_core.ssl.head import IBOTHead, IBOTModel, WeightNormLinear, build_ibot_models, masked_patch_index
from visionfm_core.ssl.loss import DINOClsLoss, IBOTPatchLoss, entropy, patch_weights
from visionfm_core.ssl.masking import BlockMaskGenerator, random_mask
from visionfm_core.ssl.monitor import EpochAverages, KNNProbe, knn_accuracy, load_initial_weights
from visionfm_core.ssl.recipe import DEFAULT_RECIPE, RECIPE_PRESETS, IBOTRecipe, start_warning
from visionfm_core.ssl.schedules import (
    IBOTSchedules,
    ScheduleValues,
    cancel_last_layer_gradients,
    clip_gradients,
    cosine_schedule,
    param_groups,
    scaled_lr,
    teacher_temp_schedule,
)
from visionfm_core.ssl.trainer import IBOTTrainer, build_ibot_trainer

__all__ = [
    "IBOTRecipe",
    "DEFAULT_RECIPE",
    "RECIPE_PRESETS",
    "start_warning",
    "BlockMaskGenerator",
    "random_mask",
    "MultiCropAugmentation",
    "image_extents",
    "IBOTHead",
    "IBOTModel",
    "WeightNormLinear",
    "build_ibot_models",
    "masked_patch_index",
    "DINOClsLoss",
    "IBOTPatchLoss",
    "entropy",
    "patch_weights",
    "IBOTSchedules",
    "ScheduleValues",
    "cosine_schedule",
    "teacher_temp_schedule",
    "scaled_lr",
    "param_groups",
    "clip_gradients",
    "cancel_last_layer_gradients",
    "IBOTTrainer",
    "build_ibot_trainer",
    "PretrainingCheckpoint",
    "EpochAverages",
    "KNNProbe",
    "knn_accuracy",
    "load_initial_weights",
]
