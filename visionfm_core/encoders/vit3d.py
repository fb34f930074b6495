"""The 3-D VisionFM encoder: the 2-D ViT's blocks on the patches of a volume, inflated from the 2-D weights.

Layout: volumes are MONAI channel-first (B, C, I, J, K) with K the slice axis; slice k is what the 2-D encoder would
see as an image with rows I and columns J. Patches are p x p in-plane and `depth_patch` (default p) along K.

State dict: every name of the 2-D encoder (`cls_token`, `pos_embed`, `blocks.*`, `norm.*`, `patch_embed.proj.*`)
plus `depth_embed` (1, img_size // depth_patch, D). `pos_embed` keeps the 2-D shape (1, 1 + g*g, D): it is the
in-plane position embedding, shared by every depth position; `depth_embed` is added per depth position. The
position of token (i, j, k) is `pos_embed[i, j] + depth_embed[k]`, resampled on the fly for any input whose sides
are multiples of the patch (in-plane bicubically as in 2-D, along depth linearly).

Inflation rule (2-D weights -> this encoder; `visionfm_core.encoders.weights.load_encoder_weights` applies it):
- patch embedding: the 2-D kernel spread evenly over the depth of the 3-D patch,
  `W3[:, :, :, :, d] = W2 / depth_patch` for every d, bias unchanged: a patch made of one image repeated
  `depth_patch` times embeds exactly as that image's 2-D patch;
- `pos_embed`: the 2-D position embeddings (resampled in-plane to this model's grid), shared by every depth;
- `depth_embed`: zeros (learned when fine-tuned), so at load time the model sees depth only through content;
- every other tensor (CLS token, blocks, final norm) as is.

CLS weighting: the CLS key gets an attention-logit bias of log(n_depth) (`n_depth` = number of depth positions of
the input; 0 for one depth position). The 2-D model's CLS competes with g*g patch keys; without the bias it would
compete with n_depth x g*g here and its share of attention would shrink n_depth-fold. The bias is exactly what n_depth
copies of the CLS key would give, so on a volume made of one slice repeated every token is a copy of a 2-D token
and every attention distribution (over distinct values) is the 2-D one: the inflated encoder's CLS embedding equals
the 2-D encoder's on that slice (tests/test_encoder3d.py, 1e-4).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionfm_core.encoders.vit import VisionTransformer, family_settings, resample_pos_embed

__all__ = ["VisionTransformer3D", "build_encoder3d", "inflate_patch_embedding", "resample_depth_embed"]


def inflate_patch_embedding(weight2d: torch.Tensor, depth_patch: int) -> torch.Tensor:
    """(D, C, p, p) 2-D patch kernel -> (D, C, p, p, depth_patch): spread evenly over the depth of the patch."""
    if weight2d.dim() != 4:
        raise ValueError(f"expected a 2-D patch kernel (D, C, p, p), got shape {tuple(weight2d.shape)}")
    return weight2d.unsqueeze(-1).expand(*weight2d.shape, depth_patch) / depth_patch


def resample_depth_embed(depth_embed: torch.Tensor, n_depth: int) -> torch.Tensor:
    """Linearly resample a (1, d, D) depth embedding to (1, n_depth, D). TorchScript-compatible."""
    if depth_embed.shape[1] == n_depth:
        return depth_embed
    x = F.interpolate(depth_embed.transpose(1, 2).float(), size=[n_depth], mode="linear", align_corners=False)
    return x.transpose(1, 2).to(depth_embed.dtype)


class PatchEmbed3d(nn.Module):
    def __init__(self, patch_size: int, depth_patch: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.depth_patch = depth_patch
        kernel = (patch_size, patch_size, depth_patch)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, j, k = x.shape[-3], x.shape[-2], x.shape[-1]
        if i % self.patch_size or j % self.patch_size or k % self.depth_patch:
            raise ValueError(f"volume size {i}x{j}x{k} is not divisible by the patch size "
                             f"{self.patch_size}x{self.patch_size}x{self.depth_patch}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), tokens in (i, j, k) order, k fastest


class VisionTransformer3D(VisionTransformer):
    """The VisionFM ViT on volumes (B, C, I, J, K): same blocks and names as the 2-D encoder, a Conv3d patch
    embedding and factorised position embeddings (in-plane `pos_embed` + `depth_embed`); see the module docstring.

    - `forward(x)` -> normalised CLS embedding (B, D); `forward_features(x)` -> tokens (B, 1 + N, D)
    - `get_intermediate_layers(x, n)` -> the last n block outputs, each through the final norm
    - `forward_intermediates(x, indices, output_fmt)` -> patch maps (B, D, I/p, J/p, K/pd) ("NCDHW"; "NCHW" is
      accepted as its alias, so 2-D callers work) or patch tokens ("NLC")
    """

    def __init__(self, img_size: int = 96, patch_size: int = 16, depth_patch: int | None = None, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, masked_im_modeling: bool = False, **family: Any):
        """`family`: the encoder family's settings (`vit.family_settings`: LayerScale, registers, pooling, ...)."""
        super().__init__(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate,
                         masked_im_modeling, **family)
        depth_patch = patch_size if depth_patch is None else int(depth_patch)
        if depth_patch < 1 or img_size % depth_patch:
            raise ValueError(f"depth_patch must be >= 1 and divide img_size {img_size}, not {depth_patch}")
        self.spatial_dims = 3
        self.depth_patch = depth_patch
        self.patch_embed = PatchEmbed3d(patch_size, depth_patch, in_chans, embed_dim)
        self.depth_embed = nn.Parameter(torch.zeros(1, img_size // depth_patch, embed_dim))

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"depth_embed"}

    def attention_bias(self, x: torch.Tensor) -> torch.Tensor | None:
        # log(n_depth) on the CLS key (and on the registers, the other tokens a volume does not repeat): as if each
        # were repeated once per depth position (module docstring)
        n_depth = x.shape[-1] // self.depth_patch
        if n_depth == 1:
            return None
        prefix = self.num_prefix_tokens
        n_patches = (x.shape[-3] // self.patch_size) * (x.shape[-2] // self.patch_size) * n_depth
        cls = torch.full([1, 1, 1, prefix], math.log(n_depth), dtype=x.dtype, device=x.device)
        return torch.cat([cls, torch.zeros(1, 1, 1, n_patches, dtype=x.dtype, device=x.device)], dim=-1)

    def prepare_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        gi, gj = x.shape[-3] // self.patch_size, x.shape[-2] // self.patch_size
        gk = x.shape[-1] // self.depth_patch
        x = self.mask_patches(self.patch_embed(x), mask)
        pos = resample_pos_embed(self.pos_embed, (gi, gj))
        dim = pos.shape[-1]
        # token (i, j, k): in-plane position (i, j) + depth position k, in the patch embedding's (i, j, k) order
        plane = pos[:, 1:].reshape(1, gi, gj, 1, dim)
        depth = resample_depth_embed(self.depth_embed, gk).reshape(1, 1, 1, gk, dim)
        patch_pos = (plane + depth).reshape(1, gi * gj * gk, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1) + pos[:, :1], x + patch_pos], dim=1)
        return self.insert_registers(x)

    @torch.jit.export
    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] = 1, output_fmt: str = "NCDHW", norm: bool = True
    ) -> list[torch.Tensor]:
        """Patch features of some blocks: maps (B, D, I/p, J/p, K/pd) for "NCDHW" (or its alias "NCHW"), patch
        tokens (B, N, D) for "NLC"; the CLS token left out. `indices` as in the 2-D encoder."""
        if output_fmt != "NCDHW" and output_fmt != "NCHW" and output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NCDHW' (alias 'NCHW') or 'NLC', not '{output_fmt}'")
        gi, gj = x.shape[-3] // self.patch_size, x.shape[-2] // self.patch_size
        gk = x.shape[-1] // self.depth_patch
        outputs: list[torch.Tensor] = []
        for tokens in self._block_outputs(x, indices, norm):
            patches = tokens[:, self.num_prefix_tokens:]
            if output_fmt != "NLC":
                patches = patches.reshape(patches.shape[0], gi, gj, gk, -1).permute(0, 4, 1, 2, 3).contiguous()
            outputs.append(patches)
        return outputs


def build_encoder3d(arch: str | None = None, patch_size: int | None = None, img_size: int = 96,
                    drop_path_rate: float = 0.0, masked_im_modeling: bool = False, in_chans: int = 3,
                    depth_patch: int | None = None, encoder: str = "visionfm") -> VisionTransformer3D:
    """Build a 3-D encoder of a family (`encoder`, as `build_encoder`; default VisionFM's ViT-B/16) for img_size^3
    volumes; `arch` and `patch_size` default to the family's."""
    settings = family_settings(encoder, arch, patch_size, img_size, masked_im_modeling)
    return VisionTransformer3D(depth_patch=depth_patch, in_chans=in_chans, drop_path_rate=drop_path_rate, **settings)
