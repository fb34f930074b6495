"""Dense decoders over the encoder's intermediate blocks, shared by the segmentation, landmark, OCT-layer and 3-D
segmentation families: a light feature-pyramid decoder (`LightDecoder2d`, 2-D, the 2-D default) and MONAI's UNETR
blocks (`UNETRDecoder2d`, 2-D and 3-D; the only 3-D one)."""

from __future__ import annotations

import logging
import math
import os

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn
from torch.nn import functional as F

from visionfm_core.encoders.families import visionfm_dense_blocks

__all__ = ["dense_block_indices", "UNETRDecoder2d", "UNETRDecoder", "LightDecoder2d", "DENSE_DECODERS", "DEFAULT_DENSE_DECODER",
           "decoder_in_state", "trained_decoder", "DenseHead", "ORIGINAL_DENSE_BLOCKS",
           "original_dense_blocks", "OriginalUNETRHead"]
logger = logging.getLogger(__name__)


def dense_block_indices(depth: int) -> list[int]:
    """Blocks (3, 5, 7, 11) of a 12-block encoder, spread in the same proportion over other depths (VisionFM's; each
    encoder family declares its own: `encoder.dense_blocks`)."""
    return visionfm_dense_blocks(depth)


def _up_projection(embed_dim: int, out_channels: int, factor: int, norm_name: str, spatial_dims: int = 2,
                   depth_factor: int | None = None) -> nn.Module:
    """Patch maps (B, D, h, w[, d]) -> (B, out, h * factor, w * factor[, d * depth_factor]): UNETR's transposed-conv
    projection (`depth_factor` is `factor` or 1: UnetrPrUpBlock repeats one kernel per layer)."""
    if factor == 1:
        return UnetrBasicBlock(spatial_dims, embed_dim, out_channels, kernel_size=3, stride=1, norm_name=norm_name,
                               res_block=True)
    return UnetrPrUpBlock(spatial_dims, embed_dim, out_channels, num_layer=int(math.log2(factor)) - 1, kernel_size=3,
                          stride=1, upsample_kernel_size=_kernel(2, 2 if depth_factor == factor else 1, spatial_dims,
                                                                 depth_factor is None),
                          norm_name=norm_name, conv_block=True, res_block=True)


def _kernel(size: int, depth_size: int, spatial_dims: int, isotropic: bool = False):
    """An int for 2-D or isotropic 3-D kernels, (size, size, depth_size) otherwise."""
    if spatial_dims == 2 or isotropic or size == depth_size:
        return size
    return (size, size, depth_size)


