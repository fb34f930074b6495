"""Segmentation-specific transforms: masks checked against their image."""

from __future__ import annotations

import os
from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from visionfm_core.data.dense import has_shape, image_of, like, original_hw, source_name

__all__ = ["ValidateMaskd"]


class ValidateMaskd(MapTransform):
    """Check binary masks (vessel labels, field-of-view masks) against their image and make them float32 {0, 1}.

    Each mask must have the image's size (checked before any resize, and also on the original sizes in the meta
    when both carry one) and hold only {0, 1} or {0, 255} (or bool). Accepted layouts: (H, W), (1, H, W), and
    (3 or 4, H, W) grey masks saved as RGB(A) with equal colour channels (alpha is ignored). The result is a
    (1, H, W) float32 {0, 1} tensor (a MetaTensor keeping the mask's meta when the input was one).

    Raises:
        ValueError: naming the mask file, what was found (size, values, channels) and the image file.
    """

    def __init__(self, keys: KeysCollection = "label", image_key: str = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = image_of(d, self.image_key, "ValidateMaskd")
        for key in self.key_iterator(d):
            d[key] = self._validate(d[key], key, image)
        return d

    def _validate(self, mask, key: Hashable, image) -> torch.Tensor:
        where = f"Mask {source_name(mask)} (key {key!r}) for image {source_name(image)}"
        if isinstance(mask, (str, os.PathLike)):
            raise ValueError(f"{where} is still a file path; load it (LoadImaged) before ValidateMaskd.")
        m = mask.as_subclass(torch.Tensor) if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3 or m.shape[0] not in (1, 3, 4):
            raise ValueError(f"{where} has shape {tuple(m.shape)}; expected (H, W), (1, H, W) or a grey mask saved "
                             "as RGB(A), channel first.")
        if m.shape[0] > 1:
            colour = m[:3]
            if not (torch.equal(colour[0], colour[1]) and torch.equal(colour[0], colour[2])):
                raise ValueError(f"{where} is a colour image (its R, G, B channels differ); a binary mask with "
                                 "values {0, 1} or {0, 255} is expected.")
            m = colour[:1]

        image_hw = tuple(int(s) for s in image.shape[-2:])
        mask_hw = tuple(int(s) for s in m.shape[-2:])
        both_known = has_shape(mask) and has_shape(image)
        if mask_hw != image_hw or (both_known and original_hw(mask) != original_hw(image)):
            found = original_hw(mask) if has_shape(mask) else mask_hw
            expected = original_hw(image) if has_shape(image) else image_hw
            raise ValueError(f"{where}: the mask is {found[0]}x{found[1]} (H x W) but the image is "
                             f"{expected[0]}x{expected[1]}; a mask must have exactly its image's size.")

        if m.dtype != torch.bool:
            is01 = ((m == 0) | (m == 1)).all()
            if not is01 and not ((m == 0) | (m == 255)).all():
                values = torch.unique(m)
                shown = ", ".join(f"{v:g}" for v in values[:8].tolist()) + (", ..." if len(values) > 8 else "")
                raise ValueError(f"{where} has values {shown}; a binary mask must hold only {{0, 1}} or {{0, 255}} "
                                 "(was it saved as JPEG, or resized with interpolation?).")
        return like((m != 0).to(torch.float32), mask)
