"""The one resize of VisionFM images and label maps, as a function and as invertible MONAI transforms.

Pretraining (`UnlabelledImageDataset`), task training, inference and the k-NN probe all resize through
:func:`resize`, so an encoder sees the same pixels for the same image everywhere: bilinear (or bicubic) with
antialiasing (PyTorch's separable filter whose support grows with the shrink factor) for images, nearest
neighbour for label maps. :class:`EyeResized` and :class:`EyeResizeShortSided` record themselves like MONAI's
``Resized``, so ``monai.transforms.Invertd`` puts predictions back on the input's grid.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize, Resized
from monai.transforms.inverse import TraceableTransform
from monai.transforms.transform import LazyTransform
from monai.transforms.utils import scale_affine
from monai.utils import TraceKeys, convert_to_tensor, ensure_tuple_rep

__all__ = ["RESIZE_MODES", "PREPROCESSING_MODES", "resize", "resize_mode_for", "decode_size_for", "EyeResize",
           "EyeResized", "EyeResizeShortSided"]

# "nearest" is nearest neighbour with pixel centres aligned (PyTorch "nearest-exact"), the same geometry as
# bilinear with align_corners=False, so labels and images resized to one size stay registered. "pil_bicubic" is
# the original VisionFM evaluation resize: Pillow's bicubic on the 8-bit image (the `original` preprocessing).
RESIZE_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact", "pil_bicubic": "pil_bicubic"}
PREPROCESSING_MODES = ("default", "original")


def resize_mode_for(preprocessing_mode: str) -> str:
    """The image resize of a classification bundle's `preprocessing_mode`: "default" -> "bilinear" (ours, antialiased
    on the decoded image), "original" -> "pil_bicubic" (the original's `Resize((224, 224), BICUBIC)` on the 8-bit
    photo, which its released models were trained and evaluated with)."""
    _check_mode(preprocessing_mode)
    return "pil_bicubic" if preprocessing_mode == "original" else "bilinear"


def decode_size_for(preprocessing_mode: str, image_size: int) -> int | None:
    """The JPEG decode size of evaluation and inference: 2 x the input for "default" (a DCT-scaled draft), None (the
    whole file, as the original decodes it) for "original"."""
    _check_mode(preprocessing_mode)
    return None if preprocessing_mode == "original" else 2 * int(image_size)


def _check_mode(mode: str) -> None:
    if mode not in PREPROCESSING_MODES:
        raise ValueError(f"preprocessing_mode must be one of {', '.join(PREPROCESSING_MODES)}, not {mode!r} "
                         "(bundles: --preprocessing_mode original runs the original VisionFM evaluation transform)")


def _pil_bicubic(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's bicubic resize of (B, C, H, W) images in [0, 1] as 8-bit pictures (C = 1 or 3), back in [0, 1]."""
    from PIL import Image

    if batch.shape[1] not in (1, 3):
        raise ValueError(f"pil_bicubic resizes 1- or 3-channel images, got {batch.shape[1]} channels")
    # the reader gave value / 255 of 8-bit pixels: rounding recovers them exactly
    pixels = torch.round(batch.float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for image in pixels:
        picture = Image.fromarray(image if image.shape[-1] == 3 else image[..., 0])
        resized = np.asarray(picture.resize((size[1], size[0]), Image.BICUBIC))
        out.append(torch.from_numpy(resized.reshape(size[0], size[1], -1).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def resize(image, size: int | Sequence[int], mode: str = "bilinear"):
    """Resize a (C, H, W) or (B, C, H, W) image (torch tensor or numpy array) to ``size`` = (h, w) (or h = w).

    ``mode``: "bilinear" or "bicubic" (antialiased when shrinking: ``F.interpolate(..., antialias=True)``, what
    pretraining always used; the output never leaves each channel's input range, so no bicubic overshoot and no
    1.0000001 from rounding) or "nearest" (label maps; values and integer dtype kept). A same-size resize returns
    an unchanged copy. Returns the input's type (numpy or a plain torch tensor) with a floating dtype for
    bilinear/bicubic.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {sorted(RESIZE_MODES)}, got {mode!r}.")
    as_numpy = isinstance(image, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(image)) if as_numpy else torch.as_tensor(image)
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    if x.ndim not in (3, 4):
        raise ValueError(f"resize expects an image shaped (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}.")
    size = tuple(int(s) for s in ensure_tuple_rep(size, 2))
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"resize size must be one or two positive integers, got {size}.")
    batch = x if x.ndim == 4 else x[None]

    if tuple(batch.shape[-2:]) == size:
        out = batch.clone() if mode == "nearest" or batch.is_floating_point() else batch.float()
    elif mode == "nearest":  # interpolate only takes floats; class indices < 2**24 survive float32 exactly
        out = F.interpolate(batch.float(), size=size, mode=RESIZE_MODES[mode]).to(batch.dtype)
    elif mode == "pil_bicubic":
        out = _pil_bicubic(batch, size)
        if batch.dtype == torch.float64:
            out = out.double()
    else:
        # float32 for integer and half inputs (CPU antialiasing needs it); float64 stays float64
        work = batch if batch.dtype in (torch.float32, torch.float64) else batch.float()
        out = F.interpolate(work, size=size, mode=RESIZE_MODES[mode], align_corners=False, antialias=True)
        out = torch.clamp(out, work.amin(dim=(-2, -1), keepdim=True), work.amax(dim=(-2, -1), keepdim=True))
        if batch.is_floating_point():
            out = out.to(batch.dtype)
    out = out if x.ndim == 4 else out[0]
    return out.numpy() if as_numpy else out


class EyeResize(Resize):
    """Array transform: :func:`resize` a channel-first (C, H, W) image, recording it on a ``MetaTensor`` (affine
    scaled, operation pushed) so that ``inverse`` / ``Invertd`` resize back to the original size.

    Args:
        spatial_size: (h, w) output size, or an int for both; with ``size_mode="shortest"`` an int: the short
            side's length, the long side scaled to keep the aspect ratio (rounded).
        mode: "bilinear" (images, default), "bicubic" or "nearest" (label maps).
        size_mode: "all" or "shortest".
    """

    def __init__(self, spatial_size: int | Sequence[int], mode: str = "bilinear", size_mode: str = "all") -> None:
        if mode not in RESIZE_MODES:
            raise ValueError(f"EyeResize mode must be one of {sorted(RESIZE_MODES)}, got {mode!r}.")
        if size_mode not in ("all", "shortest"):
            raise ValueError(f"EyeResize size_mode must be 'all' or 'shortest', got {size_mode!r}.")
        if size_mode == "shortest" and not isinstance(spatial_size, (int, np.integer)):
            raise ValueError(f"EyeResize with size_mode='shortest' takes an int short side, got {spatial_size!r}.")
        super().__init__(spatial_size=spatial_size, mode=mode)
        self.size_mode = size_mode

    @property
    def requires_current_data(self) -> bool:
        # Always runs eagerly: in a lazy Compose, MONAI applies pending operations before calling it.
        return True

    def output_size(self, in_size: Sequence[int]) -> tuple[int, int]:
        if self.size_mode == "shortest":
            scale = int(self.spatial_size) / min(in_size)
            return tuple(max(1, int(round(s * scale))) for s in in_size)  # type: ignore[return-value]
        return tuple(int(s) for s in ensure_tuple_rep(self.spatial_size, 2))  # type: ignore[return-value]

    def __call__(self, img: torch.Tensor, mode: str | None = None,  # type: ignore[override]
                 lazy: bool | None = None) -> torch.Tensor:
        """Resize ``img`` (``lazy`` is accepted for MONAI's Compose and ignored: this transform always runs)."""
        in_size = tuple(int(s) for s in img.shape[1:])
        if len(in_size) != 2:
            name = img.meta.get("filename_or_obj", "") if isinstance(img, MetaTensor) else ""
            raise ValueError(
                f"EyeResize expects a channel-first 2-D image (C, H, W), got shape {tuple(img.shape)} {name}".strip()
            )
        return self._resize(img, self.output_size(in_size), self.mode if mode is None else mode)

    def _resize(self, img: torch.Tensor, out_size: tuple[int, int], mode: str) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        in_size = tuple(int(s) for s in img.shape[1:])
        pixels = resize(img.as_tensor() if isinstance(img, MetaTensor) else img, out_size, mode)
        if not isinstance(img, MetaTensor):
            return pixels
        # the same bookkeeping as MONAI's Resize: scaled affine, and (when tracing) the operation with its size
        meta_info = TraceableTransform.track_transform_meta(
            img,
            sp_size=out_size,
            affine=scale_affine(in_size, out_size, align_corners=False),
            extra_info={"mode": mode, "align_corners": TraceKeys.NONE, "dtype": str(pixels.dtype)[6:], "new_dim": 0},
            orig_size=in_size,
            transform_info=self.get_transform_info(),
            lazy=False,
        )
        return MetaTensor(pixels).copy_meta_from(meta_info)

    def inverse_transform(self, data: torch.Tensor, transform) -> torch.Tensor:
        orig_size = tuple(int(s) for s in transform[TraceKeys.ORIG_SIZE])
        mode = transform[TraceKeys.EXTRA_INFO]["mode"]  # Invertd(nearest_interp=True) sets "nearest"
        with self.trace_transform(False):
            return self._resize(data, orig_size, mode if mode in RESIZE_MODES else "nearest")


class EyeResized(Resized):
    """Dictionary version of :class:`EyeResize`: the resize of task bundles, inference and evaluation.

    ``EyeResized(keys=["image", "label"], spatial_size=224, mode=["bilinear", "nearest"])``; invert predictions
    with ``Invertd(keys="pred", transform=<the preprocessing Compose>, orig_keys="image")``.
    """

    def __init__(self, keys: KeysCollection, spatial_size: int | Sequence[int], mode: str | Sequence[str] = "bilinear",
                 allow_missing_keys: bool = False, size_mode: str = "all") -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        LazyTransform.__init__(self, lazy=False)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.resizer = EyeResize(spatial_size, mode=self.mode[0], size_mode=size_mode)
        for m in self.mode:
            if m not in RESIZE_MODES:
                raise ValueError(f"EyeResized mode must be one of {sorted(RESIZE_MODES)}, got {m!r}.")

    @property
    def requires_current_data(self) -> bool:
        return True

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.resizer(d[key], mode=mode)
        return d

    # inverse: Resized.inverse, which calls self.resizer.inverse for each key


class EyeResizeShortSided(EyeResized):
    """:class:`EyeResized` keeping the aspect ratio: the short side becomes ``short_side`` (the long side scaled
    and rounded); for sliding-window inference on whole photographs. Invertible like :class:`EyeResized`."""

    def __init__(self, keys: KeysCollection, short_side: int, mode: str | Sequence[str] = "bilinear",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, int(short_side), mode=mode, allow_missing_keys=allow_missing_keys, size_mode="shortest")
