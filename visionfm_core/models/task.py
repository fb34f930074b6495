"""Encoder + registered head: the network of every VisionFM task bundle."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..weights import load_encoder_weights
from .heads import HEADS
from .vit import build_encoder

__all__ = ["VisionFMTaskModel"]
logger = logging.getLogger(__name__)


class VisionFMTaskModel(nn.Module):
    """A VisionFM encoder and one head from `HEADS`: "classification", "regression", "landmarks", "segmentation".

    - classification -> logits (B, K) from the CLS tokens of the last 4 blocks (`n_last_blocks`)
    - regression -> values (B, K), `hidden="mlp"` (the original biomarker head) or `"linear"`
    - landmarks -> heatmap logits (B, L, H, W), segmentation -> logits (B, C, H, W): a 2-D UNETR decoder on the
      patch maps of 4 blocks plus the raw image (`feature_size`, base 32 channels), at the input's H, W.
    `forward(x)` takes (B, 3, H, W) with H, W multiples of the patch size (not necessarily `img_size`).

    `freeze_encoder=True` is the original protocol: the encoder gets no gradients, runs under `torch.no_grad()`
    and stays in eval mode in `train()` (so drop path never fires); `False` fine-tunes everything, with
    `drop_path_rate` in the encoder. `pretrained` is a path to encoder weights in any form `load_encoder_weights`
    reads; when `modality` is given, a file whose header names another modality is refused unless
    `allow_modality_mismatch`. The model is `torch.jit.script`-able and exports to ONNX.
    """

    def __init__(
        self,
        head: str,
        num_outputs: int,
        arch: str = "vit_base",
        patch_size: int = 16,
        img_size: int = 224,
        freeze_encoder: bool = True,
        drop_path_rate: float = 0.0,
        pretrained: str | None = None,
        checkpoint_key: str = "teacher",
        modality: str | None = None,
        allow_modality_mismatch: bool = False,
        **head_kwargs: Any,
    ):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(sorted(HEADS))}")
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be at least 1, not {num_outputs}")
        # drop path only when the encoder trains: a frozen encoder must give the same features every time
        self.encoder = build_encoder(arch, patch_size, img_size,
                                     drop_path_rate=0.0 if freeze_encoder else drop_path_rate)
        if pretrained:
            report = load_encoder_weights(self.encoder, pretrained, checkpoint_key, expected_modality=modality,
                                          allow_modality_mismatch=allow_modality_mismatch)
            logger.info("%s", report)
        self.head = HEADS[head](self.encoder, num_outputs, **head_kwargs)
        self.task = head
        self.freeze_encoder = freeze_encoder
        # what the head takes from the encoder, fixed at construction (plain attributes, so TorchScript sees them)
        self.block_indices = list(self.head.block_indices)
        self.uses_patch_maps = bool(self.head.uses_patch_maps)
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.uses_patch_maps:
            return self.encoder.forward_intermediates(x, self.block_indices, "NCHW", True)
        return [tokens[:, 0] for tokens in self.encoder.get_intermediate_layers(x, self.block_indices)]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the head takes: CLS tokens (B, D) or patch maps (B, D, H/p, W/p) of `block_indices`."""
        if self.freeze_encoder:
            with torch.no_grad():
                features = self._encode(x)
        else:
            features = self._encode(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x), x)
