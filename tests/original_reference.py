"""The original VisionFM release's published architecture, re-stated in plain torch for the import tests: its ViT
(`get_intermediate_layers`), under its key names, and the DDP wrapping of its checkpoints. Independent of this
project's classes: checkpoints written from these modules' random tensors must give the same outputs in a bundle."""

import torch
from torch import nn


class RefBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        x = x + self.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class RefViT(nn.Module):
    """ViT with `get_intermediate_layers(x, n)`: the last n block outputs, each through the final norm."""

    def __init__(self, dim=192, depth=12, heads=3, patch=16, size=224):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(RefBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def get_intermediate_layers(self, x, n):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x))
        return out


def random_ref_vit(seed=0, size=224):
    torch.manual_seed(seed)
    vit = RefViT(size=size).eval()
    with torch.no_grad():
        for m in vit.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1, 0.1), m.bias.normal_(0, 0.1)
    return vit


def ddp(state):
    return {f"module.{k}": v for k, v in state.items()}


def save_pretraining_file(vit, path):
    """The pretraining checkpoint the evaluation scripts' decoders were trained on (`teacher` = backbone.*)."""
    backbone = vit.state_dict()
    torch.save({"teacher": {f"backbone.{k}": v for k, v in backbone.items()},
                "student": {f"module.backbone.{k}": v for k, v in backbone.items()}, "epoch": 400}, path)
    return path
