"""One description of how a network builds and initialises its encoder.

Every network that owns an encoder (the task model and its subclasses, the forecasting and fusion models) takes an
`EncoderConfig`, or the same settings as flat keyword arguments (what bundle configs pass): `EncoderConfig.take`
pops them from the keyword arguments, so the settings are declared once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from torch import nn

from visionfm_core.encoders.families import EncoderFamily, get_encoder_family

__all__ = ["EncoderConfig"]


@dataclass(frozen=True)
class EncoderConfig:
    """How to build a network's encoder.

    Args:
        encoder: the encoder family (`visionfm_core.encoders.families`): "visionfm" (default), "retfound_mae",
            "retfound_dinov2", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14" and the "_reg" variants. It fixes
            the layout, the image feature, the normalisation the data must get and the blocks dense heads read.
        arch: "vit_tiny", "vit_small", "vit_base" or "vit_large"; None (default): the family's published size
            (VisionFM: ViT-B; RETFound: ViT-L; DINOv2: the size in its name).
        patch_size: None (default): the family's (16; 14 for DINOv2); VisionFM also has 8 for small/base encoders.
        img_size: the size the position embeddings are built for (others are resampled on the fly).
        freeze_encoder: True is the original linear-probe protocol (no gradients, eval mode, no drop path);
            False fine-tunes the encoder.
        drop_path_rate: stochastic depth while fine-tuning (ignored when frozen).
        pretrained: encoder weights in any form `load_encoder_weights` reads (the fusion model also takes one file
            per modality: a dict by modality name or a list in its modalities' order).
        checkpoint_key: the entry of a training checkpoint that holds the encoder ("teacher" in iBOT files).
        modality: the modality the task expects; a weights file whose header names another one is refused.
        allow_modality_mismatch: load such a file anyway.
        spatial_dims: 2 for images, 3 for the inflated volume encoder.
        depth_patch: the 3-D encoder's patch depth (default: the patch size).
    """

    encoder: str = "visionfm"
    arch: str | None = None
    patch_size: int | None = None
    img_size: int = 224
    freeze_encoder: bool = True
    drop_path_rate: float = 0.0
    pretrained: Any = None
    checkpoint_key: str = "teacher"
    modality: str | None = None
    allow_modality_mismatch: bool = False
    spatial_dims: int = 2
    depth_patch: int | None = None

    @classmethod
    def take(cls, config: EncoderConfig | str | None, kwargs: dict, **defaults: Any) -> EncoderConfig:
        """`config` (or one with `defaults`) updated with the encoder settings popped from `kwargs`. A string
        `config` is an encoder family's name (what bundle configs pass as `"encoder": "@encoder"`)."""
        names = {f.name for f in fields(cls)}
        given = {key: kwargs.pop(key) for key in list(kwargs) if key in names}
        if isinstance(config, str):
            given.setdefault("encoder", config)
            config = None
        elif config is not None and not isinstance(config, EncoderConfig):
            raise TypeError(f"encoder must be an EncoderConfig or an encoder family's name, not {type(config).__name__}")
        return replace(config if config is not None else cls(**defaults), **given)

    @property
    def family(self) -> EncoderFamily:
        return get_encoder_family(self.encoder)

    @property
    def size(self) -> tuple[str, int]:
        """(arch, patch_size) with the family's published ones filled in."""
        family = self.family
        return (self.arch or family.arch), int(self.patch_size or family.patch_size)

    def build(self) -> nn.Module:
        """A new encoder with random weights (drop path only when the encoder is fine-tuned)."""
        from visionfm_core.encoders.vit import build_encoder
        from visionfm_core.encoders.vit3d import build_encoder3d

        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), not {self.spatial_dims}")
        # drop path only when the encoder trains: a frozen encoder must give the same features every time
        rate = 0.0 if self.freeze_encoder else self.drop_path_rate
        if self.spatial_dims == 3:
            return build_encoder3d(self.arch, self.patch_size, self.img_size, drop_path_rate=rate,
                                   depth_patch=self.depth_patch, encoder=self.encoder)
        return build_encoder(self.arch, self.patch_size, self.img_size, drop_path_rate=rate, encoder=self.encoder)
