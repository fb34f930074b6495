from .classifier import VisionFMClassifier
from .heads import ClassificationHead
from .vit import ARCHS, VisionTransformer, build_encoder, resample_pos_embed

__all__ = ["ARCHS", "VisionTransformer", "build_encoder", "resample_pos_embed", "ClassificationHead",
           "VisionFMClassifier"]
