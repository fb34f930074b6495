"""Latent diffusion image generation: an autoencoder, then a diffusion model on its latents."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.generation.ldm import (
    AutoencoderTrainer,
    GenerationCheckpoint,
    GenerationError,
    GenerationImages,
    GenerationModels,
    LatentDiffusionTrainer,
    LatentSamplingInferer,
    SampleBatch,
    SampleRequests,
    SampleWriter,
    conditioning_classes,
    generation_files_or_exit,
    read_generation_file,
)

__all__ = [
    "FAMILY",
    "GenerationImages",
    "AutoencoderTrainer",
    "LatentDiffusionTrainer",
    "GenerationCheckpoint",
    "GenerationModels",
    "SampleRequests",
    "LatentSamplingInferer",
    "SampleBatch",
    "SampleWriter",
    "GenerationError",
    "generation_files_or_exit",
    "read_generation_file",
    "conditioning_classes",
]

FAMILY = register_family(Family(
    "generation",
    "Latent diffusion image generation: an autoencoder, then a diffusion model on its latents.",
    weights="diffusion.pt",
    task=False,
))
