from .classifier import VisionFMClassifier
from .heads import HEADS, ClassificationHead, UNETRDecoder2d, register_head
from .landmarks import HeatmapLandmarkLoss, gaussian_heatmaps, soft_argmax_2d
from .heads import RegressionHead, StandardisedSmoothL1Loss
from .multitask import MULTITASK_OUTPUTS, MULTITASK_TASKS, MultiTaskHead, MultiTaskLoss, MultiTaskProbabilitiesd
from .task import VisionFMTaskModel
from .forecasting import CLSFeaturesHead, SinusoidalIntervalEncoding, VisionFMForecastingModel
from .fusion import FUSION_MODES, VisionFMFusionModel
from .vit import ARCHS, VisionTransformer, build_encoder, resample_pos_embed
from .slicewise import SliceContextd, SliceWiseTaskModel
from .mil import GatedAttentionPooling, VolumeMILModel
from .vit3d import VisionTransformer3D, build_encoder3d
from .heads import UNETRDecoder

__all__ = ["ARCHS", "VisionTransformer", "build_encoder", "resample_pos_embed", "ClassificationHead",
           "VisionFMClassifier", "VisionFMTaskModel", "HEADS", "register_head", "UNETRDecoder2d", "soft_argmax_2d",
           "gaussian_heatmaps", "HeatmapLandmarkLoss", "RegressionHead", "StandardisedSmoothL1Loss", "MultiTaskHead",
           "MultiTaskLoss", "MultiTaskProbabilitiesd", "MULTITASK_TASKS", "MULTITASK_OUTPUTS"]
__all__ += ["CLSFeaturesHead", "SinusoidalIntervalEncoding", "VisionFMForecastingModel", "FUSION_MODES",
            "VisionFMFusionModel"]
__all__ += ["SliceWiseTaskModel", "SliceContextd", "VolumeMILModel", "GatedAttentionPooling",
            "VisionTransformer3D", "build_encoder3d", "UNETRDecoder"]
