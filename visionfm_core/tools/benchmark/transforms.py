"""The fine-tuning recipe's training crop: RandomResizedCrop as torchvision draws it, as a MONAI dictionary transform.

The classification bundle trains on resize + flips (its linear-probe recipe); the original fine-tunes with
RandomResizedCrop 224 and flips, which the benchmark's ``finetune`` protocol puts in the bundle's training pipeline
through an override. The crop is cut from the image as read (before any resize), then resized to ``size``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

__all__ = ["RandResizedCropd"]


class RandResizedCropd(Randomizable, MapTransform):
    """Crop a random area (``scale`` of the image, aspect ``ratio``) and resize it to ``size`` x ``size``.

    The box is drawn as ``torchvision.transforms.RandomResizedCrop.get_params`` does (10 tries, then the largest
    centred crop within ``ratio``), from this transform's random state (seeded by MONAI's ``set_determinism``). The
    same box is cut from every key. Images are (C, H, W) in [0, 1]; bicubic with antialiasing, clamped to [0, 1].
    """

    def __init__(self, keys: KeysCollection, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)
        self._box = (0, 0, 1, 1)

    def randomize(self, height: int, width: int) -> None:
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(*log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                self._box = (int(self.R.randint(0, height - h + 1)), int(self.R.randint(0, width - w + 1)), h, w)
                return
        in_ratio = width / height  # fallback: the largest centred crop whose aspect ratio lies in `ratio`
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            h, w = height, round(height * max(self.ratio))
        else:
            h, w = height, width
        self._box = ((height - h) // 2, (width - w) // 2, h, w)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        height, width = d[keys[0]].shape[-2:]
        self.randomize(int(height), int(width))
        top, left, h, w = self._box
        for key in keys:
            img = torch.as_tensor(d[key]).as_subclass(torch.Tensor).float()
            crop = img[None, :, top:top + h, left:left + w]
            d[key] = F.interpolate(crop, size=(self.size, self.size), mode="bicubic", align_corners=False,
                                   antialias=True)[0].clamp_(0, 1)
        return d