class UNETRDecoder2d(nn.Module):
    """MONAI's UNETR decoder in 2-D (or 3-D with `spatial_dims=3`), on the patch maps of 4 encoder blocks plus the
    raw input.

    With patch 16 the three shallower maps are projected up to 1/2, 1/4 and 1/8 of the input (transposed
    convolutions then residual conv blocks, 2, 4 and 8 x `feature_size` channels), the raw image gives the
    full-resolution skip (`feature_size` channels), and the deepest map is upsampled 1/16 -> 1/8 -> 1/4 -> 1/2 ->
    full, merged with the skip of each scale. The output (B, out_channels, H, W[, D]) has exactly the input's size.
    Patch sizes that are powers of 2 from 8 work (the first upsampling is then by patch / 8).
    In 3-D, `depth_patch` (the encoder's patch along the last axis) is `patch_size` (isotropic: every step
    upsamples depth as in-plane) or 1 or 2 (depth is upsampled only by the last step).
    """

    def __init__(self, embed_dim: int, out_channels: int, patch_size: int = 16, in_channels: int = 3,
                 feature_size: int = 32, norm_name: str = "instance", spatial_dims: int = 2,
                 depth_patch: int | None = None):
        super().__init__()
        if patch_size < 8 or patch_size & (patch_size - 1):
            raise ValueError(f"the UNETR decoder needs a patch size that is a power of 2 from 8, not {patch_size}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
        depth_patch = patch_size if depth_patch is None or spatial_dims == 2 else int(depth_patch)
        if depth_patch not in (patch_size, 1, 2):
            raise ValueError(f"the 3-D UNETR decoder takes a depth patch equal to the patch size {patch_size}, or 1 "
                             f"or 2, not {depth_patch}")
        iso = depth_patch == patch_size
        fs, nd = feature_size, spatial_dims
        self.encoder1 = UnetrBasicBlock(nd, in_channels, fs, kernel_size=3, stride=1, norm_name=norm_name,
                                        res_block=True)
        depth_factor = None if iso else 1
        self.encoder2 = _up_projection(embed_dim, fs * 2, patch_size // 2, norm_name, nd, depth_factor)
        self.encoder3 = _up_projection(embed_dim, fs * 4, patch_size // 4, norm_name, nd, depth_factor)
        self.encoder4 = _up_projection(embed_dim, fs * 8, patch_size // 8, norm_name, nd, depth_factor)
        self.decoder5 = UnetrUpBlock(nd, embed_dim, fs * 8, kernel_size=3, norm_name=norm_name, res_block=True,
                                     upsample_kernel_size=_kernel(patch_size // 8, 1, nd, iso))
        self.decoder4 = UnetrUpBlock(nd, fs * 8, fs * 4, kernel_size=3, upsample_kernel_size=_kernel(2, 1, nd, iso),
                                     norm_name=norm_name, res_block=True)
        self.decoder3 = UnetrUpBlock(nd, fs * 4, fs * 2, kernel_size=3, upsample_kernel_size=_kernel(2, 1, nd, iso),
                                     norm_name=norm_name, res_block=True)
        self.decoder2 = UnetrUpBlock(nd, fs * 2, fs, kernel_size=3,
                                     upsample_kernel_size=_kernel(2, depth_patch, nd, iso),
                                     norm_name=norm_name, res_block=True)
        self.out = UnetOutBlock(nd, fs, out_channels)
        self.channels_last = nd == 2
        if self.channels_last:
            _group_norms_for_instance_norms(self)

    def forward(self, maps: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        if len(maps) != 4:
            raise ValueError(f"the UNETR decoder takes 4 patch maps, got {len(maps)}")
        if self.channels_last and not self.training:
            maps, image = _channels_last(maps, image)
        skip_half = self.encoder2(maps[0])
        skip_quarter = self.encoder3(maps[1])
        skip_eighth = self.encoder4(maps[2])
        x = self.decoder5(maps[3], skip_eighth)
        x = self.decoder4(x, skip_quarter)
        x = self.decoder3(x, skip_half)
        x = self.decoder2(x, self.encoder1(image))
        return self.out(x).contiguous()


def _channels_last(maps: list[torch.Tensor], image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The 2-D decoders' inputs in channels-last layout, which every conv, norm and upsampling after them keeps: at
    inference oneDNN's convolutions run ~4x faster on it in bf16 at full resolution. Not for training: PyTorch's CPU
    GroupNorm backward is slow on channels-last input (82 ms against 1.5 ms NCHW in bf16 at 2 x 32 x 256^2)."""
    return [m.contiguous(memory_format=torch.channels_last) for m in maps], \
        image.contiguous(memory_format=torch.channels_last)


def _group_norms_for_instance_norms(module: nn.Module) -> None:
    """Replace, in place, every 2-D instance norm without running statistics by the same function as GroupNorm with
    one channel per group (`_instance_norm`: no parameters are added or renamed, so state dicts load unchanged)."""
    for name, child in module.named_children():
        if isinstance(child, nn.InstanceNorm2d) and not child.track_running_stats:
            setattr(module, name, nn.GroupNorm(child.num_features, child.num_features, eps=child.eps,
                                               affine=child.affine))
        else:
            _group_norms_for_instance_norms(child)


UNETRDecoder = UNETRDecoder2d  # the same class in 2-D and 3-D (`spatial_dims`)


def _instance_norm(channels: int) -> nn.GroupNorm:
    """Instance norm with a per-channel affine, written as GroupNorm with one channel per group: the same function and
    parameter names (`weight`, `bias`) as `nn.InstanceNorm2d(channels, affine=True)`, but GroupNorm has a
    channels-last CPU kernel where InstanceNorm copies to NCHW and back (see LightDecoder2d.forward)."""
    return nn.GroupNorm(channels, channels)


def _conv_norm_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv -> instance norm (affine) -> ReLU. Instance norm, as in the UNETR blocks: on the vessel phantoms the
    decoder with GroupNorm of 8 groups and plain full-resolution convs learnt nothing in 60 epochs (test Dice 0), with
    instance norm it did; it trains with the dense tasks' small batches, unlike BatchNorm."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         _instance_norm(out_channels), nn.ReLU(inplace=True))


class _ResidualBlock(nn.Module):
    """conv-norm-ReLU-conv-norm plus the input, then ReLU: a residual block. The skip is the identity (no extra
    full-resolution conv and norm) or, from `in_channels` of another width, a 1x1 conv + norm."""

    def __init__(self, channels: int, in_channels: int | None = None):
        super().__init__()
        in_channels = channels if in_channels is None else in_channels
        self.body = nn.Sequential(_conv_norm_relu(in_channels, channels),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  _instance_norm(channels))
        self.skip = None if in_channels == channels else \
            nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), _instance_norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: at full resolution each new activation costs a fresh, page-faulted buffer (the body's last op, a
        # norm, does not keep its output for backward, so autograd allows it)
        return self.body(x).add_(x if self.skip is None else self.skip(x)).relu_()


class LightDecoder2d(nn.Module):
    """A light decoder on the patch maps (B, D, H/p, W/p) of 4 encoder blocks plus the raw input.

    Coarse part (a feature pyramid): the two deepest maps are projected (1x1) to 4 x `feature_size` channels and
    merged at the patch grid; each shallower map is brought to a finer grid by a learnt sub-patch upsampling
    (transposed conv, kernel = stride): to 1/(p/2) with the second map (2 x `feature_size`) and to 1/(p/4) with the
    first (`feature_size`), a 3x3 conv after each merge. Fine part (as UNETR's last two stages, narrower): an image
    path (a residual block on the image with a 1x1-projected skip, as UNETR's first block, then a strided conv to
    1/2) is added to the coarse features upsampled by 2 and by 2 again (transposed convs), each sum refined by a
    residual block of two 3x3 convs, all at `feature_size` channels; a 1x1 conv gives (B, out_channels, H, W).
    Every conv of these blocks is followed by instance norm. It skips what makes UNETR's decoder slow (its residual
    blocks over 2-8 x `feature_size` channels at 1/8-1/2 of the input); docs/figures/README.md, "The dense decoder
    study", has its speed and Dice against UNETR's. Patch sizes from 4 work (DINOv2's 14 too: a grid that does not
    divide the input is resized to it).
    """

    def __init__(self, embed_dim: int, out_channels: int, patch_size: int = 16, in_channels: int = 3,
                 feature_size: int = 32):
        super().__init__()
        if patch_size < 4:
            raise ValueError(f"the light decoder needs a patch size of at least 4, not {patch_size}")
        if feature_size < 2 or feature_size % 2:
            raise ValueError(f"the light decoder's feature_size must be even and at least 2, not {feature_size}")
        fs = feature_size
        self.deep = nn.ModuleList([nn.Conv2d(embed_dim, 4 * fs, 1), nn.Conv2d(embed_dim, 4 * fs, 1)])
        self.fuse_deep = _conv_norm_relu(4 * fs, 4 * fs)
        self.up_mid = nn.ConvTranspose2d(4 * fs, 2 * fs, 2, stride=2)
        self.lateral_mid = nn.ConvTranspose2d(embed_dim, 2 * fs, 2, stride=2)
        self.fuse_mid = _conv_norm_relu(2 * fs, 2 * fs)
        self.up_fine = nn.ConvTranspose2d(2 * fs, fs, 2, stride=2)
        self.lateral_fine = nn.ConvTranspose2d(embed_dim, fs, 4, stride=4)
        self.fuse_fine = _conv_norm_relu(fs, fs)
        # a residual block with a 1x1-projected skip on the image (UNETR's first block), so that the raw intensities
        # reach the full-size stage: it scored higher than two plain conv-norm-ReLUs (docs/figures/README.md)
        self.stem = _ResidualBlock(fs, in_channels)
        self.down = nn.Sequential(nn.Conv2d(fs, fs, 3, stride=2, padding=1, bias=False),
                                  _instance_norm(fs), nn.ReLU(inplace=True))
        self.up_half = nn.ConvTranspose2d(fs, fs, 2, stride=2)
        self.fuse_half = _ResidualBlock(fs)
        self.up_full = nn.ConvTranspose2d(fs, fs, 2, stride=2)
        self.fuse_full = _ResidualBlock(fs)
        self.out = nn.Conv2d(fs, out_channels, 1)

    def forward(self, maps: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        if len(maps) != 4:
            raise ValueError(f"the light decoder takes 4 patch maps, got {len(maps)}")
        if not self.training:
            maps, image = _channels_last(maps, image)
        x = self.fuse_deep(self.deep[0](maps[2]) + self.deep[1](maps[3]))
        x = self.fuse_mid(self.up_mid(x) + self.lateral_mid(maps[1]))
        x = self.fuse_fine(self.up_fine(x) + self.lateral_fine(maps[0]))
        full = self.stem(image)
        half = self.down(full)
        x = self.fuse_half(_resized(self.up_half(x), half).add_(half))  # in place, as in _ResidualBlock.forward
        return self.out(self.fuse_full(_resized(self.up_full(x), full).add_(full))).contiguous()


def _resized(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`x` bilinearly resized to `like`'s grid where they differ (a patch grid that does not divide the input, an
    odd size halved)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=[like.shape[-2], like.shape[-1]], mode="bilinear", align_corners=False)


# the dense heads' decoders by name (`decoder=` of the dense heads, the bundles' `decoder` id), and the 2-D default
# (3-D has UNETR only); docs/figures/README.md, "The dense decoder study", says why
DENSE_DECODERS = ("light", "unetr")
DEFAULT_DENSE_DECODER = "light"
# a parameter only each decoder has: which decoder a saved state dict holds
_DECODER_KEYS = {"light": "head.decoder.fuse_full.", "unetr": "head.decoder.encoder1."}


def decoder_in_state(state: dict) -> str | None:
    """The dense decoder ("light" or "unetr") whose weights a model state dict holds, None if neither (another
    head, or not a state dict)."""
    for name, key in _DECODER_KEYS.items():
        if any(isinstance(k, str) and key in k for k in state):
            return name
    return None


class DenseHead(nn.Module):
    """The dense heads' decoder on the patch maps of 4 encoder blocks plus the image: `decoder="light"`
    (`LightDecoder2d`, 2-D only, the 2-D default) or `"unetr"` (`UNETRDecoder2d`; the only choice in 3-D).
    `feature_size` is the decoder's base channel count, `norm_name` the UNETR blocks' normalisation."""

    uses_patch_maps = True

    def __init__(self, encoder: nn.Module, num_outputs: int, feature_size: int = 32,
                 block_indices: list[int] | None = None, norm_name: str = "instance", decoder: str | None = None):
        super().__init__()
        depth = len(encoder.blocks)
        patch, family = encoder.patch_size, getattr(encoder, "family", "visionfm")
        spatial_dims = getattr(encoder, "spatial_dims", 2)
        decoder = decoder or ("unetr" if spatial_dims == 3 else DEFAULT_DENSE_DECODER)
        if decoder not in DENSE_DECODERS:
            raise ValueError(f"unknown dense decoder {decoder!r}; choose one of {', '.join(DENSE_DECODERS)}")
        if decoder == "light" and spatial_dims == 3:
            raise ValueError("the light decoder is 2-D only; 3-D segmentation uses decoder='unetr'")
        if decoder == "unetr" and (patch < 8 or patch & (patch - 1)):
            raise ValueError(f"the dense heads' UNETR decoder upsamples by factors of 2 and needs a patch size that is "
                             f"a power of 2 from 8; the {family} encoder has patch size {patch}. Use a patch-16 "
                             "encoder for dense tasks (--encoder visionfm or retfound_mae), or decoder='light'.")
        # negatives count from the end; the decoder takes the maps shallow to deep; by default the blocks the
        # encoder's family declares (VisionFM: 3, 5, 7, 11 of 12; others evenly spaced)
        declared = list(getattr(encoder, "dense_blocks", []))
        self.block_indices = encoder._block_indices(list(block_indices)) if block_indices is not None \
            else (declared if declared else dense_block_indices(depth))
        if len(self.block_indices) != 4:
            raise ValueError(f"the dense decoders take 4 encoder blocks, got block_indices={self.block_indices}")
        self.decoder_name = decoder
        in_channels = encoder.patch_embed.proj.in_channels
        if decoder == "light":
            self.decoder = LightDecoder2d(encoder.embed_dim, num_outputs, patch, in_channels, feature_size)
        else:  # a 3-D encoder (vit3d.VisionTransformer3D) gets the 3-D decoder, on its NCDHW maps
            self.decoder = UNETRDecoder2d(encoder.embed_dim, num_outputs, patch, in_channels, feature_size, norm_name,
                                          spatial_dims=spatial_dims, depth_patch=getattr(encoder, "depth_patch", None))

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return self.decoder(features, image)


def trained_decoder(model_path: str | os.PathLike, default: str = DEFAULT_DENSE_DECODER) -> str:
    """The dense decoder a bundle's `model_path` (models/model.pt) was trained with, read from its parameter names,
    so evaluation and inference rebuild that decoder (a model trained with UNETR before the light decoder became
    the default keeps working); `default` when the file is missing, unreadable or holds another head (the
    checkpoint loader then says what is wrong with it)."""
    path = os.fspath(model_path)
    if not os.path.isfile(path):
        return default
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file: the checkpoint loader names the problem
        return default
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    found = decoder_in_state(state) if isinstance(state, dict) else None
    if found is not None and found != default:
        logger.info("%s holds a %s decoder: the network is built with decoder=%r", path, found, found)
    return found or default


# --- the original release's dense decoders (its `Unetr_Head` and `linSeg`), so its trained decoders run unchanged ---

# the blocks the original's segmentation and landmark scripts take (patch tokens after the final norm); it knows
# no other depths
ORIGINAL_DENSE_BLOCKS = {12: [3, 5, 7, 11], 24: [5, 11, 17, 23]}


def original_dense_blocks(encoder: nn.Module) -> list[int]:
    depth = len(encoder.blocks)
    if depth not in ORIGINAL_DENSE_BLOCKS:
        raise ValueError(f"the original's dense decoders take blocks {ORIGINAL_DENSE_BLOCKS} of 12- or 24-block "
                         f"encoders; this encoder has {depth} blocks")
    return list(ORIGINAL_DENSE_BLOCKS[depth])


class _OriginalConv(nn.Module):
    """3x3 conv (padding 1) -> BatchNorm2d -> ReLU; keys `layers.{0,1}.*` as in the original."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
                                    nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _OriginalUp(nn.Module):
    """2x2 transposed conv, stride 2 (doubles H and W); key `deconv.*` as in the original."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(x)


class OriginalUNETRHead(nn.Module):
    """The original release's UNETR-style decoder (its segmentation and landmark scripts), under its tensor names.

    Input: the patch maps of blocks 3, 5, 7, 11 (z3, z6, z9, z12 in the original; 5, 11, 17, 23 of a 24-block
    encoder), each after the final norm, and the network input. With base b = `feature_size` (the original's fixed
    32): `d1` upsamples z12 (D -> 4b) and joins `s1` (z9 upsampled once, conv), `c1` two convs; `d2`/`s2`/`c2` and
    `d3`/`s3`/`c3` repeat this at 2b and b channels with z6 (upsampled twice) and z3 (three times); `d4` reaches the
    input resolution and joins `s4` (two convs on the image itself, b/2 channels), `c4` two convs, then Dropout2d
    (0.3 while training) and the 1x1 `cls` conv to the logits (B, K, H, W). Every conv is 3x3 + BatchNorm2d + ReLU,
    every upsampling a 2x2 stride-2 transposed conv: four doublings, so the patch size must be 16.
    Differs from our `segmentation`/`landmarks` heads (MONAI's UNETR blocks, instance norm, residual units).
    """

    uses_patch_maps = True

    def __init__(self, encoder: nn.Module, num_outputs: int, feature_size: int = 32, dropout: float = 0.3,
                 decoder: str | None = None):
        super().__init__()  # `decoder`: the bundles' choice for their own dense heads, not used (this is the original's)
        if encoder.patch_size != 16:
            raise ValueError(f"the original's UNETR decoder upsamples 4 times by 2 and needs patch size 16, not "
                             f"{encoder.patch_size}")
        if feature_size < 2 or feature_size % 2:
            raise ValueError(f"the original UNETR decoder's base channels must be even, not {feature_size}")
        self.block_indices = original_dense_blocks(encoder)
        d, b = encoder.embed_dim, feature_size
        conv, up = _OriginalConv, _OriginalUp
        self.d1 = up(d, 4 * b)
        self.s1 = nn.Sequential(up(d, 4 * b), conv(4 * b, 4 * b))
        self.c1 = nn.Sequential(conv(8 * b, 4 * b), conv(4 * b, 4 * b))
        self.d2 = up(4 * b, 2 * b)
        self.s2 = nn.Sequential(up(d, 2 * b), conv(2 * b, 2 * b), up(2 * b, 2 * b), conv(2 * b, 2 * b))
        self.c2 = nn.Sequential(conv(4 * b, 2 * b), conv(2 * b, 2 * b))
        self.d3 = up(2 * b, b)
        self.s3 = nn.Sequential(up(d, b), conv(b, b), up(b, b), conv(b, b), up(b, b), conv(b, b))
        self.c3 = nn.Sequential(conv(2 * b, b), conv(b, b))
        self.d4 = up(b, b // 2)
        self.s4 = nn.Sequential(conv(encoder.patch_embed.proj.in_channels, b // 2), conv(b // 2, b // 2))
        self.c4 = nn.Sequential(conv(b, b // 2), conv(b // 2, b // 2))
        self.dropout = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(b // 2, num_outputs, kernel_size=1)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = self.c1(torch.cat([self.d1(features[3]), self.s1(features[2])], dim=1))
        x = self.c2(torch.cat([self.d2(x), self.s2(features[1])], dim=1))
        x = self.c3(torch.cat([self.d3(x), self.s3(features[0])], dim=1))
        x = self.c4(torch.cat([self.d4(x), self.s4(image)], dim=1))
        return self.cls(self.dropout(x))
