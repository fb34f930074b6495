"""VisionFM for the MONAI ecosystem: encoders, weight import, trainers, data readers and bundle helpers."""

from .modalities import MODALITIES, Modality, get_modality
from .models import VisionFMClassifier, VisionFMTaskModel, build_encoder
from .weights import LoadReport, WeightsError, load_encoder_weights, save_encoder_weights

from . import data, distributed, handlers, metrics, optim  # noqa: E402,F401  (bundle configs reach these)

__version__ = "0.1.0"
__all__ = ["MODALITIES", "Modality", "get_modality", "build_encoder", "VisionFMClassifier", "VisionFMTaskModel", "load_encoder_weights",
           "save_encoder_weights", "LoadReport", "WeightsError", "__version__"]
