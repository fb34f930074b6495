"""Task heads on top of the VisionFM encoder (the downstream protocols of the original paper) and their registry.

A registered head is built as `HeadClass(encoder, num_outputs, **head_kwargs)` and says what it needs from the
encoder through two attributes the task model reads once:
- `block_indices`: the encoder blocks whose outputs it takes (0-based, shallow to deep);
- `uses_patch_maps`: True for the patch maps (B, D, H/p, W/p) of those blocks (dense heads), False for their
  CLS tokens (B, D).
Its `forward(features: list[Tensor], image: Tensor)` gets those features and the network input (the dense heads
take the raw image as their full-resolution skip connection). The encoder itself, frozen or not, is handled once
by `VisionFMTaskModel`, never by a head.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn
from torch.nn import functional as F

__all__ = ["HEADS", "register_head", "ClassificationHead", "CLSClassificationHead", "RegressionHead",
           "StandardisedSmoothL1Loss", "UNETRDecoder2d", "UNETRDecoder", "SegmentationHead", "LandmarkHeatmapHead",
           "dense_block_indices"]

HEADS: dict[str, type[nn.Module]] = {}


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a head available to `VisionFMTaskModel(head=name, ...)`."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in HEADS and HEADS[name] is not cls:
            raise ValueError(f"a head named {name!r} is already registered ({HEADS[name].__name__})")
        HEADS[name] = cls
        return cls

    return add


def _last_blocks(encoder: nn.Module, n_last_blocks: int) -> list[int]:
    depth = len(encoder.blocks)
    if not 1 <= n_last_blocks <= depth:
        raise ValueError(f"n_last_blocks must be between 1 and the encoder depth {depth}, not {n_last_blocks}")
    return list(range(depth - n_last_blocks, depth))


def _init_linear(layers: nn.Sequential) -> None:
    # the original protocol: Linear weights N(0, 0.01), biases 0
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


class ClassificationHead(nn.Module):
    """BN -> Linear(in, in/2) -> GELU -> Dropout -> Linear(in/2, D) -> GELU -> Dropout -> Linear(D, K).

    `in_dim` is n_last_blocks x D (4 x 768 = 3072 for ViT-B): the CLS tokens of the last 4 blocks.
    Linear weights start at N(0, 0.01) and biases at 0, as in the original protocol.
    """

    def __init__(self, in_dim: int, num_classes: int, embed_dim: int | None = None, dropout: float = 0.1):
        super().__init__()
        embed_dim = embed_dim or in_dim // 4
        self.layers = nn.Sequential(
            nn.BatchNorm1d(in_dim),
            nn.Linear(in_dim, in_dim // 2),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(in_dim // 2, embed_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(embed_dim, num_classes),
        )
        _init_linear(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_head("classification")
class CLSClassificationHead(ClassificationHead):
    """Logits (B, K) from the CLS tokens of the last `n_last_blocks` blocks, concatenated (keys `layers.*`)."""

    uses_patch_maps = False

    def __init__(self, encoder: nn.Module, num_outputs: int, n_last_blocks: int = 4, dropout: float = 0.1):
        super().__init__(n_last_blocks * encoder.embed_dim, num_outputs, encoder.embed_dim, dropout)
        self.block_indices = _last_blocks(encoder, n_last_blocks)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat(features, dim=-1))


@register_head("regression")
class RegressionHead(nn.Module):
    """Continuous outputs (B, K) in the targets' units from the last `n_last_blocks` CLS tokens, concatenated (4D).

    `hidden="mlp"`: BN -> Linear(4D, D) -> GELU -> Dropout -> Linear(D, K), the original biomarker head (default);
    `hidden="linear"`: BN -> Linear(4D, K), a linear probe (BN at eval time is a fixed affine map).

    The layers learn standardised targets z; the output is `z * target_std + target_mean`, so predictions are in
    the targets' units. `target_mean` / `target_std` are (K,) buffers (defaults 0 / 1): set them from the training
    split before training (`set_target_stats`); being in the state dict, the checkpoint restores them at inference.
    Train with :class:`StandardisedSmoothL1Loss`, which standardises predictions and targets with the same buffers.
    """

    uses_patch_maps = False

    def __init__(self, encoder: nn.Module, num_outputs: int, hidden: str = "mlp", n_last_blocks: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.block_indices = _last_blocks(encoder, n_last_blocks)
        dim = encoder.embed_dim
        in_dim = n_last_blocks * dim
        if hidden == "mlp":
            layers = [nn.BatchNorm1d(in_dim), nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout),
                      nn.Linear(dim, num_outputs)]
        elif hidden == "linear":
            layers = [nn.BatchNorm1d(in_dim), nn.Linear(in_dim, num_outputs)]
        else:
            raise ValueError(f"regression head: hidden must be 'mlp' or 'linear', not {hidden!r}")
        self.layers = nn.Sequential(*layers)
        _init_linear(self.layers)
        self.register_buffer("target_mean", torch.zeros(num_outputs))
        self.register_buffer("target_std", torch.ones(num_outputs))

    @torch.jit.unused
    def set_target_stats(self, mean, std) -> None:
        """Set the (K,) standardisation statistics (std must be > 0)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        k = self.target_mean.numel()
        if mean.numel() != k or std.numel() != k:
            raise ValueError(f"regression head has {k} outputs but got {mean.numel()} means and {std.numel()} stds")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"target statistics must be finite with std > 0, got mean {mean.tolist()}, "
                             f"std {std.tolist()}")
        self.target_mean.copy_(mean)
        self.target_std.copy_(std)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        z = self.layers(torch.cat(features, dim=-1))
        return z * self.target_std + self.target_mean


