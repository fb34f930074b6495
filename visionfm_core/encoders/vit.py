"""The VisionFM encoder: a plain pre-norm ViT whose state-dict names are those of DINO, iBOT, timm and VisionFM; with
the options the other encoder families need (`visionfm_core.encoders.families`: RETFound-MAE's fc_norm pooling,
DINOv2's LayerScale, mask token and register tokens), each absent when off so VisionFM's keys are unchanged.

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

from visionfm_core.encoders.families import EncoderFamily, get_encoder_family, nearest_valid_sizes

__all__ = ["VisionTransformer", "build_encoder", "ARCHS", "resample_pos_embed", "family_settings", "LayerScale"]

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
        mask = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(keep).div_(keep)
        return x * mask  # one pass over x: the 1 / keep rescaling is folded into the (B, 1, ...) mask


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


# Training on a CPU with native bf16 (AVX512-BF16, AMX), PyTorch's fused (flash) attention kernel has a slow backward
# on short sequences: per ViT-S block at batch 16, forward + backward took 29 ms against 19 ms for plain matmul
# attention at 197 tokens (224 px) and 9 ms against 2 ms at 37 tokens (96 px local crops); from ~1000 tokens the fused
# kernel is faster and saves the (tokens x tokens) attention matrix. Without native bf16 the matmuls are emulated and
# the fused kernel is 3-4x faster. fp32 and GPUs keep the fused kernel. scripts/bench_attention.py measures it.
MATMUL_ATTENTION_MAX_TOKENS = 640


def default_matmul_attention_max_tokens() -> int:
    """`MATMUL_ATTENTION_MAX_TOKENS` on CPUs that multiply bf16 natively, else 0 (always the fused kernel)."""
    from visionfm_core.engine.precision import cpu_has_native_bf16  # here: engine imports the encoders

    return MATMUL_ATTENTION_MAX_TOKENS if cpu_has_native_bf16() else 0


def use_matmul_attention(q: torch.Tensor, max_tokens: int) -> bool:
    """Whether `Attention` computes softmax(q k^T) v with plain matmuls instead of the fused kernel: only where autograd
    records a bf16 CPU forward pass of at most `max_tokens` tokens."""
    return q.requires_grad and q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] <= max_tokens


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.matmul_attention_max_tokens = default_matmul_attention_max_tokens()  # 0: always the fused kernel
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        # fused (flash / memory-efficient) kernels where available; `attn_bias` (broadcast to (B, heads, N, N)) is
        # added to the attention logits: the 3-D encoder uses it to weight the CLS key (vit3d.py)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)  # bf16 weights on an fp32 input
        if use_matmul_attention(q, self.matmul_attention_max_tokens):
            logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            if attn_bias is not None:
                logits = logits + attn_bias
            x = logits.softmax(dim=-1) @ v
        else:
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


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (DINOv2's `ls1.gamma` / `ls2.gamma`, timm's names)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float,
                 layer_scale: float | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        # Identity when the family has no LayerScale: no parameters, so VisionFM's key names are unchanged
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), attn_bias)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """Pre-norm ViT with a CLS token, learned position embeddings and an optional mask token; the settings of the
    other encoder families (`visionfm_core.encoders.families`) on top: LayerScale, register tokens, DINOv2's
    `mask_token`, and RETFound's image feature (patch-token mean through `fc_norm`, no final norm).

    - `forward(x)` -> the family's image feature (B, D): the CLS token after the final norm (`global_pool="token"`),
      or the mean of the patch tokens through `fc_norm` (`global_pool="avg"`)
    - `block_features(x, indices)` -> that image feature computed from each of some blocks' outputs (what the
      classification-type heads read)
    - `forward_features(x, mask=None)` -> all tokens through the final norm (B, prefix + N, D); `mask` (B, N) bool
      marks the patches replaced by the mask token (iBOT masked image modelling)
    - `get_intermediate_layers(x, n)` -> the last n block outputs, each passed through the final norm
    - `forward_intermediates(x, indices, output_fmt, norm)` -> patch maps (NCHW) or patch tokens (NLC), as timm
    Any input whose sides are multiples of the patch size works: position embeddings are resampled.
    Prefix tokens: the CLS token, then the register tokens (`num_prefix_tokens` = 1 + registers); the position
    embeddings cover the CLS token and the patches, not the registers (DINOv2's layout).
    """

    # construction-time descriptions (the family's name, the blocks dense heads read): not part of a scripted network
    __jit_ignored_attributes__ = ["family", "dense_blocks"]

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
        layer_scale: float | None = None,
        reg_tokens: int = 0,
        mask_token: bool = False,
        global_pool: str = "token",
        family: str = "visionfm",
        dense_blocks: list[int] | None = None,
    ):
        super().__init__()
        if global_pool != "token" and global_pool != "avg":
            raise ValueError(f"global_pool must be 'token' or 'avg', not {global_pool!r}")
        self.family = family
        self.num_prefix_tokens = 1 + reg_tokens  # CLS + registers (an instance attribute so TorchScript sees it)
        self.global_pool = global_pool
        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim)) if mask_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, r, layer_scale) for r in rates])
        # RETFound: no final norm, its image feature goes through fc_norm (timm's global_pool="avg" layout)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if global_pool == "token" else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if global_pool == "avg" else nn.Identity()
        self.masked_embed = nn.Parameter(torch.zeros(1, embed_dim)) if masked_im_modeling else None
        # the blocks the dense heads read, as the family declares them
        self.dense_blocks = list(dense_blocks) if dense_blocks is not None else []
        self._init_weights()

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)  # DINOv2's initialisation
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "masked_embed", "mask_token", "register_tokens"}

    def mask_patches(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Patch embeddings (B, N, D) with the patches marked in `mask` (B, N) replaced by the mask token
        (`masked_embed`, or DINOv2's `mask_token`), before CLS and position embeddings are added (iBOT's masked image
        modelling)."""
        if mask is None:
            return x
        if self.masked_embed is not None:
            token = self.masked_embed
        elif self.mask_token is not None:
            token = self.mask_token
        else:
            raise ValueError("this encoder was built without masked_im_modeling=True; it cannot take a mask")
        mask = mask.reshape(x.shape[0], -1)
        if mask.shape[1] != x.shape[1]:
            raise ValueError(f"mask has {mask.shape[1]} patches but the input has {x.shape[1]}")
        return torch.where(mask.unsqueeze(-1), token.to(x.dtype), x)

    def insert_registers(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + N, D) with the register tokens put after the CLS token (DINOv2: after the position
        embeddings are added, so the registers have none)."""
        if self.register_tokens is None:
            return x
        return torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)

    def prepare_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.mask_patches(self.patch_embed(x), mask)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.insert_registers(x + resample_pos_embed(self.pos_embed, (h, w)))

    def attention_bias(self, x: torch.Tensor) -> torch.Tensor | None:
        """Additive attention-logit bias for input `x` (None: plain attention). The 3-D encoder overrides it."""
        return None

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bias = self.attention_bias(x)
        x = self.prepare_tokens(x, mask)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image feature (B, D) of tokens (B, prefix + N, D) that went through the final norm."""
        if self.global_pool == "avg":
            return self.fc_norm(tokens[:, self.num_prefix_tokens:].mean(dim=1))
        return tokens[:, 0]

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
        """All tokens (B, prefix + N, D) after each wanted block, shallow to deep; blocks past the last one are
        skipped."""
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
        """Normalised outputs (B, prefix + N, D) of the last `n` blocks (or of the block indices in `n`), shallow to
        deep."""
        return self._block_outputs(x, n, True, mask)

    @torch.jit.export
    def block_features(self, x: torch.Tensor, indices: int | list[int] = 1) -> list[torch.Tensor]:
        """The family's image feature (B, D) computed from each of some blocks' outputs, shallow to deep: their CLS
        token after the final norm, or (RETFound) their patch-token mean through `fc_norm`. The last block's is
        `forward(x)`."""
        return [self.pool(tokens) for tokens in self._block_outputs(x, indices, True)]

    @torch.jit.export
    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] = 1, output_fmt: str = "NCHW", norm: bool = True
    ) -> list[torch.Tensor]:
        """Patch features of some blocks, as timm's `forward_intermediates(..., intermediates_only=True)`.

        `indices`: an int n takes the last n blocks, a list takes those block indices (negatives from the end);
        outputs come shallow to deep. `output_fmt="NCHW"` gives maps (B, D, H/p, W/p), `"NLC"` the patch tokens
        (B, N, D); the prefix tokens (CLS, registers) are left out of both. `norm` passes each through the final
        norm (none for RETFound, as in timm).
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
        return self.pool(self.forward_features(x))


def family_settings(encoder: str | EncoderFamily, arch: str | None, patch_size: int | None, img_size: int,
                    masked_im_modeling: bool = False) -> dict:
    """The `VisionTransformer` keyword arguments of an encoder family at a size (`arch`, default the family's
    published one) and patch size (default the family's), checked: a patch size the family does not have, an image
    size that is not a multiple of the patch (naming the nearest valid sizes), a mask token VisionFM-only."""
    family = get_encoder_family(encoder)
    arch = family.arch if arch is None else arch
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    patch_size = family.patch_size if patch_size is None else int(patch_size)
    allowed = _PATCH_SIZES[arch] if family.layout == "visionfm" else (family.patch_size,)
    if patch_size not in allowed:
        what = arch if family.layout == "visionfm" else f"the {family.name} encoder"
        raise ValueError(f"{what} supports patch sizes {allowed}, not {patch_size}"
                         + ("" if family.layout == "visionfm" else " (leave patch_size unset: it follows --encoder)"))
    if img_size % patch_size:
        below, above = nearest_valid_sizes(img_size, patch_size)
        raise ValueError(f"img_size {img_size} is not a multiple of the {family.name} encoder's patch size "
                         f"{patch_size}: use {below} or {above} (bundles: --image_size {below})")
    if masked_im_modeling and family.layout != "visionfm":
        raise ValueError(f"masked_im_modeling (iBOT's masked_embed) is for the visionfm encoder, not {family.name}")
    dim, depth, heads = ARCHS[arch]
    return dict(img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=depth, num_heads=heads,
                masked_im_modeling=masked_im_modeling, layer_scale=family.layer_scale, reg_tokens=family.reg_tokens,
                mask_token=family.mask_token, global_pool=family.pool, family=family.name,
                dense_blocks=family.dense_block_indices(depth))


def build_encoder(
    arch: str | None = None,
    patch_size: int | None = None,
    img_size: int = 224,
    drop_path_rate: float = 0.0,
    masked_im_modeling: bool = False,
    in_chans: int = 3,
    encoder: str = "visionfm",
) -> VisionTransformer:
    """Build an encoder of a family (`encoder`: "visionfm", "retfound_mae", "retfound_dinov2", "dinov2_vits14", ...;
    see `visionfm_core.encoders.families`) with random weights. `arch` ("vit_tiny", "vit_small", "vit_base",
    "vit_large") and `patch_size` default to the family's published ones (VisionFM: ViT-B/16)."""
    settings = family_settings(encoder, arch, patch_size, img_size, masked_im_modeling)
    return VisionTransformer(in_chans=in_chans, drop_path_rate=drop_path_rate, **settings)
