"""One label per OCT cube by gated-attention MIL over B-scan embeddings."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.volume_classification.model import (
    CheckCubed,
    GatedAttentionPooling,
    RandSampleSlicesd,
    VolumeMILModel,
    even_slice_indices,
)
from visionfm_core.tasks.volume_classification.writer import (
    VolumeMILWriter,
    attention_module,
    attention_plot,
    per_class_metrics,
)

__all__ = [
    "FAMILY",
    "GatedAttentionPooling",
    "VolumeMILModel",
    "CheckCubed",
    "RandSampleSlicesd",
    "even_slice_indices",
    "VolumeMILWriter",
    "attention_module",
    "attention_plot",
    "per_class_metrics",
]

FAMILY = register_family(Family(
    "volume_classification",
    "One label per OCT cube by gated-attention MIL over B-scan embeddings.",
    spatial_dims=3,
    served_as="classification",
))
