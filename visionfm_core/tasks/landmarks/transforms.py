"""Landmark-specific transforms: points checked, scaled with the image, and read back from heatmaps."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from visionfm_core.data.dense import has_shape, image_of, original_hw, source_name
from visionfm_core.tasks.landmarks.heatmaps import soft_argmax_2d

__all__ = ["scale_points", "ValidateLandmarksd", "ScaleLandmarksd", "HeatmapsToLandmarksd"]


def scale_points(points, from_hw: Sequence[int], to_hw: Sequence[int]) -> torch.Tensor:
    """Map (L, 2) (x, y) points from an image of size ``from_hw`` (H, W) to the same image resized to ``to_hw``,
    with pixel centres at integer coordinates: ``x' = (x + 0.5) * w / W - 0.5`` (and likewise for y)."""
    if isinstance(points, torch.Tensor):
        points = points.as_subclass(torch.Tensor)  # plain tensor out, whatever meta a MetaTensor carried
    pts = torch.as_tensor(points, dtype=torch.float32)
    scale = torch.tensor([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]], dtype=torch.float32, device=pts.device)
    return (pts + 0.5) * scale - 0.5


class ValidateLandmarksd(MapTransform):
    """Check landmark coordinates ((L, 2) as (x, y) in original image pixels) and make them a float32 tensor.

    Each landmark must be numeric, finite and inside the original image (``0 <= x < W``, ``0 <= y < H``, the size
    from the image meta ``spatial_shape``), and there must be ``num_landmarks`` of them (any number when None).
    ``names`` only makes messages clearer.

    Raises:
        ValueError: naming the image file and the landmark (index and name).
    """

    def __init__(self, keys: KeysCollection = "landmarks", image_key: str = "image", num_landmarks: int | None = None,
                 names: Sequence[str] | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.num_landmarks = num_landmarks if num_landmarks is None else int(num_landmarks)
        self.names = list(names) if names is not None else None
        if self.names is not None and self.num_landmarks is not None and len(self.names) != self.num_landmarks:
            raise ValueError(f"{len(self.names)} names given for {self.num_landmarks} landmarks.")

    def _label(self, i: int) -> str:
        return f"landmark {i}" + (f" ({self.names[i]})" if self.names and i < len(self.names) else "")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = image_of(d, self.image_key, "ValidateLandmarksd")
        height, width = original_hw(image)
        for key in self.key_iterator(d):
            where = f"Landmarks (key {key!r}) of image {source_name(image)}"
            value = d[key]
            try:
                pts = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where} are not numeric (x, y) pairs: {value!r} ({e}).") from e
            if pts.ndim != 2 or pts.shape[1] != 2:
                raise ValueError(f"{where} must be a list of (x, y) pairs, got shape {pts.shape}: {value!r}.")
            expected = self.num_landmarks
            if expected is not None and pts.shape[0] != expected:
                raise ValueError(f"{where}: {pts.shape[0]} landmarks given, {expected} expected"
                                 + (f" ({', '.join(self.names)})." if self.names else "."))
            for i, (x, y) in enumerate(pts):
                if not (np.isfinite(x) and np.isfinite(y)):
                    raise ValueError(f"{where}: {self._label(i)} is ({x:g}, {y:g}); coordinates must be finite.")
                if not (0 <= x < width and 0 <= y < height):
                    raise ValueError(f"{where}: {self._label(i)} at (x={x:g}, y={y:g}) lies outside the "
                                     f"{width}x{height} (W x H) image; coordinates are original image pixels.")
            d[key] = torch.as_tensor(pts, dtype=torch.float32)
        return d


class ScaleLandmarksd(MapTransform):
    """Map landmarks from original image pixels to pixels of the current (resized) image, e.g. the network input.

    Uses the image meta ``spatial_shape`` (original H, W) and the image's current size; see :func:`scale_points`
    for the pixel-centre convention. Only resizing is accounted for (no crops, pads or flips). The result is a
    float32 (L, 2) tensor, under ``output_key`` (default: in place, e.g. ``keys="landmarks", output_key="label"``
    keeps the original points and gives the loss the scaled ones).
    """

    def __init__(self, keys: KeysCollection = "landmarks", image_key: str = "image", allow_missing_keys: bool = False,
                 output_key: str | Sequence[str] | None = None):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.output_keys = ensure_tuple_rep(output_key, len(self.keys))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = image_of(d, self.image_key, "ScaleLandmarksd")
        current = tuple(int(s) for s in image.shape[-2:])
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key or key] = scale_points(d[key], original_hw(image), current)
        return d


class HeatmapsToLandmarksd(MapTransform):
    """Postprocessing: (L, h, w) heatmap logits of one (decollated) sample -> (L, 2) float32 (x, y) points in pixels
    of the ORIGINAL image, stored under ``output_key``.

    Positions come from :func:`visionfm_core.tasks.landmarks.heatmaps.soft_argmax_2d` (sub-pixel) in heatmap pixels, then are mapped
    from the heatmap's size to the original size in the image meta ``spatial_shape`` (the inverse of
    :class:`ScaleLandmarksd` when the heatmaps have the network input's size; heatmaps already brought back to the
    original size are mapped 1:1), and, for an image read at a reduced size (meta ``decode_scale`` of
    ``EyeImageReader(decode_size=...)``), from the decoded pixels to the file's.
    """

    def __init__(self, keys: KeysCollection = "pred", image_key: str = "image",
                 output_key: str | Sequence[str] = "points", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.output_keys = ensure_tuple_rep(output_key, len(self.keys))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = image_of(d, self.image_key, "HeatmapsToLandmarksd")
        if not has_shape(image):
            raise ValueError(f"HeatmapsToLandmarksd: image {source_name(image)} has no meta 'spatial_shape' (its original "
                             "size), so points cannot be mapped back to it.")
        for key, out_key in self.key_iterator(d, self.output_keys):
            heatmaps = torch.as_tensor(d[key])
            if heatmaps.ndim != 3:
                raise ValueError(f"HeatmapsToLandmarksd expects one sample's heatmaps (L, h, w) under {key!r} for "
                                 f"image {source_name(image)}, got shape {tuple(heatmaps.shape)} (decollate the batch).")
            points = soft_argmax_2d(heatmaps.as_subclass(torch.Tensor).detach()[None])[0]
            points = scale_points(points, tuple(heatmaps.shape[-2:]), original_hw(image))
            scale = (getattr(image, "meta", None) or {}).get("decode_scale")
            if scale is not None:  # read reduced (EyeImageReader(decode_size)): decoded pixel i is centred at
                scale = float(torch.as_tensor(scale).reshape(-1)[0])  # s * i + (s - 1) / 2 of the file
                points = points * scale + (scale - 1) / 2
            d[out_key] = points
        return d
