"""The iBOT projection head (shared by CLS and patch tokens) and the backbone+head model.

State-dict names are those of the original checkpoints' `head.*` entries: `mlp.0`, `mlp.2`, `mlp.4`
and `last_layer.weight_g` / `last_layer.weight_v` (torch's old `weight_norm` names). The weight-normed
last layer is written out here (`WeightNormLinear`) instead of using `torch.nn.utils.weight_norm`
(deprecated, and its hooks break `copy.deepcopy`) or the parametrization API (whose names are
`parametrizations.weight.original0/1`; those are accepted on load too).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visionfm_core.ssl.recipe import DEFAULT_RECIPE

__all__ = ["WeightNormLinear", "IBOTHead", "IBOTModel", "build_ibot_models", "masked_patch_index"]

# names the torch parametrization API gives a weight-normed Linear's gain (g) and direction (v)
_PARAMETRIZED = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose row i is weight_g[i] * weight_v[i] / ||weight_v[i]||.

    Initialised as the original's last layer: the direction `weight_v` keeps PyTorch's default `nn.Linear`
    init (kaiming-uniform, bound 1 / sqrt(in_features); the original creates this layer after the MLP's
    trunc-normal init), and the gain `weight_g` starts at 1 whether or not it is trained (DINO/iBOT fill it
    with 1). With `fix_gain` the gain stays 1 (DINO/iBOT's norm_last_layer): the logits are then cosine
    similarities to 8192 learned prototypes, which keeps the teacher's softmax temperature meaningful.
    """

    def __init__(self, in_features: int, out_features: int, fix_gain: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not fix_gain)
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        # nn.Linear's own default init (what nn.Linear.reset_parameters does to its weight)
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * F.normalize(self.weight_v, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # accept checkpoints written with torch.nn.utils.parametrizations.weight_norm
        for new, old in _PARAMETRIZED.items():
            if prefix + new in state_dict and prefix + old not in state_dict:
                state_dict[prefix + old] = state_dict.pop(prefix + new)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        fixed = not self.weight_g.requires_grad
        return f"in_features={self.in_features}, out_features={self.out_features}, fixed_gain={fixed}"


class IBOTHead(nn.Module):
    """MLP (Linear-GELU-Linear-GELU-Linear) -> L2 normalise -> weight-normed Linear to `out_dim` logits."""

    def __init__(
        self,
        in_dim: int = 768,
        out_dim: int = DEFAULT_RECIPE.out_dim,
        hidden_dim: int = DEFAULT_RECIPE.hidden_dim,
        bottleneck_dim: int = DEFAULT_RECIPE.bottleneck_dim,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        self.out_dim = out_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # not trunc-normal: the original makes the last layer after the init above (see WeightNormLinear)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_gain=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        # fp16 cannot represent 1e-12: use a larger floor there (no effect on non-degenerate inputs)
        x = F.normalize(x, dim=-1, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)


def masked_patch_index(masks: torch.Tensor) -> torch.Tensor:
    """Flat indices into (n * N) patch tokens of the True entries of `masks` (n, N) or (n, h, w)."""
    return masks.reshape(-1).nonzero().squeeze(1)


class IBOTModel(nn.Module):
    """Backbone + shared head, run as iBOT needs it (the role of DINO's MultiCropWrapper).

    `forward(global_crops, masks=None, local_crops=None, mask_input=True, patch_index=None)` takes
    lists of (B, 3, H, W) crops and returns `(cls_logits, patch_logits)`:

    - cls_logits: (n_crops, B, out_dim), global crops first, then local crops;
    - patch_logits: (M, out_dim) for the M masked patch tokens of the global crops, in the order of
      `masked_patch_index(masks)`, or None without masks. Only those tokens go through the head: the
      loss needs no others, and the head on all 196 patch tokens costs ~3 GFLOPs per crop (two thirds
      of a ViT-S/16 forward) plus 8192 logits per token to store and soft-max.

    `masks` is (n_global * B, N) or (n_global, B, h, w), in the order of `torch.cat(global_crops)`.
    The student passes masks to hide those patches (`mask_input=True`); the teacher passes the same
    masks with `mask_input=False`: it sees the whole crop and is read out at the same positions.
    Crops of one resolution share a backbone call (global crops in one, local crops in another).
    `patch_index` may be given precomputed on the CPU, which saves a device sync.
    """

    def __init__(self, backbone: nn.Module, head: IBOTHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self,
        global_crops: Sequence[torch.Tensor],
        masks: torch.Tensor | None = None,
        local_crops: Sequence[torch.Tensor] | None = None,
        mask_input: bool = True,
        patch_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(global_crops, torch.Tensor) or isinstance(local_crops, torch.Tensor):
            raise TypeError("IBOTModel expects lists of crops, each (B, 3, H, W), as MultiCropAugmentation returns")
        batch = global_crops[0].shape[0]
        g = torch.cat(list(global_crops))
        if masks is not None:
            masks = masks.reshape(g.shape[0], -1).to(g.device, non_blocking=True)
        tokens = self.backbone.forward_features(g, mask=masks if mask_input else None)
        cls = [tokens[:, 0]]
        if local_crops:
            cls.append(self.backbone.forward_features(torch.cat(list(local_crops)))[:, 0])
        cls = torch.cat(cls)
        if masks is None:
            return self.head(cls).view(-1, batch, self.head.out_dim), None
        if patch_index is None:
            patch_index = masked_patch_index(masks)
        patches = tokens[:, 1:].flatten(0, 1).index_select(0, patch_index.to(g.device, non_blocking=True))
        # one head call for CLS and masked patch tokens together: bigger matmuls, weights read once
        logits = self.head(torch.cat([cls, patches]))
        n_cls = cls.shape[0]
        return logits[:n_cls].view(-1, batch, self.head.out_dim), logits[n_cls:]


def build_ibot_models(
    arch: str = DEFAULT_RECIPE.arch,
    patch_size: int = DEFAULT_RECIPE.patch_size,
    img_size: int = DEFAULT_RECIPE.image_size,
    out_dim: int = DEFAULT_RECIPE.out_dim,
    hidden_dim: int = DEFAULT_RECIPE.hidden_dim,
    bottleneck_dim: int = DEFAULT_RECIPE.bottleneck_dim,
    drop_path_rate: float = DEFAULT_RECIPE.drop_path_rate,
    norm_last_layer: bool = True,
) -> tuple[IBOTModel, IBOTModel]:
    """(student, teacher) for iBOT pretraining; the teacher starts as an exact copy of the student.

    Only the student has drop path (regularises the learner; the teacher is a smoothed target) and a
    mask token. The teacher's parameters do not require grad: it is updated by EMA only.
    """
    from visionfm_core.encoders.vit import build_encoder

    def make(drop: float, masked: bool) -> IBOTModel:
        backbone = build_encoder(arch, patch_size, img_size, drop_path_rate=drop, masked_im_modeling=masked)
        head = IBOTHead(backbone.embed_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer)
        return IBOTModel(backbone, head)

    student = make(drop_path_rate, True)
    teacher = make(0.0, False)
    state = {k: v for k, v in student.state_dict().items() if k in teacher.state_dict()}
    teacher.load_state_dict(state, strict=True)
    teacher.requires_grad_(False)
    return student, teacher
