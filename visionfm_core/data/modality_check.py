"""Does an image look like the bundle's modality? Channels and intensity statistics, before any greying.

Colour modalities (fundus, slit lamp, external eye) are photographs with clearly different R, G and B; grey
modalities (OCT, FFA, ultrasound, UBM, MRI) have equal channels or nearly so. An image on the wrong side of that
line is almost surely of another modality (a grey OCT scan fed to a colour-fundus bundle, a fundus photo fed to
an OCT bundle); a flat image (no contrast) is no photograph of anything. Training refuses such a folder
(`check_modality_of_images`); inference grades the image but says so in a per-image warning column
(`ModalityCheckd`), so one odd file never stops a batch job.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from visionfm_core.data.io.readers import unit_rgb
from visionfm_core.modalities import Modality, get_modality

__all__ = ["CHROMA_COLOUR", "CHROMA_GREY", "chroma", "modality_mismatch", "ModalityCheckd"]

# mean |channel - mean of channels| of a [0, 1] image: real colour photos measure ~0.05-0.2, grey scans 0 (or
# ~0.01 after JPEG chroma subsampling); the thresholds sit well clear of both
CHROMA_COLOUR = 0.05   # above: a colour photograph
CHROMA_GREY = 1e-3     # below: a grey image
MIN_CONTRAST = 0.01    # standard deviation below this: a flat (blank) image


def chroma(rgb: np.ndarray) -> float:
    """Mean absolute deviation of the channels from their mean, for a (3, H, W) image in [0, 1]."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return float(np.abs(rgb - rgb.mean(0, keepdims=True)).mean())


def modality_mismatch(rgb: np.ndarray, modality: str | Modality) -> str:
    """Why a (3, H, W) [0, 1] image (channels as stored, not greyed) does not look like `modality`; "" if it does."""
    m = get_modality(modality)
    c = chroma(rgb)
    if m.grey and c > CHROMA_COLOUR:
        return f"looks like a colour photograph (chroma {c:.3f}), but {m.name} ({m.description}) is a grey modality"
    if not m.grey and c < CHROMA_GREY:
        return f"is greyscale, but {m.name} ({m.description}) is a colour modality"
    spread = float(np.asarray(rgb, dtype=np.float32).std())
    if spread < MIN_CONTRAST:
        return f"is nearly flat (intensity std {spread:.4f}): no {m.description} content"
    return ""


class ModalityCheckd(MapTransform):
    """Put under `warning_key` why each image does not look like `modality` ("" when it does).

    Place it right after ``LoadImaged(reader=EyeImageReader())`` and before ``EyeChannelsd`` (which greys the
    grey modalities and so would hide a colour photo). Statistics are taken on a strided view of at most ~128 px,
    so the check costs little on 4000 px photos. Writers copy the message into the output table's warning column.
    """

    def __init__(self, keys: KeysCollection, modality: str | Modality, warning_key: str = "modality_warning",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality = get_modality(modality)
        self.warning_key = warning_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        messages = []
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor) or "scaling" not in img.meta:
                raise ValueError("ModalityCheckd goes between LoadImaged(reader=EyeImageReader()) and EyeChannelsd, "
                                 f"got {type(img).__name__} under key {key!r}")
            pixels, meta = img.detach().cpu().as_tensor().numpy(), img.meta
            spatial = tuple(int(s) for s in meta.get("spatial_shape", ()))
            if len(spatial) == 2 and pixels.shape[:2] == spatial:
                # stride the stored (H, W[, C]) pixels before scaling them: scaling a whole 4000 px photo
                # costs more than the rest of the preprocessing
                step = max(1, max(spatial) // 128)
                pixels = pixels[::step, ::step]
                meta = {**meta, "spatial_shape": np.asarray(pixels.shape[:2])}
            rgb = unit_rgb(pixels, meta, grey=False)
            step = max(1, max(rgb.shape[1:]) // 128)
            message = modality_mismatch(rgb[:, ::step, ::step], self.modality)
            if message:
                messages.append(f"{key} {message}" if len(self.keys) > 1 else message)
        d[self.warning_key] = "; ".join(messages)
        return d
