"""Parameter groups for fine-tuning: head lr, a lower encoder lr, optional layer-wise lr decay."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["finetune_param_groups", "build_optimizer"]


def _encoder_layer_id(name: str, depth: int) -> int:
    # 0: embeddings, 1..depth: blocks, depth + 1: final norm (treated like the top block)
    if name.startswith(("cls_token", "pos_embed", "patch_embed", "masked_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def finetune_param_groups(
    network: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    encoder_lr_scale: float = 0.1,
    layer_decay: float | None = None,
) -> list[dict]:
    """AdamW groups: head at `lr`; encoder at `lr * encoder_lr_scale`, times `layer_decay ** (depth + 1 - layer)`
    when layer-wise decay is on. No weight decay on biases, norms and tokens. Frozen parameters are left out.

    Works for every `VisionFMTaskModel` head: whatever is not under `encoder.` (an MLP head, a UNETR decoder)
    is head and trains at `lr`."""
    network = getattr(network, "module", network)  # unwrap DistributedDataParallel
    encoder = getattr(network, "encoder", None)
    depth = len(encoder.blocks) if encoder is not None else 0
    no_decay = {f"encoder.{n}" for n in encoder.no_weight_decay()} if encoder is not None else set()
    groups: dict[tuple, dict] = {}
    for name, p in network.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        if name.startswith("encoder."):
            scale = encoder_lr_scale
            if layer_decay is not None:
                scale *= layer_decay ** (depth + 1 - _encoder_layer_id(name[len("encoder."):], depth))
        decay = 0.0 if (p.ndim <= 1 or name in no_decay) else weight_decay
        group = groups.setdefault((scale, decay), {"params": [], "lr": lr * scale, "weight_decay": decay})
        group["params"].append(p)
    if not groups:
        raise ValueError("the network has no trainable parameters")
    return list(groups.values())


def build_optimizer(network: nn.Module, lr: float, weight_decay: float = 0.05, encoder_lr_scale: float = 0.1,
                    layer_decay: float | None = None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(finetune_param_groups(network, lr, weight_decay, encoder_lr_scale, layer_decay))
