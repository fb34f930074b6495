"""Encoders: the 2-D ViT, its 3-D inflation, and reading and writing their weights safely."""

from visionfm_core.encoders.config import EncoderConfig
from visionfm_core.encoders.families import (
                                          ENCODER_FAMILIES,
                                          EncoderFamily,
                                          get_encoder_family,
                                          normalisation_stats,
)
from visionfm_core.encoders.vit import ARCHS, VisionTransformer, build_encoder, resample_pos_embed
from visionfm_core.encoders.vit3d import (
                                          VisionTransformer3D,
                                          build_encoder3d,
                                          inflate_patch_embedding,
                                          resample_depth_embed,
)
from visionfm_core.encoders.weights import (
                                          LoadReport,
                                          WeightsError,
                                          check_architecture,
                                          check_modality,
                                          declared_header,
                                          declared_modality,
                                          check_family,
                                          extract_backbone,
                                          file_layout,
                                          load_bundle_encoder,
                                          load_encoder_weights,
                                          load_model_weights,
                                          read_checkpoint,
                                          require_checkpoint,
                                          save_encoder_weights,
                                          sha256sum,
)

__all__ = ["EncoderConfig", "ENCODER_FAMILIES", "EncoderFamily", "get_encoder_family", "normalisation_stats", "ARCHS", "VisionTransformer", "build_encoder", "resample_pos_embed", "VisionTransformer3D",
           "build_encoder3d", "inflate_patch_embedding", "resample_depth_embed", "LoadReport", "WeightsError",
           "check_architecture", "check_modality", "check_family", "file_layout", "declared_header", "declared_modality", "extract_backbone",
           "load_bundle_encoder", "load_encoder_weights", "load_model_weights", "read_checkpoint",
           "require_checkpoint", "save_encoder_weights", "sha256sum"]
