"""Encoder + classification head: the network of the classification bundles."""

from __future__ import annotations

import torch

from .task import VisionFMTaskModel

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
        modality: str | None = None,
        allow_modality_mismatch: bool = False,
    ):
        super().__init__("classification", num_classes, arch=arch, patch_size=patch_size, img_size=img_size,
                         freeze_encoder=freeze_encoder, drop_path_rate=drop_path_rate, pretrained=pretrained,
                         checkpoint_key=checkpoint_key, modality=modality,
                         allow_modality_mismatch=allow_modality_mismatch, n_last_blocks=n_last_blocks)
        self.n_last_blocks = n_last_blocks

    @torch.jit.unused
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: the CLS tokens of the last `n_last_blocks` blocks, concatenated (B, n x D)."""
        return torch.cat(self.encode(x), dim=-1)
