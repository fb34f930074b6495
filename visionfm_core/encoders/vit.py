"""The VisionFM encoder: a plain pre-norm ViT whose state-dict names are those of DINO, iBOT, timm and VisionFM.

Why not subclass timm's VisionTransformer: every timm release imports torchvision at import time, and
PyPI's torchvision cannot load beside a CPU-only torch build (it would pull a multi-GB CUDA torch). This
module keeps timm's parameter names and its fused attention (`F.scaled_dot_product_attention`) so the
same checkpoints load into either model with identical outputs (tests/encoders/test_vit.py checks this
against timm when timm is importable).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VisionTransformer", "build_encoder", "ARCHS", "resample_pos_embed"]

# name -> (embed_dim, depth, num_heads)
ARCHS = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}
_PATCH_SIZES = {"vit_tiny": (16,), "vit_small": (16, 8), "vit_base": (16, 8), "vit_large": (16,)}


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubically resample the patch part of a (1, prefix + g*g, D) position embedding to `grid` (h, w).

    TorchScript-compatible: the encoder calls it on every forward pass, also inside scripted task models.
    """
    prefix, patch = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(math.sqrt(patch.shape[1]))
    if old * old != patch.shape[1]:
        raise ValueError(f"position embedding with {patch.shape[1]} patch tokens is not a square grid")
    if old == grid[0] and old == grid[1]:
        return pos_embed
    dim = patch.shape[-1]
    patch = patch.reshape(1, old, old, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch.float(), size=[grid[0], grid[1]], mode="bicubic", align_corners=False)
    patch = patch.to(pos_embed.dtype)
    return torch.cat([prefix, patch.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval time or with rate 0)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        # fused (flash / memory-efficient) kernels where available; `attn_bias` (broadcast to (B, heads, N, N)) is
        # added to the attention logits: the 3-D encoder uses it to weight the CLS key (vit3d.py)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)  # bf16 weights on an fp32 input
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_bias))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Pre-norm ViT with a CLS token, learned position embeddings and an optional mask token.

    - `forward(x)` -> normalised CLS embedding (B, D)
    - `forward_features(x, mask=None)` -> all normalised tokens (B, 1 + N, D); `mask` (B, N) bool marks
      the patches replaced by `masked_embed` (iBOT masked image modelling)
    - `get_intermediate_layers(x, n)` -> the last n block outputs, each passed through the final norm
    - `forward_intermediates(x, indices, output_fmt, norm)` -> patch maps (NCHW) or patch tokens (NLC), as timm
    Any input whose sides are multiples of the patch size works: position embeddings are resampled.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        masked_im_modeling: bool = False,
    ):
        super().__init__()
        self.num_prefix_tokens = 1  # the CLS token (an instance attribute so TorchScript sees it)
        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.masked_embed = nn.Parameter(torch.zeros(1, embed_dim)) if masked_im_modeling else None
        self._init_weights()

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "masked_embed"}

    def mask_patches(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Patch embeddings (B, N, D) with the patches marked in `mask` (B, N) replaced by the mask token, before CLS
        and position embeddings are added (iBOT's masked image modelling)."""
        if mask is None:
            return x
        if self.masked_embed is None:
            raise ValueError("this encoder was built without masked_im_modeling=True; it cannot take a mask")
        mask = mask.reshape(x.shape[0], -1)
        if mask.shape[1] != x.shape[1]:
            raise ValueError(f"mask has {mask.shape[1]} patches but the input has {x.shape[1]}")
        return torch.where(mask.unsqueeze(-1), self.masked_embed.to(x.dtype), x)

    def prepare_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.mask_patches(self.patch_embed(x), mask)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + resample_pos_embed(self.pos_embed, (h, w))

    def attention_bias(self, x: torch.Tensor) -> torch.Tensor | None:
        """Additive attention-logit bias for input `x` (None: plain attention). The 3-D encoder overrides it."""
        return None

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bias = self.attention_bias(x)
        x = self.prepare_tokens(x, mask)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)

    def _block_indices(self, indices: int | list[int]) -> list[int]:
        """timm's reading of `indices`: an int n is the last n blocks; a list holds block indices, negatives
        counting from the end. Returned sorted and without repeats, the order in which the blocks run."""
        depth = len(self.blocks)
        if isinstance(indices, int):
            if indices < 1 or indices > depth:
                raise ValueError(f"cannot take the last {indices} blocks of an encoder with {depth} blocks")
            return list(range(depth - indices, depth))
        if len(indices) == 0:
            raise ValueError("no block indices given")
        taken: list[int] = []
        for i in indices:
            block = i + depth if i < 0 else i
            if block < 0 or block >= depth:
                raise ValueError(f"block index {i} is out of range for an encoder with {depth} blocks")
            if block not in taken:
                taken.append(block)
        taken.sort()
        return taken

    def _block_outputs(
        self, x: torch.Tensor, indices: int | list[int], norm: bool, mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """All tokens (B, 1 + N, D) after each wanted block, shallow to deep; blocks past the last one are skipped."""
        wanted = self._block_indices(indices)
        last = wanted[-1]
        bias = self.attention_bias(x)
        x = self.prepare_tokens(x, mask)
        outputs: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            if i <= last:
                x = block(x, bias)
                if i in wanted:
                    outputs.append(self.norm(x) if norm else x)
        return outputs

    @torch.jit.export
    def get_intermediate_layers(
        self, x: torch.Tensor, n: int | list[int] = 1, mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Normalised outputs (B, 1 + N, D) of the last `n` blocks (or of the block indices in `n`), shallow to deep."""
        return self._block_outputs(x, n, True, mask)

    @torch.jit.export
    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] = 1, output_fmt: str = "NCHW", norm: bool = True
    ) -> list[torch.Tensor]:
        """Patch features of some blocks, as timm's `forward_intermediates(..., intermediates_only=True)`.

        `indices`: an int n takes the last n blocks, a list takes those block indices (negatives from the end);
        outputs come shallow to deep. `output_fmt="NCHW"` gives maps (B, D, H/p, W/p), `"NLC"` the patch tokens
        (B, N, D); the CLS token is left out of both. `norm` passes each through the final norm.
        """
        if output_fmt != "NCHW" and output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', not '{output_fmt}'")
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        outputs: list[torch.Tensor] = []
        for tokens in self._block_outputs(x, indices, norm):
            patches = tokens[:, self.num_prefix_tokens:]
            if output_fmt == "NCHW":
                patches = patches.reshape(patches.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            outputs.append(patches)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]


def build_encoder(
    arch: str = "vit_base",
    patch_size: int = 16,
    img_size: int = 224,
    drop_path_rate: float = 0.0,
    masked_im_modeling: bool = False,
    in_chans: int = 3,
) -> VisionTransformer:
    """Build a VisionFM encoder (`vit_tiny`, `vit_small`, `vit_base` or `vit_large`)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if patch_size not in _PATCH_SIZES[arch]:
        raise ValueError(f"{arch} supports patch sizes {_PATCH_SIZES[arch]}, not {patch_size}")
    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
    dim, depth, heads = ARCHS[arch]
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        drop_path_rate=drop_path_rate,
        masked_im_modeling=masked_im_modeling,
    )
