"""Unlabelled image folders for self-supervised pretraining.

A pretraining folder may hold a million files, a few of them unreadable: those are skipped with one warning
line each (the sample is replaced by the next readable file, so every batch keeps its size, which
multi-process training needs) and counted; `SkippedImagesReport` logs the total when the run ends.

Pretraining crops (RandomResizedCrop semantics) must come from the image as stored, not from a small square copy:
each image is read at a short side of `size` (2 x the crop size by default; JPEGs decoded at a reduced DCT scale
when that is enough), its aspect ratio kept, and placed in the top-left corner of a fixed (size, size x
max_aspect) canvas so that a batch stacks; an alpha channel marks the image, and `MultiCropAugmentation` draws
its crops inside it only.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.utils.data import Dataset

from visionfm_core.data.io.readers import ImageReadError, count_slices, list_images, read_array, read_image, unit_rgb
from visionfm_core.data.modality_check import CHROMA_COLOUR, CHROMA_GREY, chroma
from visionfm_core.data.resize import resize
from visionfm_core.modalities import get_modality

__all__ = ["UnlabelledImageDataset", "SkippedImagesReport", "check_modality_of_images", "fit_short_side"]
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


def fit_short_side(height: int, width: int, size: int, max_aspect: float) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Where and how big an image lands on the pretraining canvas (size, round(size x max_aspect)).

    Returns ((top, left, h, w) of the stored image to keep, (h, w) to resize it to): the short side becomes `size`,
    the aspect ratio is kept; a long side beyond `max_aspect` x the short side is centre-cropped (a wider landscape
    image keeps its middle), and a portrait image keeps its centred square (the canvas is landscape: eye images
    are landscape or square).
    """
    if width >= height:
        keep_w = min(width, max(1, int(round(height * max_aspect))))
        box = (0, (width - keep_w) // 2, height, keep_w)
        out = (size, min(canvas_width(size, max_aspect), max(1, int(round(keep_w * size / height)))))
    else:
        box = ((height - width) // 2, 0, width, width)
        out = (size, size)
    return box, out


def canvas_width(size: int, max_aspect: float) -> int:
    return int(round(size * max_aspect))


class UnlabelledImageDataset(Dataset):
    """Every image under `folder` (recursively), read as 3-channel [0, 1] images (`read_image`'s rules, i.e.
    EyeImageReader + EyeChannelsd) and resized with `resize` (the resize of EyeResized) so that the short side is
    `size`, keeping the aspect ratio up to `max_aspect` (see `fit_short_side`). Volumes (multi-frame DICOM, 3-D
    NIfTI: OCT cubes, MRI series) contribute every slice when `expand_volumes`.

    Items are dicts `{"image": (4, size, round(size x max_aspect)) uint8 tensor, "skipped": number of unreadable
    files passed over}`: RGB, then an alpha channel that is 255 on the image (placed in the top-left corner) and 0
    on the padding, which `MultiCropAugmentation` reads to crop inside the image only. uint8 because the padded
    canvas is large (448 x 672 for 224 px crops: 1.2 MB as uint8 RGBA, 3.6 MB as float32 RGB) and goes through
    the DataLoader's shared memory and the host-to-device copy; the original works on 8-bit images too.

    `files`: these images instead of every image under `folder` (e.g. the entries of a datalist).

    `decode_size` (default: `size`): JPEGs are decoded at the largest DCT reduction (1/2, 1/4, 1/8) whose short
    side stays >= it (see `EyeImageReader`); None decodes every file in full.
    """

    def __init__(self, folder: str | os.PathLike, modality: str, size: int = 448, check_modality: bool = True,
                 expand_volumes: bool = True, max_aspect: float = 1.5, decode_size: int | None | str = "size",
                 files: list[str] | None = None):
        self.modality = get_modality(modality)
        if max_aspect < 1:
            raise ValueError(f"UnlabelledImageDataset max_aspect must be >= 1 (long / short side), got {max_aspect}")
        if files is None:
            files = list_images(folder)  # raises a clear error for a missing or empty folder
        elif not files:
            raise ValueError(f"no images listed for {folder}")
        # (path, slice or None): headers only are read here, so indexing a large folder stays cheap
        self.items: list[tuple[str, int | None]] = []
        for path in files:
            n = count_slices(path) if expand_volumes else 1
            self.items += [(path, i) for i in range(n)] if n > 1 else [(path, None)]
        self.files = files
        self.size = int(size)
        self.max_aspect = float(max_aspect)
        self.decode_size = self.size if decode_size == "size" else decode_size
        if check_modality:
            check_modality_of_images(self.files, self.modality.name)
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def canvas_shape(self) -> tuple[int, int]:
        return self.size, canvas_width(self.size, self.max_aspect)

    def read(self, path: str, slice_index: int | None = None) -> torch.Tensor:
        """(3, H, W) float in [0, 1], as `read_image` (a JPEG possibly decoded at a reduced scale)."""
        # JPEGs only: pretraining keeps the other formats' pixels as the full read gives them (a box-reduced PNG
        # would differ slightly); files over the reader's max_pixels are refused either way
        if self.decode_size is None or not path.lower().endswith((".jpg", ".jpeg")):
            return torch.from_numpy(read_image(path, self.modality, slice_index))
        array, meta = read_array(path, slice_index, self.decode_size)
        return torch.from_numpy(unit_rgb(array, meta, grey=self.modality.grey))

    def load(self, path: str, slice_index: int | None = None) -> torch.Tensor:
        image = self.read(path, slice_index)
        (top, left, h, w), out_size = fit_short_side(image.shape[1], image.shape[2], self.size, self.max_aspect)
        # the resize of every other VisionFM pipeline (EyeResized): bilinear + antialias keeps fine structures
        # (vessels, layers) when large images are shrunk, and stays inside [0, 1]
        image = resize(image[:, top : top + h, left : left + w], out_size, mode="bilinear")
        canvas = torch.zeros(4, *self.canvas_shape, dtype=torch.uint8)
        canvas[:3, : out_size[0], : out_size[1]] = image.mul_(255).round_()
        canvas[3, : out_size[0], : out_size[1]] = 255
        return canvas

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
