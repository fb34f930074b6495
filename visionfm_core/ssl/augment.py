"""Batched multi-crop augmentation for iBOT, in plain torch so the same code runs on CPU and GPU.

VisionFM augments every modality the same way (DINO's recipe): two 224 px global crops and optional
96 px local crops, each flipped, colour-jittered, sometimes greyed, blurred and (second global crop
only) solarised, then normalised with the modality's mean and std.

Why not per-image PIL/torchvision transforms: they run one image at a time in DataLoader workers,
and torchvision cannot be installed beside a CPU-only torch here. Why not kornia: it is not a
declared dependency and draws from the global RNG; here every random number comes from one
`torch.Generator`, so a batch's crops can be replayed exactly (e.g. after resuming).

Semantics follow torchvision's tensor ops: brightness/contrast/saturation blend towards black, the
mean grey level and the per-pixel grey image; hue rotates H in HSV; grey = 0.299 R + 0.587 G + 0.114 B.
Differences, on purpose: the colour-jitter order is drawn once per view and batch (torchvision
draws it per image), and Gaussian blur uses a fixed 13-tap kernel (covers 3 sigma at sigma 2).
Grey images (3 equal channels) stay grey through every op: saturation and hue leave them unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from visionfm_core.modalities import Modality, get_modality
from visionfm_core.ssl.recipe import DEFAULT_RECIPE

__all__ = [
    "MultiCropAugmentation",
    "ViewSpec",
    "sample_crop_boxes",
    "resized_crops",
    "image_extents",
    "rgb_to_grey",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "gaussian_blur",
    "solarize",
]

_GREY = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------
# Functional ops on (n, 3, H, W) float images in [0, 1]; per-image factors have shape (n,)
# ----------------------------------------------------------------------------------------------
def _per_image(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return f.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def rgb_to_grey(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) -> (n, 1, H, W) luma (ITU-R 601, as torchvision)."""
    r, g, b = x.unbind(1)
    return (_GREY[0] * r + _GREY[1] * g + _GREY[2] * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_image(factor, x)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_image(factor, x)
    mean = rgb_to_grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_image(factor, x)
    return (f * x + (1 - f) * rgb_to_grey(x)).clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    inv = 1.0 / torch.where(delta > 0, delta, 1.0)
    # ties pick the first branch; tied branches give the same hue
    hue = torch.where(maxc == r, (g - b) * inv, torch.where(maxc == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    hue = torch.where(delta > 0, hue / 6.0, 0.0).remainder_(1.0)
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, 1.0), 0.0)
    return hue, sat, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # closed form: channel n in (R, G, B) = (5, 3, 1): v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device, dtype=h.dtype).view(1, 3, 1, 1)
    k = (n + 6 * h.unsqueeze(1)) % 6
    return v.unsqueeze(1) * (1 - s.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1))


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` (fraction of a turn, in [-0.5, 0.5]) per image."""
    h, s, v = _rgb_to_hsv(x)
    h = (h + shift.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(h, s, v)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int = 13) -> torch.Tensor:
    """Separable Gaussian blur with a different sigma per image (one grouped convolution per axis)."""
    n, c, height, width = x.shape
    radius = kernel_size // 2
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype).view(1, -1)
    kernel = torch.exp(-0.5 * (t / sigma.to(device=x.device, dtype=x.dtype).view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c, K)
    mode = "reflect" if radius < min(height, width) else "replicate"  # reflect needs pad < size
    y = F.pad(x.reshape(1, n * c, height, width), (radius,) * 4, mode=mode)
    y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, height, width)


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert the pixels at or above `threshold` (PIL's 128/255)."""
    return torch.where(x >= threshold, 1.0 - x, x)


# ----------------------------------------------------------------------------------------------
# Random resized crops
# ----------------------------------------------------------------------------------------------
def sample_crop_boxes(
    n: int,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """(n, 4) long boxes (top, left, h, w), sampled as torchvision's RandomResizedCrop.get_params.

    `height` / `width`: the image size, one int for all or an (n,) tensor per image (images of a batch padded
    to one size, each with its own real extent from the top-left corner). Up to `attempts` (area, aspect) draws
    per image, vectorised; the first that fits is used, else a centre crop with the aspect ratio clamped to
    `ratio`. The random numbers drawn do not depend on the sizes.
    """
    height = torch.as_tensor(height, dtype=torch.long).expand(n)
    width = torch.as_tensor(width, dtype=torch.long).expand(n)
    hf, wf = height.double(), width.double()
    u = torch.rand(n, attempts, 2, generator=generator, dtype=torch.float64)
    target = (hf * wf)[:, None] * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = ok.long().argmax(dim=1)  # index of the first fitting attempt (0 when none fits)
    h = h.gather(1, first[:, None]).squeeze(1)
    w = w.gather(1, first[:, None]).squeeze(1)

    # fallback: the largest centred crop whose aspect ratio lies in `ratio`
    in_ratio = wf / hf
    too_tall, too_wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fw = torch.where(too_wide, torch.round(hf * max(ratio)).long(), width)
    fh = torch.where(too_tall, torch.round(wf / min(ratio)).long(), height)
    found = ok.any(dim=1)
    h = torch.where(found, h, fh)
    w = torch.where(found, w, fw)

    pos = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.minimum(torch.floor(pos[:, 0] * (height - h + 1)).long(), height - h)
    left = torch.minimum(torch.floor(pos[:, 1] * (width - w + 1)).long(), width - w)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def image_extents(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image real (height, width), as (n,) CPU long tensors, of a batch padded from the top-left corner.

    3 channels: every pixel is image. 4 channels (RGBA, what `UnlabelledImageDataset` yields): the alpha channel
    is non-zero on the image and 0 on the padding; the image is a top-left rectangle, so its first column and
    first row give its height and width.
    """
    n, c, height, width = images.shape
    if c != 4:
        return torch.full((n,), height, dtype=torch.long), torch.full((n,), width, dtype=torch.long)
    alpha = images[:, 3]
    extents = torch.stack([(alpha[:, :, 0] > 0).sum(1), (alpha[:, 0, :] > 0).sum(1)]).cpu()  # one small copy
    return extents[0].long(), extents[1].long()


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box and resize to size x size (bicubic, antialiased, clamped to [0, 1]).

    Only the first 3 channels are returned (a 4th is the alpha extent marker). uint8 images on the CPU are resized
    in uint8 (PyTorch's vectorised channels-last kernel, which follows PIL's fixed-point antialiased resize, as the
    original's RandomResizedCrop on 8-bit PIL images; several times faster than float on crops of a 448 px copy),
    then scaled by 1/255; elsewhere each crop is converted to float first (never the whole padded batch).
    """
    out = torch.empty(x.shape[0], 3, size, size, device=x.device)
    in_uint8 = x.dtype == torch.uint8 and x.device.type == "cpu"
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        # per image: boxes differ in size; antialias keeps downscaled crops alias-free (like PIL)
        crop = x[i : i + 1, :, top : top + h, left : left + w]
        if in_uint8:
            crop = crop.contiguous(memory_format=torch.channels_last)
        else:
            crop = crop[:, :3].float()
        resized = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        out[i : i + 1] = resized[:, :3]
    if x.dtype == torch.uint8:
        out.mul_(1.0 / 255.0)
    return out.clamp_(0, 1)  # bicubic overshoots; the colour ops expect [0, 1]


def _on_subset(x: torch.Tensor, chosen: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """Apply fn(x[idx], idx) to the images where `chosen` (a CPU bool tensor) is True, in place."""
    idx = chosen.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, idx)
    dev_idx = idx.to(x.device)
    return x.index_copy(0, dev_idx, fn(x.index_select(0, dev_idx), idx))


# ----------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewSpec:
    """How one crop ("view") of the batch is made."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float = 0.0


class MultiCropAugmentation(nn.Module):
    """iBOT/DINO multi-crop augmentation of a batch: (B, 3, H, W) in [0, 1] -> [g1, g2, local_1, ...].

    Args:
        modality: a VisionFM modality name (or `Modality`) giving the normalisation mean/std.
        global_size / local_size: output side of global / local crops.
        n_local: number of local crops (0 = off, as VisionFM).
        global_scale / local_scale: crop area range, as a fraction of the image.
        ratio: crop aspect-ratio range (all crops).
        flip_p, jitter (brightness, contrast, saturation, hue), jitter_p, grey_p: as DINO.
        blur_sigma: Gaussian sigma range in output pixels; blur_p: (global 1, global 2, local).
        solarize_p: probability on the second global crop only.
        normalize: apply the modality normalisation at the end (turn off to look at the crops).

    `forward(images, generator=None)` takes float images in [0, 1] (uint8 is scaled by 1/255; a single
    channel is repeated to 3) of any size, all the same within the batch, on any device. A 4th channel is an
    alpha marking each image's real extent in a batch padded from the top-left corner (`UnlabelledImageDataset`
    keeps every image's aspect ratio that way): crops are drawn only inside it, their area scale and aspect
    ratio relative to it, as RandomResizedCrop on each image alone. All random
    numbers are drawn on the CPU from `generator` (a torch.Generator or an int seed; None = global RNG),
    so the result does not depend on the device.
    """

    def __init__(
        self,
        modality: str | Modality,
        global_size: int = DEFAULT_RECIPE.image_size,
        local_size: int = DEFAULT_RECIPE.local_size,
        n_local: int = DEFAULT_RECIPE.n_local,
        global_scale: tuple[float, float] = DEFAULT_RECIPE.global_crops_scale,
        local_scale: tuple[float, float] = DEFAULT_RECIPE.local_crops_scale,
        ratio: tuple[float, float] = (0.8, 1.2),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        jitter_p: float = 0.8,
        grey_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
        solarize_p: float = 0.2,
        normalize: bool = True,
        blur_kernel_size: int | None = None,
    ):
        super().__init__()
        self.modality = get_modality(modality)
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        self.views: tuple[ViewSpec, ...] = (
            ViewSpec(global_size, tuple(global_scale), blur_p[0]),
            ViewSpec(global_size, tuple(global_scale), blur_p[1], solarize_p),
        ) + tuple(ViewSpec(local_size, tuple(local_scale), blur_p[2]) for _ in range(n_local))
        self.n_global, self.n_local = 2, n_local
        self.ratio = tuple(ratio)
        self.flip_p, self.jitter_p, self.grey_p = flip_p, jitter_p, grey_p
        b, c, s, h = jitter
        # factor ranges exactly as torchvision.ColorJitter builds them
        self.jitter_ranges = ((max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h))
        self.blur_sigma = tuple(blur_sigma)
        self.blur_kernel_size = blur_kernel_size or 2 * math.ceil(3 * blur_sigma[1]) + 1
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(self.modality.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.modality.std).view(1, 3, 1, 1), persistent=False)

    @property
    def n_crops(self) -> int:
        return len(self.views)

    def forward(self, images: torch.Tensor, generator: torch.Generator | int | None = None) -> list[torch.Tensor]:
        x = self._check(images)
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        with torch.no_grad():
            extent = image_extents(x)
            return [self._view(x, extent, spec, generator) for spec in self.views]

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"MultiCropAugmentation expects a batch (B, 3, H, W) of images, got {got}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] not in (3, 4):
            raise ValueError(
                f"expected 1, 3 or 4 (RGB + alpha marking the image inside padding) channels, got {images.shape[1]} "
                f"(shape {tuple(images.shape)})"
            )
        # uint8 stays uint8 (converted crop by crop in resized_crops: 4x less memory traffic)
        return images if images.dtype == torch.uint8 else images.float()

    def _view(
        self, x: torch.Tensor, extent: tuple[torch.Tensor, torch.Tensor], spec: ViewSpec, g: torch.Generator | None
    ) -> torch.Tensor:
        n = x.shape[0]
        # every random number for this view is drawn up front, on the CPU, in a fixed order
        # boxes inside each image's real extent (never on padding), scale and aspect relative to that extent
        boxes = sample_crop_boxes(n, extent[0], extent[1], spec.scale, self.ratio, g)
        flip = torch.rand(n, generator=g) < self.flip_p
        do_jitter = torch.rand(n, generator=g) < self.jitter_p
        u = torch.rand(n, 4, generator=g)
        factors = [lo + (hi - lo) * u[:, k] for k, (lo, hi) in enumerate(self.jitter_ranges)]
        order = torch.randperm(4, generator=g).tolist()
        grey = torch.rand(n, generator=g) < self.grey_p
        blur = torch.rand(n, generator=g) < spec.blur_p
        sigma = self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * torch.rand(n, generator=g)
        solar = torch.rand(n, generator=g) < spec.solarize_p

        y = resized_crops(x, boxes, spec.size)
        y = _on_subset(y, flip, lambda img, idx: img.flip(-1))
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)

        def jitter_fn(img: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            for k in order:
                img = ops[k](img, factors[k][idx])
            return img

        y = _on_subset(y, do_jitter, jitter_fn)
        y = _on_subset(y, grey, lambda img, idx: rgb_to_grey(img).expand(-1, 3, -1, -1).contiguous())
        y = _on_subset(y, blur, lambda img, idx: gaussian_blur(img, sigma[idx], self.blur_kernel_size))
        y = _on_subset(y, solar, lambda img, idx: solarize(img))
        if self.normalize:
            y = (y - self.mean.to(y.device)) / self.std.to(y.device)  # no-op copies once the module is moved
        return y

    def extra_repr(self) -> str:
        sizes = [v.size for v in self.views]
        return f"modality={self.modality.name}, crops={sizes}, ratio={self.ratio}"
