"""MONAI transforms for VisionFM samples: channels and scaling after ``LoadImaged(reader=EyeImageReader())``,
label maps, normalisation, label checks, and the evaluation preprocessing written once (:func:`eval_transforms`)."""

from __future__ import annotations

import numbers
import os
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureTyped, LoadImaged, MapTransform, Transform

from visionfm_core.data.io.readers import SCALING_KEYS, EyeImageReader, label_channel_first, unit_rgb
from visionfm_core.data.resize import EyeResized
from visionfm_core.modalities import Modality, get_modality

__all__ = [
    "EyeChannels",
    "EyeChannelsd",
    "LabelMap",
    "LabelMapd",
    "LoadEyeImaged",
    "ModalityNormalized",
    "ValidateLabeld",
    "eval_transforms",
]


def _loaded(img: object, who: str) -> MetaTensor:
    if not isinstance(img, MetaTensor) or "scaling" not in img.meta:
        raise ValueError(
            f"{who} expects an image loaded by LoadImaged(reader=EyeImageReader()) (its meta says how to scale and "
            f"lay out the pixels), got {type(img).__name__}"
            + (" without that meta (was it applied twice?)" if isinstance(img, MetaTensor) else "")
            + "."
        )
    return img


def _with_pixels(img: MetaTensor, pixels: np.ndarray) -> MetaTensor:
    """A MetaTensor of ``pixels`` (now channel-first) carrying ``img``'s meta, minus the scaling hints just used."""
    meta = {k: v for k, v in img.meta.items() if k not in SCALING_KEYS}
    # Channel-first now: makes a later EnsureChannelFirstd a no-op instead of an error.
    meta["original_channel_dim"] = 0
    return MetaTensor(torch.from_numpy(pixels), meta=meta, applied_operations=list(img.applied_operations))


class EyeChannels(Transform):
    """The loaded file (``LoadImage(reader=EyeImageReader())``) -> (3, H, W) float32 in [0, 1] ``MetaTensor``.

    Scaling follows the stored type (8-bit / 255, 16-bit / 65535, DICOM / (2**BitsStored - 1), min-max for
    signed data), grey is copied to 3 channels, alpha dropped, palette colours looked up, MONOCHROME1 inverted;
    grey modalities (OCT, FFA, ultrasound, UBM, MRI) get 3 copies of the luminance. The rules are
    :func:`visionfm_core.data.io.readers.unit_rgb`, the ones :func:`read_image` uses. Meta is kept (``spatial_shape``
    = original (H, W), ``filename_or_obj``, affine), with ``original_channel_dim`` = 0.
    """

    def __init__(self, modality: str | Modality | None = None) -> None:
        self.modality = get_modality(modality) if modality is not None else None

    def __call__(self, img: MetaTensor) -> MetaTensor:
        img = _loaded(img, "EyeChannelsd")
        grey = self.modality is not None and self.modality.grey
        return _with_pixels(img, unit_rgb(img.detach().cpu().as_tensor().numpy(), img.meta, grey=grey))


