"""Encoder + classification head: the network of the classification bundles."""

from __future__ import annotations

from typing import Any

import torch

from visionfm_core.encoders.config import EncoderConfig
from visionfm_core.models.task import VisionFMTaskModel

__all__ = ["VisionFMClassifier"]


class VisionFMClassifier(VisionFMTaskModel):
    """Logits from the CLS tokens of the last `n_last_blocks` encoder blocks, concatenated.

    The classification case of `VisionFMTaskModel`, with its historical signature and state-dict keys
    (`encoder.*`, `head.layers.*`), so existing checkpoints load. `freeze_encoder=True` is the original
    linear-probe protocol: the encoder gets no gradients and stays in eval mode (so drop path never fires);
    `False` fine-tunes everything. `pretrained` is a path to encoder weights in any form `load_encoder_weights`
    reads (e.g. a file written by `visionfm import-weights`); a bundle's trained models/model.pt is loaded on top
    of it afterwards.
    """

    def __init__(self, num_classes: int, n_last_blocks: int = 4, encoder: EncoderConfig | None = None,
                 **encoder_args: Any):
        """`encoder` or its settings as keyword arguments (`EncoderConfig`: arch, patch_size, img_size, ...)."""
        super().__init__("classification", num_classes, EncoderConfig.take(encoder, encoder_args),
                         n_last_blocks=n_last_blocks, **encoder_args)
        self.n_last_blocks = n_last_blocks

    @torch.jit.unused
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: the CLS tokens of the last `n_last_blocks` blocks, concatenated (B, n x D)."""
        return torch.cat(self.encode(x), dim=-1)
