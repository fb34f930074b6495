"""One label per patient from several modalities, with missing modalities masked."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.fusion.model import FUSION_MODES, MaskedAttention, VisionFMFusionModel
from visionfm_core.tasks.fusion.transforms import FusionInputsd, load_fusion_datalist, modality_key
from visionfm_core.tasks.fusion.writer import FusionWriter

__all__ = [
    "FAMILY",
    "FUSION_MODES",
    "MaskedAttention",
    "VisionFMFusionModel",
    "modality_key",
    "load_fusion_datalist",
    "FusionInputsd",
    "FusionWriter",
]

FAMILY = register_family(Family(
    "fusion",
    "One label per patient from several modalities, with missing modalities masked.",
    served_as="classification",
))
