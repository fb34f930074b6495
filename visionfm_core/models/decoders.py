"""Dense decoders over the encoder's intermediate blocks (UNETR-style), shared by the segmentation,
landmark, OCT-layer and 3-D segmentation families."""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from visionfm_core.encoders.families import visionfm_dense_blocks

__all__ = ["dense_block_indices", "UNETRDecoder2d", "UNETRDecoder", "DenseHead"]


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

    def forward(self, maps: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        if len(maps) != 4:
            raise ValueError(f"the UNETR decoder takes 4 patch maps, got {len(maps)}")
        skip_half = self.encoder2(maps[0])
        skip_quarter = self.encoder3(maps[1])
        skip_eighth = self.encoder4(maps[2])
        x = self.decoder5(maps[3], skip_eighth)
        x = self.decoder4(x, skip_quarter)
        x = self.decoder3(x, skip_half)
        x = self.decoder2(x, self.encoder1(image))
        return self.out(x)


UNETRDecoder = UNETRDecoder2d  # the same class in 2-D and 3-D (`spatial_dims`)


class DenseHead(nn.Module):
    uses_patch_maps = True

    def __init__(self, encoder: nn.Module, num_outputs: int, feature_size: int = 32,
                 block_indices: list[int] | None = None, norm_name: str = "instance"):
        super().__init__()
        depth = len(encoder.blocks)
        patch, family = encoder.patch_size, getattr(encoder, "family", "visionfm")
        if patch < 8 or patch & (patch - 1):
            raise ValueError(f"the dense heads' UNETR decoder upsamples by factors of 2 and needs a patch size that is "
                             f"a power of 2 from 8; the {family} encoder has patch size {patch}. Use a patch-16 "
                             "encoder for dense tasks (--encoder visionfm or retfound_mae).")
        # negatives count from the end; the decoder takes the maps shallow to deep; by default the blocks the
        # encoder's family declares (VisionFM: 3, 5, 7, 11 of 12; others evenly spaced)
        declared = list(getattr(encoder, "dense_blocks", []))
        self.block_indices = encoder._block_indices(list(block_indices)) if block_indices is not None \
            else (declared if declared else dense_block_indices(depth))
        if len(self.block_indices) != 4:
            raise ValueError(f"the UNETR decoder takes 4 encoder blocks, got block_indices={self.block_indices}")
        # a 3-D encoder (vit3d.VisionTransformer3D) gets the 3-D decoder, on its NCDHW maps
        self.decoder = UNETRDecoder2d(encoder.embed_dim, num_outputs, encoder.patch_size,
                                      encoder.patch_embed.proj.in_channels, feature_size, norm_name,
                                      spatial_dims=getattr(encoder, "spatial_dims", 2),
                                      depth_patch=getattr(encoder, "depth_patch", None))

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return self.decoder(features, image)