class EyeChannelsd(MapTransform):
    """Dictionary version of :class:`EyeChannels`, after ``LoadImaged(keys, reader="EyeImageReader")``."""

    def __init__(self, keys: KeysCollection, modality: str | Modality | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = EyeChannels(modality)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.channels(d[key])
        return d


class LabelMap(Transform):
    """A loaded label map -> (1, H, W) (or (1, *spatial) for a volume) with its stored values: no intensity
    scaling, no channel copying (0/255 masks stay 0/255, palette masks keep their indices). An RGB mask with
    equal channels becomes one channel; differing channels or a varying alpha raise ``ImageReadError`` naming
    the file. Read GIF/PNG/TIFF/BMP/NIfTI masks with ``LoadImaged(reader="EyeImageReader")`` first."""

    def __call__(self, img: MetaTensor) -> MetaTensor:
        img = _loaded(img, "LabelMapd")
        return _with_pixels(img, label_channel_first(img.detach().cpu().as_tensor().numpy(), img.meta))


class LabelMapd(MapTransform):
    """Dictionary version of :class:`LabelMap`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_map = LabelMap()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.label_map(d[key])
        return d


class LoadEyeImaged(MapTransform):
    """Replace each key's file path with a (3, H, W) float32 [0, 1] :class:`monai.data.MetaTensor`.

    The convenience for ``LoadImaged(keys, reader=EyeImageReader(), image_only=True)`` followed by
    ``EyeChannelsd(keys, modality)`` (so ``modality`` greys out grey modalities). The meta carries
    ``filename_or_obj`` (the path), ``spatial_shape`` (H, W) and the affine, which is what
    ``monai.data.decollate_batch``, ``Invertd`` and MONAI handlers (e.g. ``ClassificationSaver``) use.
    """

    def __init__(
        self, keys: KeysCollection, modality: str | Modality | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality = get_modality(modality) if modality is not None else None
        self.load = LoadImaged(self.keys, reader=EyeImageReader(), image_only=True,
                               allow_missing_keys=allow_missing_keys)
        self.channels = EyeChannelsd(self.keys, self.modality, allow_missing_keys=allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        for key in self.key_iterator(data):
            if not isinstance(data[key], (str, os.PathLike)):
                raise TypeError(
                    f"LoadEyeImaged expects a file path under key {key!r}, got {type(data[key]).__name__}."
                )
        return self.channels(self.load(data))


class ModalityNormalized(MapTransform):
    """Normalise (3, H, W) images in [0, 1] with the encoder's pretraining mean/std: ``(x - mean) / std``.

    VisionFM's encoders were pretrained with per-modality statistics, RETFound's and DINOv2's with ImageNet's
    (`encoder`, an encoder family: `visionfm_core.encoders.families`); using others degrades features.
    """

    def __init__(self, keys: KeysCollection, modality: str | Modality, allow_missing_keys: bool = False,
                 encoder: str = "visionfm") -> None:
        from visionfm_core.encoders.families import normalisation_stats

        super().__init__(keys, allow_missing_keys)
        self.modality = get_modality(modality)
        mean, std = normalisation_stats(encoder, self.modality.name)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"ModalityNormalized({self.modality.name}) expects a 3-channel image shaped (3, H, W) under key "
                    f"{key!r}, got shape {tuple(img.shape)}."
                )
            if isinstance(img, torch.Tensor):  # keeps MetaTensor meta
                mean = torch.as_tensor(self.mean, device=img.device)
                std = torch.as_tensor(self.std, device=img.device)
                d[key] = (img.float() - mean) / std
            else:
                d[key] = (np.asarray(img, dtype=np.float32) - self.mean) / self.std
        return d


def _image_name(data: Mapping[Hashable, object], image_key: str) -> str:
    img = data.get(image_key)
    if isinstance(img, MetaTensor) and "filename_or_obj" in img.meta:
        return str(img.meta["filename_or_obj"])
    if isinstance(img, (str, os.PathLike)):
        return os.fspath(img)
    return "<unknown image>"


def _as_int_label(value: object) -> int | None:
    """The integer class index in ``value`` (int, numpy or 1-element tensor/array), or None if it is not one."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if np.prod(value.shape, dtype=int) != 1:
            return None
        value = value.reshape(-1)[0].item()
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    # Float labels (e.g. after EnsureTyped(dtype=float)) are fine when they hold a whole number.
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    return None


class ValidateLabeld(MapTransform):
    """Check each key holds an integer class label in ``0 .. num_classes - 1`` and make it a torch long scalar.

    A bad label raises ``ValueError`` naming the image file (``image_key``'s meta ``filename_or_obj`` or path), so
    one mislabelled row in a large datalist is easy to find instead of a CUDA device-side assert mid-epoch.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        image_key: str = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = _as_int_label(d[key])
            if label is None or not 0 <= label < self.num_classes:
                raise ValueError(
                    f"Invalid label {d[key]!r} under key {key!r} for image {_image_name(d, self.image_key)}: "
                    f"expected an integer class index in 0..{self.num_classes - 1}."
                )
            d[key] = torch.tensor(label, dtype=torch.long)
        return d


def eval_transforms(
    modality: str | Modality, image_size: int | Sequence[int], keys: KeysCollection = "image",
    encoder: str = "visionfm",
) -> Compose:
    """The evaluation preprocessing of VisionFM images, written once: read (``LoadImaged`` with
    :class:`EyeImageReader`), to 3 channels in [0, 1] (:class:`EyeChannelsd`), resize (:class:`EyeResized`,
    bilinear), normalise with the modality's statistics (:class:`ModalityNormalized`), float32.

    Used by the k-NN probe and Python callers; invertible with ``Invertd`` (the resize is recorded).
    """
    return Compose([
        LoadImaged(keys, reader=EyeImageReader(), image_only=True),
        EyeChannelsd(keys, modality),
        EyeResized(keys, image_size, mode="bilinear"),
        ModalityNormalized(keys, modality, encoder=encoder),
        EnsureTyped(keys, dtype=torch.float32),
    ])
