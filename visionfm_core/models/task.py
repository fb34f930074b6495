"""Encoder + registered head: the network of every VisionFM task bundle."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from torch import nn

from visionfm_core.encoders.config import EncoderConfig
from visionfm_core.encoders.weights import load_encoder_weights
from visionfm_core.models.heads import get_head

__all__ = ["VisionFMTaskModel"]
logger = logging.getLogger(__name__)


class VisionFMTaskModel(nn.Module):
    """An encoder (VisionFM's by default, or another family's: `encoder="retfound_mae"`, "dinov2_vitb14", ...; see
    `visionfm_core.encoders.families`) and one head from `HEADS`: "classification", "regression", "landmarks",
    "segmentation". Heads read the family's image feature per block (`encode`), so none has per-encoder code.

    - classification -> logits (B, K) from the CLS tokens of the last 4 blocks (`n_last_blocks`)
    - regression -> values (B, K), `hidden="mlp"` (the original biomarker head) or `"linear"`
    - landmarks -> heatmap logits (B, L, H, W), segmentation -> logits (B, C, H, W): a 2-D UNETR decoder on the
      patch maps of 4 blocks plus the raw image (`feature_size`, base 32 channels), at the input's H, W.
    `forward(x)` takes (B, 3, H, W) with H, W multiples of the patch size (not necessarily `img_size`).

    `spatial_dims=3` builds the 3-D encoder (`vit3d.VisionTransformer3D`, patches p x p x `depth_patch`, default p)
    on volumes (B, 3, I, J, K): segmentation then gives (B, C, I, J, K) from the 3-D UNETR decoder and
    classification its logits from the CLS tokens as in 2-D. 2-D encoder weights (`pretrained`) are inflated.

    `freeze_encoder=True` is the original protocol: the encoder gets no gradients, runs under `torch.no_grad()`
    and stays in eval mode in `train()` (so drop path never fires); `False` fine-tunes everything, with
    `drop_path_rate` in the encoder. `pretrained` is a path to encoder weights in any form `load_encoder_weights`
    reads; when `modality` is given, a file whose header names another modality is refused unless
    `allow_modality_mismatch` (a header naming another architecture or patch size is always refused). The model
    is `torch.jit.script`-able and exports to ONNX.

    `encoder_source` says where the encoder's weights came from: the weights file and its header, "random
    initialisation", or weights loaded later through `load_state_dict` (a trained model.pt, `load_encoder_weights`
    on `.encoder`). `visionfm_core.engine.run_notes.EncoderSourceNote` writes it next to a run's model. A frozen encoder
    that still has its random initial weights when the model is first put in training mode gets a loud warning:
    the head would learn from random features.
    """

    # provenance and the build recipe, plain Python objects: not part of the scripted network
    __jit_ignored_attributes__ = ["encoder_source", "encoder_config"]

    def __init__(self, head: str, num_outputs: int, encoder: EncoderConfig | None = None,
                 head_options: dict | None = None, **kwargs: Any):
        """`encoder`: how to build the encoder; its settings may also come as keyword arguments (encoder, arch,
        patch_size, img_size, freeze_encoder, drop_path_rate, pretrained, checkpoint_key, modality, allow_modality_mismatch,
        spatial_dims, depth_patch: see `EncoderConfig`). The other keyword arguments go to the head, as do the
        entries of `head_options` (a dict: what a bundle config passes, e.g. an imported model's pooling)."""
        super().__init__()
        config = EncoderConfig.take(encoder, kwargs)
        head_kwargs = {**(head_options or {}), **kwargs}
        head_class = get_head(head)
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be at least 1, not {num_outputs}")
        self.encoder_config = config
        self.encoder = config.build()
        self.spatial_dims = config.spatial_dims
        self.map_fmt = "NCDHW" if config.spatial_dims == 3 else "NCHW"  # the encoder's patch-map layout
        pretrained, modality = config.pretrained, config.modality
        if pretrained:
            report = load_encoder_weights(self.encoder, pretrained, config.checkpoint_key, expected_modality=modality,
                                          allow_modality_mismatch=config.allow_modality_mismatch)
            logger.info("%s", report)
            self.encoder_source = {"weights": os.path.abspath(os.fspath(pretrained)), "entry": report.entry,
                                   "declared_modality": report.modality, "header": report.header}
        else:
            self.encoder_source = {"weights": None, "initialisation": "random initialisation"}
        arch, patch_size = config.size
        self.encoder_source.update(task_modality=modality, encoder=config.family.name, arch=arch,
                                   patch_size=patch_size, freeze_encoder=bool(config.freeze_encoder))
        if config.spatial_dims == 3:
            self.encoder_source.update(spatial_dims=3, depth_patch=self.encoder.depth_patch)
        self.warned_random_frozen = False
        # weights loaded into the encoder after construction (model.pt, load_encoder_weights) replace the random ones
        self.encoder.register_load_state_dict_pre_hook(self._encoder_weights_loaded)
        self.head = head_class(self.encoder, num_outputs, **head_kwargs)
        self.task = head
        self.freeze_encoder = config.freeze_encoder
        # what the head takes from the encoder, fixed at construction (plain attributes, so TorchScript sees them)
        self.block_indices = list(self.head.block_indices)
        self.uses_patch_maps = bool(self.head.uses_patch_maps)
        # heads of the original release pool the whole normalised token sequences (CLS and patches) themselves
        self.uses_tokens = bool(getattr(self.head, "uses_tokens", False))
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
            if mode:
                self.warn_if_random_frozen_encoder()
        return self

    @torch.jit.unused
    def has_random_frozen_encoder(self) -> bool:
        """True when the encoder is frozen and still has its random initial weights: the head learns from noise."""
        source = self.encoder_source
        return self.freeze_encoder and source.get("weights") is None and "loaded" not in source

    @torch.jit.unused
    def warn_if_random_frozen_encoder(self) -> bool:
        """Warn once (log and `warnings.warn`) if the head is about to train on a random frozen encoder."""
        if not self.has_random_frozen_encoder() or self.warned_random_frozen:
            return False
        self.warned_random_frozen = True
        modality = self.encoder_source.get("task_modality")
        which = f"the {modality} encoder" if modality else "the encoder"
        message = (f"{which} is frozen and has no pretrained weights (random initialisation): the head will be "
                   "trained on random features and learn next to nothing. Pass the encoder weights of the modality "
                   "(pretrained=...; bundles: --pretrained_encoder <models/encoder.pt of a pretraining bundle, or "
                   "a file from `visionfm import-weights`>), or fine-tune the whole model (freeze_encoder=False; "
                   "bundles: --freeze_encoder False).")
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=3)
        return True

    @torch.jit.unused
    def _encoder_weights_loaded(self, module, state_dict, prefix, *args) -> None:
        if any(key.startswith(prefix) for key in state_dict):
            self.encoder_source["loaded"] = "weights loaded into the encoder with load_state_dict after construction"

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.uses_patch_maps:
            return self.encoder.forward_intermediates(x, self.block_indices, self.map_fmt, True)
        if self.uses_tokens:
            return self.encoder.get_intermediate_layers(x, self.block_indices)
        return self.encoder.block_features(x, self.block_indices)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the head takes: the encoder family's image feature (B, D) computed from each block of
        `block_indices` (VisionFM, DINOv2: the CLS token after the final norm; RETFound: the patch-token mean through
        fc_norm), patch maps (B, D, H/p, W/p) of those blocks or, for heads with `uses_tokens`, their token
        sequences (B, 1 + N, D)."""
        if self.freeze_encoder:
            with torch.no_grad():
                features = self._encode(x)
        else:
            features = self._encode(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x), x)
