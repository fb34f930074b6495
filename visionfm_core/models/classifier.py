"""Encoder + classification head: the network of the classification bundles."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..weights import load_encoder_weights
from .heads import ClassificationHead
from .vit import build_encoder

__all__ = ["VisionFMClassifier"]
logger = logging.getLogger(__name__)


class VisionFMClassifier(nn.Module):
    """Logits from the CLS tokens of the last `n_last_blocks` encoder blocks, concatenated.

    `freeze_encoder=True` is the original linear-probe protocol: the encoder gets no gradients and stays in
    eval mode (so drop path never fires); `False` fine-tunes everything.
    `pretrained` is a path to encoder weights in any form `load_encoder_weights` reads (e.g. a file written
    by `visionfm import-weights`); a bundle's trained models/model.pt is loaded on top of it afterwards.
    """

    def __init__(
        self,
        num_classes: int,
        arch: str = "vit_base",
        patch_size: int = 16,
        img_size: int = 224,
        n_last_blocks: int = 4,
        freeze_encoder: bool = True,
        drop_path_rate: float = 0.0,
        pretrained: str | None = None,
        checkpoint_key: str = "teacher",
    ):
        super().__init__()
        self.encoder = build_encoder(arch, patch_size, img_size, drop_path_rate=0.0 if freeze_encoder else drop_path_rate)
        if pretrained:
            logger.info("%s", load_encoder_weights(self.encoder, pretrained, checkpoint_key))
        self.n_last_blocks = n_last_blocks
        self.freeze_encoder = freeze_encoder
        self.head = ClassificationHead(n_last_blocks * self.encoder.embed_dim, num_classes, self.encoder.embed_dim)
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            layers = self.encoder.get_intermediate_layers(x, self.n_last_blocks)
        return torch.cat([tokens[:, 0] for tokens in layers], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