class StandardisedSmoothL1Loss(nn.Module):
    """SmoothL1 on standardised values: `(pred - mean) / std` against `(target - mean) / std`, with the mean and
    std buffers of a :class:`RegressionHead` (read at every call, so stats set after construction count).

    Missing targets are NaN in `target` (B, K): masked out; the loss is the mean over the present values, 0 (with
    a zero gradient, never NaN) when a batch has none. `head` may also be a whole `VisionFMTaskModel` (its `.head`
    is used) or a DDP wrapper of one.
    """

    def __init__(self, head: nn.Module, beta: float = 1.0):
        super().__init__()
        self.beta = float(beta)
        # a plain reference, not a submodule: the loss must not own (or move, or save) the network's head
        self.__dict__["_stats_of"] = head

    def _head(self) -> nn.Module:
        head = self._stats_of
        head = getattr(head, "module", head)  # DDP
        return getattr(head, "head", head)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        head = self._head()
        pred = pred.float()
        target = torch.as_tensor(target).as_subclass(torch.Tensor).to(pred.device, torch.float32)
        if target.shape != pred.shape:
            raise ValueError(f"StandardisedSmoothL1Loss: predictions {tuple(pred.shape)} and targets "
                             f"{tuple(target.shape)} must have the same shape")
        mean, std = head.target_mean.to(pred.device), head.target_std.to(pred.device)
        present = ~torch.isnan(target)
        z_target = (torch.where(present, target, mean.expand_as(target)) - mean) / std
        z_pred = (pred - mean) / std
        loss = F.smooth_l1_loss(z_pred, z_target, reduction="none", beta=self.beta) * present
        return loss.sum() / present.sum().clamp(min=1)


def dense_block_indices(depth: int) -> list[int]:
    """Blocks (3, 5, 7, 11) of a 12-block encoder, spread in the same proportion over other depths."""
    indices = [max(0, round((i + 1) * depth / 12) - 1) for i in (3, 5, 7, 11)]
    if len(set(indices)) != 4:
        raise ValueError(f"an encoder with {depth} blocks is too shallow for the 4-block UNETR decoder")
    return indices


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


class _DenseHead(nn.Module):
    uses_patch_maps = True

    def __init__(self, encoder: nn.Module, num_outputs: int, feature_size: int = 32,
                 block_indices: list[int] | None = None, norm_name: str = "instance"):
        super().__init__()
        depth = len(encoder.blocks)
        # negatives count from the end; the decoder takes the maps shallow to deep
        self.block_indices = encoder._block_indices(list(block_indices)) if block_indices is not None \
            else dense_block_indices(depth)
        if len(self.block_indices) != 4:
            raise ValueError(f"the UNETR decoder takes 4 encoder blocks, got block_indices={self.block_indices}")
        # a 3-D encoder (vit3d.VisionTransformer3D) gets the 3-D decoder, on its NCDHW maps
        self.decoder = UNETRDecoder2d(encoder.embed_dim, num_outputs, encoder.patch_size,
                                      encoder.patch_embed.proj.in_channels, feature_size, norm_name,
                                      spatial_dims=getattr(encoder, "spatial_dims", 2),
                                      depth_patch=getattr(encoder, "depth_patch", None))

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return self.decoder(features, image)


@register_head("segmentation")
class SegmentationHead(_DenseHead):
    """Segmentation logits (B, C, H, W) at the input resolution from a 2-D UNETR decoder; (B, C, I, J, K) from the
    3-D decoder on a 3-D encoder."""


@register_head("landmarks")
class LandmarkHeatmapHead(_DenseHead):
    """One heatmap of logits per landmark (B, L, H, W) at the input resolution, from the same UNETR decoder;
    `soft_argmax_2d` turns them into (x, y) points and `HeatmapLandmarkLoss` trains them."""
