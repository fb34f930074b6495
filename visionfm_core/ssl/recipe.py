"""The VisionFM iBOT pretraining recipe: every default in one place.

As DINOv2 keeps its defaults in one `ssl_default_config.yaml`, this dataclass is the only place where the
pretraining numbers are written. `build_ibot_trainer` builds the trainer from it, the schedules are computed
from it (`IBOTSchedules.build`), the pretraining bundles' configs and READMEs are generated from it
(scripts/bundlegen/pretraining.py), and the tests and the benchmark override it. The components' own
keyword defaults (losses, masks, augmentation, head) read `DEFAULT_RECIPE` too, so changing a value here
changes it everywhere.

    recipe = IBOTRecipe().replace(arch="vit_small", base_lr=1e-4)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["IBOTRecipe", "DEFAULT_RECIPE"]


@dataclass(frozen=True)
class IBOTRecipe:
    """VisionFM's iBOT pretraining recipe (the values of the original, see the bundles' README).

    Model: `arch`/`patch_size` of the ViT; `drop_path_rate` on the student only; the shared CLS/patch head
    `hidden_dim` -> `bottleneck_dim` -> `out_dim` prototypes.
    Crops: 2 global crops of `image_size` at area scale `global_crops_scale`; `n_local` local crops of
    `local_size` at `local_crops_scale` (VisionFM: none).
    Masks: per global crop, ratio 0 with probability `prob_no_mask`, else U(`mask_ratio_range`), in BEiT blocks
    of at least `mask_min_num_patches` patches.
    Loss: student temperature `student_temp`; teacher temperature for the CLS term `warmup_teacher_temp` ->
    `teacher_temp` and for the patch term `warmup_teacher_patch_temp` -> `teacher_patch_temp`, linear over
    `warmup_teacher_temp_epochs` epochs; centres with momentum `center_momentum`; total = `lambda_cls` x CLS +
    `lambda_patch` x patch.
    Optimisation: `epochs`; `batch_size` images per process; AdamW with lr `base_lr` x total batch /
    `lr_reference_batch`, linear warm-up over `warmup_epochs`, cosine to `min_lr`; weight decay cosine
    `weight_decay` -> `weight_decay_end`; teacher EMA momentum cosine `momentum_teacher` -> `momentum_teacher_end`;
    per-parameter gradient clipping at `clip_grad`; the head's last layer frozen for `freeze_last_layer_epochs`;
    `amp` "auto" = fp16 autocast with a grad scaler on CUDA (VisionFM), fp32 elsewhere ("bf16", "fp16" or None
    to choose); `seed` for the crops and masks; a numbered checkpoint every `keep_every_epochs` epochs.
    """

    # model
    arch: str = "vit_base"
    patch_size: int = 16
    drop_path_rate: float = 0.1
    out_dim: int = 8192
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    # crops
    image_size: int = 224
    global_crops_scale: tuple[float, float] = (0.32, 1.0)
    n_local: int = 0
    local_size: int = 96
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    # masks
    mask_ratio_range: tuple[float, float] = (0.1, 0.5)
    prob_no_mask: float = 0.5
    mask_min_num_patches: int = 16
    # loss; VisionFM's CLS teacher temperature goes down (iBOT's own recipe goes 0.04 -> 0.07)
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.07
    teacher_temp: float = 0.04
    warmup_teacher_patch_temp: float = 0.04
    teacher_patch_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    center_momentum: float = 0.9
    lambda_cls: float = 1.0
    lambda_patch: float = 1.0
    # optimisation
    epochs: int = 100
    batch_size: int = 128
    base_lr: float = 7.5e-5
    lr_reference_batch: int = 256
    min_lr: float = 2e-6
    warmup_epochs: float = 50
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    clip_grad: float = 3.0
    freeze_last_layer_epochs: int = 3
    amp: str | None = "auto"
    seed: int = 0
    keep_every_epochs: int = 40

    def __post_init__(self):
        for f in dataclasses.fields(self):  # JSON configs give lists where the recipe holds pairs
            value = getattr(self, f.name)
            if isinstance(f.default, tuple) and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.n_local and self.local_size % self.patch_size:
            problems.append(f"local_size {self.local_size} is not a multiple of patch_size {self.patch_size}")
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        for name in ("global_crops_scale", "local_crops_scale", "mask_ratio_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high <= 1:
                problems.append(f"{name} must be (low, high) with 0 <= low <= high <= 1, got {(low, high)}")
        if problems:
            raise ValueError("invalid iBOT recipe: " + "; ".join(problems))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **overrides: Any) -> "IBOTRecipe":
        """A copy with some values changed; an unknown name is an error that lists the valid ones."""
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            valid = ", ".join(self.field_names())
            raise ValueError(f"unknown iBOT recipe setting(s) {unknown}; the recipe has: {valid}")
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        """{name: value} in declaration order (pairs stay tuples)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @staticmethod
    def load_size_for(image_size: int) -> int:
        """Side the images are resized to before the global crops are cut: 256 for 224 px crops."""
        return image_size * 8 // 7

    @property
    def load_size(self) -> int:
        return self.load_size_for(self.image_size)

    def total_lr(self, total_batch: int) -> float:
        """Peak learning rate for `total_batch` images per optimizer step (all processes): the linear scaling rule."""
        return self.base_lr * total_batch / self.lr_reference_batch


DEFAULT_RECIPE = IBOTRecipe()
