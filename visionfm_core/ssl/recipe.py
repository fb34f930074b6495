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

__all__ = ["IBOTRecipe", "DEFAULT_RECIPE", "RECIPE_PRESETS", "start_warning"]


@dataclass(frozen=True)
class IBOTRecipe:
    """VisionFM's iBOT pretraining recipe (the values of the original, see the bundles' README).

    Model: `arch`/`patch_size` of the ViT; `drop_path_rate` on the student only; the shared CLS/patch head
    `hidden_dim` -> `bottleneck_dim` -> `out_dim` prototypes.
    Crops: 2 global crops of `image_size` at area scale `global_crops_scale`; `n_local` local crops of
    `local_size` at `local_crops_scale` (VisionFM: none). They are cut from a copy of each image whose short side
    is `load_size_factor` x `image_size` (`load_size`), aspect ratio kept up to `load_max_aspect` (the long side
    is centre-cropped beyond it), so a crop's area and aspect are relative to the whole non-square image, as
    RandomResizedCrop on the stored image in the original.
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
    `amp` "auto" = fp16 autocast with a grad scaler on CUDA (VisionFM), bf16 autocast on CPUs with native bf16
    (AVX512-BF16 / AMX), fp32 elsewhere ("bf16", "fp16" or None to choose; the centres, the teacher softmax and the
    losses are computed in fp32 whatever the autocast); `seed` for the crops and masks; a numbered checkpoint every `keep_every_epochs` epochs.
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
    # the copy crops are cut from: short side load_size_factor x image_size (2 x 224 = 448, the smallest that
    # never upsamples a global crop: sqrt(0.32 x 0.8) x 448 = 227 >= 224 source pixels), aspect kept up to
    # load_max_aspect (1.5 holds the usual 4:3 and 3:2 fundus cameras and OCT B-scans whole)
    load_size_factor: float = 2.0
    load_max_aspect: float = 1.5
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
        if self.load_size_factor < 1:
            problems.append(f"load_size_factor must be >= 1 (crops cut from a copy smaller than the crop), "
                            f"got {self.load_size_factor}")
        if self.load_max_aspect < 1:
            problems.append(f"load_max_aspect must be >= 1 (long side / short side), got {self.load_max_aspect}")
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

    @classmethod
    def preset(cls, name: str = "visionfm", **overrides: Any) -> "IBOTRecipe":
        """A named recipe (`RECIPE_PRESETS`): "visionfm" (the original's values, meant to start from ImageNet DINO
        or VisionFM weights) or "from_scratch" (teacher temperatures that stay stable from random weights)."""
        if name not in RECIPE_PRESETS:
            raise ValueError(f"unknown iBOT recipe preset {name!r}; the presets are: {', '.join(RECIPE_PRESETS)}")
        return RECIPE_PRESETS[name].replace(**overrides)

    @classmethod
    def from_scratch(cls, **overrides: Any) -> "IBOTRecipe":
        """The recipe for random initial weights: VisionFM's, with DINO's default CLS teacher temperature, 0.04
        throughout, instead of VisionFM's 0.07 falling to 0.04. A hot teacher at the start gives near-uniform
        targets that a random network does not sharpen: the CLS loss stays at ln(out_dim) (uniform collapse); DINO
        recommends 0.04 and warns that above 0.07 training is unstable. A small CPU run (vit_tiny, 64 px phantoms,
        16 epochs) was too small to tell this preset apart from VisionFM's; starting from pretrained weights stays
        the recommended way."""
        return cls.preset("from_scratch", **overrides)

    @staticmethod
    def load_size_for(image_size: int, factor: float = 2.0) -> int:
        """Short side of the copy the crops are cut from: 448 for 224 px crops at the default factor 2."""
        return int(round(image_size * factor))

    @property
    def load_size(self) -> int:
        return self.load_size_for(self.image_size, self.load_size_factor)

    def total_lr(self, total_batch: int) -> float:
        """Peak learning rate for `total_batch` images per optimizer step (all processes): the linear scaling rule."""
        return self.base_lr * total_batch / self.lr_reference_batch


DEFAULT_RECIPE = IBOTRecipe()

# the named recipes: VisionFM's (from ImageNet DINO or VisionFM weights) and a from-scratch one
RECIPE_PRESETS: dict[str, IBOTRecipe] = {
    "visionfm": DEFAULT_RECIPE,
    "from_scratch": DEFAULT_RECIPE.replace(warmup_teacher_temp=0.04, teacher_temp=0.04),
}


def start_warning(recipe: IBOTRecipe, init_weights: str | None) -> str | None:
    """The warning to log when pretraining starts from random weights with VisionFM's hot initial CLS teacher
    temperature (the original starts from ImageNet DINO ViT-B/16 weights, where 0.07 is safe); None otherwise."""
    if init_weights or recipe.warmup_teacher_temp <= RECIPE_PRESETS["from_scratch"].warmup_teacher_temp:
        return None
    return (
        f"pretraining starts from random weights with an initial CLS teacher temperature of "
        f"{recipe.warmup_teacher_temp} (-> {recipe.teacher_temp}; VisionFM's), which is unstable from scratch (the loss tends to "
        "stay at ln(out_dim): uniform collapse). VisionFM starts from ImageNet DINO ViT-B/16 weights: pass "
        "init_weights (e.g. --init_weights dino_vitbase16_pretrain.pth, or the VisionFM weights of the modality), "
        "or use the from-scratch recipe (IBOTRecipe.from_scratch(); in a bundle --recipe_preset from_scratch), "
        "whose CLS teacher temperature stays at 0.04."
    )
