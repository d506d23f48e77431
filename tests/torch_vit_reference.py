"""A small PyTorch ViT of our own with DINO's state_dict names, for parity tests of tta/vit.py.

Written from the facts of DINO's `vision_transformer.py` (pre-norm blocks, packed qkv with bias,
LayerNorm eps 1e-6, erf GELU, [CLS] token, positional embedding resized with
`F.interpolate(mode="bicubic", scale_factor=((h + 0.1) / g, (w + 0.1) / g))`), not copied from it.
Only imported by tests that need torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class ReferenceAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, length, dim = x.shape
        head_dim = dim // self.num_heads
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, G, L, D/G)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, length, dim)
        return self.proj(out)


class ReferenceMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ReferenceBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ReferenceAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ReferenceMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReferencePatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images):  # (B, 3, H, W)
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, h*w, D)


class ReferenceViT(nn.Module):
    """DINO-named ViT; `features(images)` = get_intermediate_layers(images, n=1)[0][:, 1:]."""

    def __init__(self, patch_size=8, dim=48, depth=3, num_heads=3, mlp_ratio=4.0, grid=4):
        super().__init__()
        self.patch_size = patch_size
        self.grid = grid
        self.patch_embed = ReferencePatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.blocks = nn.ModuleList(ReferenceBlock(dim, num_heads, mlp_ratio)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def resized_pos_embed(self, h: int, w: int):
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        grid = self.pos_embed[:, 1:].reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / self.grid, (w + 0.1) / self.grid),
                             mode="bicubic")
        assert grid.shape[-2:] == (h, w), grid.shape
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)],
                         dim=1)

    def features(self, images):  # (B, 3, H, W) -> (B, h*w, D)
        h, w = images.shape[2] // self.patch_size, images.shape[3] // self.patch_size
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = x + self.resized_pos_embed(h, w)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1:]


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights of unit-ish scale everywhere (LayerNorm affine too), so parity is real."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.5 if name.endswith("bias") or "norm" in name else 1.0 / math.sqrt(
                max(param.shape[-1], 1))
            param.copy_(torch.randn(param.shape, generator=generator) * scale
                        + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model
