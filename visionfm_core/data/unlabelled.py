"""Unlabelled image folders for self-supervised pretraining.

A pretraining folder may hold a million files, a few of them unreadable: those are skipped with one warning
line each (the sample is replaced by the next readable file, so every batch keeps its size, which
multi-process training needs) and counted; `SkippedImagesReport` logs the total when the run ends.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.utils.data import Dataset

from ..modalities import get_modality
from .modality_check import CHROMA_COLOUR, CHROMA_GREY, chroma
from .readers import ImageReadError, count_slices, list_images, read_image
from .resize import resize

__all__ = ["UnlabelledImageDataset", "SkippedImagesReport", "check_modality_of_images"]
logger = logging.getLogger(__name__)

_MAX_CONSECUTIVE_FAILURES = 100


def check_modality_of_images(files: list[str], modality: str, sample: int = 16) -> None:
    """Catch a folder of the wrong modality early: colour photos for a grey modality (OCT, FFA, ultrasound,
    UBM, MRI) or grey images for a colour one (fundus, slit lamp, external). Looks at up to `sample` files."""
    m = get_modality(modality)
    colour_scores = []
    for path in files[:: max(1, len(files) // sample)][:sample]:
        try:
            img = read_image(path)
        except ImageReadError:
            continue
        colour_scores.append(chroma(img))
    if not colour_scores:
        return
    colourful = float(np.median(colour_scores))
    if m.grey and colourful > CHROMA_COLOUR:
        raise ValueError(
            f"the images under {os.path.dirname(files[0])} look like colour photographs (mean chroma "
            f"{colourful:.3f}), but {m.name} ({m.description}) is a greyscale modality: check --modality / the folder"
        )
    if not m.grey and colourful < CHROMA_GREY:
        raise ValueError(
            f"the images under {os.path.dirname(files[0])} are greyscale, but {m.name} ({m.description}) is a colour "
            "modality: check --modality / the folder"
        )


class UnlabelledImageDataset(Dataset):
    """Every image under `folder` (recursively), read as 3-channel [0, 1] tensors (`read_image`, i.e.
    EyeImageReader + EyeChannelsd) resized to `size` x `size` with `resize` (the resize of EyeResized).
    Volumes (multi-frame DICOM, 3-D NIfTI: OCT cubes, MRI series) contribute every slice when `expand_volumes`.

    Items are dicts `{"image": (3, size, size) float tensor, "skipped": number of unreadable files passed over}`.
    """

    def __init__(self, folder: str | os.PathLike, modality: str, size: int = 256, check_modality: bool = True,
                 expand_volumes: bool = True):
        self.modality = get_modality(modality)
        files = list_images(folder)  # raises a clear error for a missing or empty folder
        # (path, slice or None): headers only are read here, so indexing a large folder stays cheap
        self.items: list[tuple[str, int | None]] = []
        for path in files:
            n = count_slices(path) if expand_volumes else 1
            self.items += [(path, i) for i in range(n)] if n > 1 else [(path, None)]
        self.files = files
        self.size = size
        if check_modality:
            check_modality_of_images(self.files, self.modality.name)
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    def load(self, path: str, slice_index: int | None = None) -> torch.Tensor:
        image = torch.from_numpy(read_image(path, self.modality, slice_index))
        # the resize of every other VisionFM pipeline (EyeResized): bilinear + antialias keeps fine structures
        # (vessels, layers) when large images are shrunk, and stays inside [0, 1]
        return resize(image, (self.size, self.size), mode="bilinear")

    def __getitem__(self, index: int) -> dict:
        skipped = 0
        for offset in range(min(len(self.items), _MAX_CONSECUTIVE_FAILURES)):
            path, slice_index = self.items[(index + offset) % len(self.items)]
            try:
                return {"image": self.load(path, slice_index), "skipped": skipped}
            except ImageReadError as e:
                skipped += 1
                if path not in self._warned:
                    self._warned.add(path)
                    logger.warning("skipping unreadable image: %s", e)
        raise RuntimeError(
            f"{_MAX_CONSECUTIVE_FAILURES} consecutive files under the pretraining folder could not be read "
            f"(last: {path}); is this the right folder?"
        )


class SkippedImagesReport:
    """Counts the unreadable files the data loader passed over and logs the total at the end of the run."""

    def __init__(self, key: str = "skipped"):
        self.key = key

    def attach(self, engine: Engine) -> None:
        engine.state.skipped_images = 0
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def _count(self, engine: Engine) -> None:
        batch = engine.state.batch
        if isinstance(batch, dict) and self.key in batch:
            engine.state.skipped_images += int(torch.as_tensor(batch[self.key]).sum())

    def _report(self, engine: Engine) -> None:
        n = getattr(engine.state, "skipped_images", 0)
        if n:
            engine.logger.warning("skipped %d unreadable image reads in this run (see the warnings above)", n)
        else:
            engine.logger.info("every image was readable")
