from .classifier import VisionFMClassifier
from .heads import HEADS, ClassificationHead, UNETRDecoder2d, register_head
from .landmarks import HeatmapLandmarkLoss, gaussian_heatmaps, soft_argmax_2d
from .task import VisionFMTaskModel
from .vit import ARCHS, VisionTransformer, build_encoder, resample_pos_embed

__all__ = ["ARCHS", "VisionTransformer", "build_encoder", "resample_pos_embed", "ClassificationHead",
           "VisionFMClassifier", "VisionFMTaskModel", "HEADS", "register_head", "UNETRDecoder2d", "soft_argmax_2d",
           "gaussian_heatmaps", "HeatmapLandmarkLoss"]
