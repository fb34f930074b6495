"""MONAI transforms for dense tasks: checking masks and landmarks, mapping landmarks between the original image and
the resized network input, and turning landmark heatmaps back into coordinates of the original image.

They work on channel-first MetaTensors as loaded by ``LoadImaged(reader=EyeImageReader())``: ``meta["filename_or_obj"]``
names the file (for error messages) and ``meta["spatial_shape"]`` is the ORIGINAL (H, W), which resizing keeps.

Landmark coordinates are (x, y) in pixels, x to the right and y down, with pixel centres at integer coordinates
(the centre of the top-left pixel is (0, 0)). Resizing an image of width W to width w maps x to
``(x + 0.5) * w / W - 0.5``, so that the image edges (-0.5 and W - 0.5) map onto each other.
"""

from __future__ import annotations

import os
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from visionfm_core.models.landmarks import soft_argmax_2d

__all__ = [
    "ValidateMaskd",
    "ValidateLandmarksd",
    "ScaleLandmarksd",
    "HeatmapsToLandmarksd",
    "scale_points",
]


def _name(x: object) -> str:
    """The file an array was read from, for messages."""
    meta = getattr(x, "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):  # a collated batch
        name = name[0] if name else None
    if name:
        return str(name)
    return os.fspath(x) if isinstance(x, (str, os.PathLike)) else "<unnamed array>"


def _image(data: Mapping[Hashable, object], image_key: str, who: str) -> torch.Tensor:
    image = data.get(image_key)
    if image is None:
        raise KeyError(f"{who} needs the image under key {image_key!r} (to check sizes and name files); "
                       f"keys present: {sorted(map(str, data))}.")
    if isinstance(image, (str, os.PathLike)):
        raise ValueError(f"{who}: image {image} is still a file path; load it (LoadImaged) before this transform.")
    return image


def _original_hw(image) -> tuple[int, int]:
    """(H, W) of the image as stored on disk: meta ``spatial_shape`` when present, else its current size."""
    meta = getattr(image, "meta", None) or {}
    shape = meta.get("spatial_shape")
    if shape is None:
        return tuple(int(s) for s in image.shape[-2:])
    shape = np.asarray(shape.cpu() if isinstance(shape, torch.Tensor) else shape).reshape(-1)
    return int(shape[0]), int(shape[1])


def _like(new: torch.Tensor, old: object) -> torch.Tensor:
    """``new`` as a MetaTensor carrying ``old``'s meta and transform history, if ``old`` had them."""
    if isinstance(old, MetaTensor):
        return MetaTensor(new, meta=dict(old.meta), applied_operations=list(old.applied_operations))
    return new


def scale_points(points, from_hw: Sequence[int], to_hw: Sequence[int]) -> torch.Tensor:
    """Map (L, 2) (x, y) points from an image of size ``from_hw`` (H, W) to the same image resized to ``to_hw``,
    with pixel centres at integer coordinates: ``x' = (x + 0.5) * w / W - 0.5`` (and likewise for y)."""
    if isinstance(points, torch.Tensor):
        points = points.as_subclass(torch.Tensor)  # plain tensor out, whatever meta a MetaTensor carried
    pts = torch.as_tensor(points, dtype=torch.float32)
    scale = torch.tensor([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]], dtype=torch.float32, device=pts.device)
    return (pts + 0.5) * scale - 0.5


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
        image = _image(d, self.image_key, "ValidateMaskd")
        for key in self.key_iterator(d):
            d[key] = self._validate(d[key], key, image)
        return d

    def _validate(self, mask, key: Hashable, image) -> torch.Tensor:
        where = f"Mask {_name(mask)} (key {key!r}) for image {_name(image)}"
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
        both_known = _has_shape(mask) and _has_shape(image)
        if mask_hw != image_hw or (both_known and _original_hw(mask) != _original_hw(image)):
            found = _original_hw(mask) if _has_shape(mask) else mask_hw
            expected = _original_hw(image) if _has_shape(image) else image_hw
            raise ValueError(f"{where}: the mask is {found[0]}x{found[1]} (H x W) but the image is "
                             f"{expected[0]}x{expected[1]}; a mask must have exactly its image's size.")

        if m.dtype != torch.bool:
            is01 = ((m == 0) | (m == 1)).all()
            if not is01 and not ((m == 0) | (m == 255)).all():
                values = torch.unique(m)
                shown = ", ".join(f"{v:g}" for v in values[:8].tolist()) + (", ..." if len(values) > 8 else "")
                raise ValueError(f"{where} has values {shown}; a binary mask must hold only {{0, 1}} or {{0, 255}} "
                                 "(was it saved as JPEG, or resized with interpolation?).")
        return _like((m != 0).to(torch.float32), mask)


def _has_shape(x) -> bool:
    return "spatial_shape" in (getattr(x, "meta", None) or {})


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
        image = _image(d, self.image_key, "ValidateLandmarksd")
        height, width = _original_hw(image)
        for key in self.key_iterator(d):
            where = f"Landmarks (key {key!r}) of image {_name(image)}"
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
        image = _image(d, self.image_key, "ScaleLandmarksd")
        current = tuple(int(s) for s in image.shape[-2:])
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key or key] = scale_points(d[key], _original_hw(image), current)
        return d


class HeatmapsToLandmarksd(MapTransform):
    """Postprocessing: (L, h, w) heatmap logits of one (decollated) sample -> (L, 2) float32 (x, y) points in pixels
    of the ORIGINAL image, stored under ``output_key``.

    Positions come from :func:`visionfm_core.models.soft_argmax_2d` (sub-pixel) in heatmap pixels, then are mapped
    from the heatmap's size to the original size in the image meta ``spatial_shape`` (the inverse of
    :class:`ScaleLandmarksd` when the heatmaps have the network input's size; heatmaps already brought back to the
    original size are mapped 1:1).
    """

    def __init__(self, keys: KeysCollection = "pred", image_key: str = "image",
                 output_key: str | Sequence[str] = "points", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.output_keys = ensure_tuple_rep(output_key, len(self.keys))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = _image(d, self.image_key, "HeatmapsToLandmarksd")
        if not _has_shape(image):
            raise ValueError(f"HeatmapsToLandmarksd: image {_name(image)} has no meta 'spatial_shape' (its original "
                             "size), so points cannot be mapped back to it.")
        for key, out_key in self.key_iterator(d, self.output_keys):
            heatmaps = torch.as_tensor(d[key])
            if heatmaps.ndim != 3:
                raise ValueError(f"HeatmapsToLandmarksd expects one sample's heatmaps (L, h, w) under {key!r} for "
                                 f"image {_name(image)}, got shape {tuple(heatmaps.shape)} (decollate the batch).")
            points = soft_argmax_2d(heatmaps.as_subclass(torch.Tensor).detach()[None])[0]
            d[out_key] = scale_points(points, tuple(heatmaps.shape[-2:]), _original_hw(image))
        return d
