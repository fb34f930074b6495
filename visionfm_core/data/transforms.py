"""MONAI dictionary transforms for loading, normalising and checking VisionFM classification samples."""

from __future__ import annotations

import numbers
import os
from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from visionfm_core.data.readers import read_image
from visionfm_core.modalities import Modality, get_modality

__all__ = ["LoadEyeImaged", "ModalityNormalized", "ValidateLabeld"]


class LoadEyeImaged(MapTransform):
    """Replace each key's file path with a (3, H, W) float32 [0, 1] :class:`monai.data.MetaTensor`.

    Reading goes through :func:`visionfm_core.data.read_image` (so ``modality`` greys out grey modalities). The meta
    dict carries ``filename_or_obj`` (the path) and ``spatial_shape`` (H, W), which is what
    ``monai.data.decollate_batch`` and MONAI handlers (e.g. ``ClassificationSaver``) use to name outputs.
    """

    def __init__(
        self, keys: KeysCollection, modality: str | Modality | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality = get_modality(modality) if modality is not None else None

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"LoadEyeImaged expects a file path under key {key!r}, got {type(path).__name__}.")
            path = os.fspath(path)
            img = read_image(path, self.modality)
            meta = {
                "filename_or_obj": path,
                "spatial_shape": np.asarray(img.shape[1:]),
                # Already channel-first: makes a later EnsureChannelFirstd a no-op instead of an error.
                "original_channel_dim": 0,
            }
            d[key] = MetaTensor(torch.from_numpy(img), meta=meta)
        return d


class ModalityNormalized(MapTransform):
    """Normalise (3, H, W) images in [0, 1] with the modality's pretraining mean/std: ``(x - mean) / std``.

    The encoders were pretrained with exactly these per-modality statistics, so using others degrades features.
    """

    def __init__(self, keys: KeysCollection, modality: str | Modality, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality = get_modality(modality)
        self.mean = np.asarray(self.modality.mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(self.modality.std, dtype=np.float32).reshape(3, 1, 1)

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

