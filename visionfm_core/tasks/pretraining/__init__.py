"""IBOT self-supervised pretraining of one modality's encoder; its inference writes embeddings."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.pretraining.writer import EmbeddingWriter

__all__ = ["FAMILY", "EmbeddingWriter"]

FAMILY = register_family(Family(
    "pretraining",
    "iBOT self-supervised pretraining of one modality's encoder; its inference writes embeddings.",
    weights="encoder.pt",
    task=False,
    served_as="embedding",
))
