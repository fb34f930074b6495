"""Slice-wise (2.5-D) use of a 2-D VisionFM task model on volumes, and the transforms that prepare OCT cubes for it.

Layout: MONAI channel-first volumes (C, I, J, K) with K the slice axis. For an OCT cube slice k is B-scan k, shown
to the 2-D encoder as an image with I as rows (axial depth) and J as columns (lateral).

Slice-wise or true 3-D?
- Slice-wise (this module) reuses the pretrained 2-D encoder exactly as it was pretrained, at a cost linear in the
  number of slices. It is right when slices are far apart relative to the in-plane pixels (OCT cubes: 49-128
  B-scans 60-250 um apart against 4-12 um pixels) and when training labels exist per B-scan.
- True 3-D (`VisionFMTaskModel(..., spatial_dims=3)`, an encoder inflated from the 2-D weights) suits near-isotropic
  volumes such as MRI, where structures continue smoothly across slices.

Context channels (`SliceContextd(context=True)`): the 3 input channels of slice k are slices k-1, k, k+1 instead of
3 copies of slice k. The pretrained encoder only ever saw 3 identical grey channels, so context channels change its
input statistics; use them when the encoder is fine-tuned (`freeze_encoder=False`) and neighbouring B-scans are
close enough to be correlated (dense cubes, <= ~60 um apart). With a frozen encoder keep `context=False`.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from visionfm_core.modalities import get_modality
from visionfm_core.models.task import VisionFMTaskModel

__all__ = ["SliceWiseTaskModel", "SliceContextd", "VolumeIntensityd", "ValidateLabelVolumed", "black_level"]


class SliceWiseTaskModel(VisionFMTaskModel):
    """A 2-D `VisionFMTaskModel` (encoder + dense head, e.g. the UNETR segmentation decoder) applied to every slice
    of a volume: `forward` takes (B, C, I, J, K), folds the K slices into the batch, runs the 2-D model on
    `slice_batch_size` slices at a time (bounding memory on 128-slice cubes) and returns (B, out, I, J, K).

    Constructor: that of `VisionFMTaskModel` plus `slice_batch_size`; the state dict is the 2-D model's, so weights
    of a 2-D segmentation model load as they are. I and J must be multiples of the patch size. TorchScript-able;
    an ONNX export is traced at one input shape.
    """

    def __init__(self, head: str = "segmentation", num_outputs: int = 1, slice_batch_size: int = 16, **kwargs):
        super().__init__(head, num_outputs, **kwargs)
        if slice_batch_size < 1:
            raise ValueError(f"slice_batch_size must be at least 1, not {slice_batch_size}")
        self.slice_batch_size = int(slice_batch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"SliceWiseTaskModel takes volumes (B, C, I, J, K), got a {x.dim()}-D input "
                             f"{list(x.shape)}; a single 2-D image is (B, C, H, W, 1)")
        b, c, i, j, k = x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4]
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * k, c, i, j)
        outputs: list[torch.Tensor] = []
        for start in range(0, b * k, self.slice_batch_size):
            chunk = slices[start: start + self.slice_batch_size]
            outputs.append(self.head(self.encode(chunk), chunk))
        out = torch.cat(outputs, dim=0)
        return out.reshape(b, k, out.shape[1], i, j).permute(0, 2, 3, 4, 1)


def black_level(modality: str = "OCT") -> float:
    """The normalised value of intensity 0 (black) for `modality`: what volumes are padded with after normalisation
    (e.g. `SlidingWindowInferer(cval=...)`), so padding looks like the black padding of training crops."""
    m = get_modality(modality)
    return float(-m.mean[0] / m.std[0])


def _name(img) -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<unnamed volume>"))


def _check_volume(img, key: str, what: str) -> None:
    if img.ndim != 4:
        shape = tuple(img.shape)
        hint = (" This is a 2-D image: this bundle takes volumes (OCT cubes of B-scans as NIfTI or DICOM); "
                "use a 2-D OCT bundle for single B-scans." if img.ndim == 3 else "")
        raise ValueError(f"{_name(img)}: {what} expects a volume shaped (C, I, J, K) under key {key!r}, got shape "
                         f"{shape}.{hint}")
    if min(img.shape[1:]) < 1:
        raise ValueError(f"{_name(img)}: the volume has an empty axis (shape {tuple(img.shape)}).")


class VolumeIntensityd(MapTransform):
    """Grey volumes to intensities in [0, 1], as the 2-D encoder saw its B-scans.

    - 8-bit data (stored as uint8, or integer values all within 0..255): divided by 255, so the B-scans look
      exactly as exported;
    - float data already within [0, 1]: kept;
    - anything else (uint16, float dB values, ...): the `lower`..`upper` percentiles mapped to 0..1 and clipped.
    Load with `LoadImaged(..., dtype=None)` so the stored dtype is seen. NaN or infinite values are refused,
    naming the file.
    """

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            _check_volume(img, key, "VolumeIntensityd")
            values = torch.as_tensor(img).as_subclass(torch.Tensor)
            if values.dtype == torch.uint8:
                scaled = values.float() / 255.0
            else:
                values = values.float()
                if not bool(torch.isfinite(values).all()):
                    raise ValueError(f"{_name(img)}: the volume holds NaN or infinite values; it cannot be "
                                     "segmented (check the export or conversion).")
                lo, hi = float(values.min()), float(values.max())
                if lo >= 0 and hi <= 255 and bool((values == values.round()).all()) and hi > 1:
                    scaled = values / 255.0
                elif lo >= 0 and hi <= 1:
                    scaled = values
                else:
                    sample = values.reshape(-1)[:: max(1, values.numel() // 2_000_000)].numpy()
                    p_lo, p_hi = np.percentile(sample, [self.lower, self.upper])
                    scaled = ((values - float(p_lo)) / max(float(p_hi - p_lo), 1e-8)).clamp(0.0, 1.0)
            d[key] = MetaTensor(scaled, meta=img.meta) if isinstance(img, MetaTensor) else scaled
        return d


class SliceContextd(MapTransform):
    """A grey volume (1, I, J, K) -> the encoder's 3 channels (3, I, J, K), per slice k:

    - `context=False`: slice k copied into the 3 channels (what the 2-D encoder was pretrained on);
    - `context=True`: slices k-1, k, k+1 (the first and last slices repeat themselves at the edges), giving each
      B-scan its neighbours; see the module docstring for when to use it.
    """

    def __init__(self, keys: KeysCollection, context: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.context = bool(context)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            _check_volume(img, key, "SliceContextd")
            if img.shape[0] != 1:
                raise ValueError(f"{_name(img)}: SliceContextd expects a grey volume with 1 channel (1, I, J, K), "
                                 f"got {img.shape[0]} channels (shape {tuple(img.shape)}).")
            x = torch.as_tensor(img).as_subclass(torch.Tensor)
            if self.context:
                prev = torch.cat([x[..., :1], x[..., :-1]], dim=-1)
                nxt = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)
                out = torch.cat([prev, x, nxt], dim=0)
            else:
                out = x.repeat(3, 1, 1, 1)
            d[key] = MetaTensor(out, meta=img.meta) if isinstance(img, MetaTensor) else out
        return d


class ValidateLabelVolumed(MapTransform):
    """Check label volumes against their image before training or scoring: same spatial shape, one channel, integer
    class indices in 0..num_classes-1, or `ignore_index` (voxels nobody annotated, when given). Errors name both
    files and the values found outside."""

    def __init__(self, keys: KeysCollection, num_classes: int, image_key: str = "image",
                 ignore_index: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = int(num_classes)
        self.image_key = image_key
        self.ignore_index = None if ignore_index is None else int(ignore_index)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d.get(self.image_key)
        for key in self.key_iterator(d):
            label = d[key]
            where = f"label {_name(label)} (for image {_name(image)})"
            if label.ndim != 4 or label.shape[0] != 1:
                raise ValueError(f"{where}: expected one channel (1, I, J, K), got shape {tuple(label.shape)}.")
            if image is not None and tuple(label.shape[1:]) != tuple(image.shape[1:]):
                raise ValueError(f"{where}: shape {tuple(label.shape[1:])} differs from the image's "
                                 f"{tuple(image.shape[1:])}.")
            values = torch.as_tensor(label).as_subclass(torch.Tensor)
            if values.is_floating_point() and not bool((values == values.round()).all()):
                raise ValueError(f"{where}: holds non-integer values; a label map of class indices is expected.")
            found = torch.unique(values).long().tolist()
            bad = [v for v in found if not 0 <= v < self.num_classes and v != self.ignore_index]
            if bad:
                allowed = f"the {self.num_classes} classes 0..{self.num_classes - 1}" + (
                    f" and the ignore value {self.ignore_index} (not annotated)" if self.ignore_index is not None
                    else "")
                shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
                raise ValueError(f"{where}: values {shown} are outside {allowed}.")
        return d
