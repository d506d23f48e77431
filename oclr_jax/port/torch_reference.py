"""A PyTorch re-implementation of the official OCLR network, written from DESIGN.md §2.

`TorchOCLR(in_channels, out_channels, ...)` has exactly the official module tree, so its
`state_dict()` names and shapes equal the official ones (`shared/official_state_dict.txt`) and
a checkpoint of either loads into the other with `strict=True`.  It computes what the official
model computes, in the same way (post-norm layers, the unbiased-std `Norm`, packed input
projections, the same-frame attention mask filled with -1e9, raw grouped dot products for the
attention maps), because the parity tests of the port and the PyTorch benchmark baselines rest
on it.  Layout is PyTorch's: input `(B, T, C, H, W)`, outputs `amodal (B, T, K, H, W)` and
`order (B, T, K)` (the per-clip order repeated over T, as the official code returns it).

This module imports torch at import time; nothing in the Flax package imports it.
"""

from __future__ import annotations

import collections
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_MASK_FILL = -1e9  # the official fill value for blocked attention scores.


class ConvBlock(nn.Module):
    """[3x3 conv (no bias) -> InstanceNorm (no affine) -> LeakyReLU(0.01)] x 2.

    The children sit in `conv_block` named `<name>conv1`, `<name>norm1`, ... as in the
    official code, which gives the state-dict names `conv_block.enc1conv1.weight` etc.
    """

    def __init__(self, in_channels: int, features: int, name: str):
        super().__init__()
        layers = collections.OrderedDict()
        for index, width_in in ((1, in_channels), (2, features)):
            layers[f"{name}conv{index}"] = nn.Conv2d(width_in, features, 3, padding=1, bias=False)
            layers[f"{name}norm{index}"] = nn.InstanceNorm2d(features)
            # In place, as the official block: the benchmarks' baseline must hold the same
            # activations for the backward (one fewer full-size tensor per layer).
            layers[f"{name}relu{index}"] = nn.LeakyReLU(inplace=True)
        self.conv_block = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        return self.conv_block(x)


class UNetEncoder(nn.Module):
    """Four ConvBlocks (f, 2f, 4f, 8f) each followed by 2x2 max-pool, then a 16f bottleneck."""

    def __init__(self, in_channels: int, features: int):
        super().__init__()
        widths = [in_channels, features, 2 * features, 4 * features, 8 * features]
        for level in range(1, 5):
            setattr(self, f"encoder{level}", ConvBlock(widths[level - 1], widths[level], f"enc{level}"))
        self.bottleneck = ConvBlock(8 * features, 16 * features, "bottleneck")

    def forward(self, x: torch.Tensor):  # (N, C, H, W)
        skips = []
        for level in range(1, 5):
            x = getattr(self, f"encoder{level}")(x)
            skips.append(x)
            x = F.max_pool2d(x, 2, 2)
        return skips, self.bottleneck(x)  # skips at H, H/2, H/4, H/8; bottleneck (N, 16f, H/16, W/16)


class UNetDecoder(nn.Module):
    """Four [ConvTranspose 2x2 s2 -> concat(upsampled, skip) -> ConvBlock] stages, 1x1 conv out."""

    def __init__(self, out_channels: int, features: int):
        super().__init__()
        for level in (4, 3, 2, 1):
            width = features * 2 ** (level - 1)
            setattr(self, f"upconv{level}", nn.ConvTranspose2d(2 * width, width, 2, stride=2))
            setattr(self, f"decoder{level}", ConvBlock(2 * width, width, f"dec{level}"))
        self.conv = nn.Conv2d(features, out_channels, 1)

    def forward(self, skips, x: torch.Tensor) -> torch.Tensor:
        for level in (4, 3, 2, 1):
            x = getattr(self, f"upconv{level}")(x)
            x = torch.cat((x, skips[level - 1]), dim=1)
            x = getattr(self, f"decoder{level}")(x)
        return self.conv(x)  # (N, K, H, W)


def linspace_grid(*sizes: int) -> np.ndarray:
    """`(*sizes, len(sizes))` float32 grid of `linspace(-1, 1, n)` coordinates, 'ij' order.

    Built in float64 with numpy and cast, as the official code does, so the two agree bit-wise.
    """
    axes = [np.linspace(-1.0, 1.0, num=n) for n in sizes]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)


class SoftPositionTimeEmbed(nn.Module):
    """Adds Linear(3 -> c) of the (t, y, x) grid to `(B, T, h, w, c)` features."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(3, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, h, w, c)
        _, t, h, w, _ = x.shape
        grid = torch.from_numpy(linspace_grid(t, h, w)).to(x)  # (T, h, w, 3)
        return x + self.proj(grid)


class SoftTimeEmbed(nn.Module):
    """Adds Linear(1 -> c) of linspace(-1, 1, T) to `(B, K, T, c)` queries."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(1, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, K, T, c)
        grid = torch.from_numpy(linspace_grid(x.shape[2])).to(x)  # (T, 1)
        return x + self.proj(grid)


class Norm(nn.Module):
    """`weight * (x - mean) / (std + eps) + bias` with the unbiased std; not LayerNorm."""

    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        return self.weight * centred / (x.std(dim=-1, keepdim=True) + self.eps) + self.bias


class MultiHeadAttention(nn.Module):
    """Packed q|k|v projection `in_proj_weight (3c, c)`, scaled dot product, `out_proj`.

    `blocked` is a boolean `(Lq, Lk)` tensor, True where attention is NOT allowed (the official
    polarity); blocked scores are replaced by -1e9 before the softmax.  Dropout acts on the
    attention weights.
    """

    def __init__(self, num_heads: int, width: int, dropout: float = 0.1):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        nn.init.xavier_uniform_(self.in_proj_weight)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(width, width)

    def _project(self, query: torch.Tensor, key_value: torch.Tensor):
        width = query.shape[-1]
        if query is key_value:  # self-attention: one matmul, then split q|k|v.
            return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        w_q, w_kv = self.in_proj_weight.split([width, 2 * width])
        b_q, b_kv = self.in_proj_bias.split([width, 2 * width])
        return (F.linear(query, w_q, b_q),) + F.linear(key_value, w_kv, b_kv).chunk(2, dim=-1)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, blocked=None) -> torch.Tensor:
        batch, length, width = query.shape
        q, k, v = self._project(query, key_value)  # each (B, L, c)
        q, k, v = (x.reshape(batch, -1, self.num_heads, self.head_dim).transpose(1, 2) for x in (q, k, v))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, G, Lq, Lk)
        if blocked is not None:
            scores = scores.masked_fill(blocked, _MASK_FILL)
        weights = self.dropout(F.softmax(scores, dim=-1))
        heads = torch.matmul(weights, v).transpose(1, 2).reshape(batch, length, width)
        return self.out_proj(heads)


class EncoderLayer(nn.Module):
    """Post-norm: x = N1(x + Drop(MHA(x))); x = N2(x + Drop(FF(x)))."""

    def __init__(self, width: int, num_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = Norm(width), Norm(width)
        self.self_attn = MultiHeadAttention(num_heads, width)
        self.linear1 = nn.Linear(width, ff_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ff_dim, width)
        self.dropout_1, self.dropout_2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked) -> torch.Tensor:
        x = self.norm1(x + self.dropout_1(self.self_attn(x, x, blocked)))
        feed_forward = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout_2(feed_forward))


class DecoderLayer(nn.Module):
    """Post-norm: self-attention (unmasked), cross-attention to the encoder output, FF."""

    def __init__(self, width: int, num_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = Norm(width), Norm(width), Norm(width)
        self.dropout_1, self.dropout_2, self.dropout_3 = (nn.Dropout(dropout) for _ in range(3))
        self.self_attn = MultiHeadAttention(num_heads, width)
        self.multihead_attn = MultiHeadAttention(num_heads, width)
        self.linear1 = nn.Linear(width, ff_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ff_dim, width)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout_1(self.self_attn(x, x)))
        x = self.norm2(x + self.dropout_2(self.multihead_attn(x, memory)))
        feed_forward = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm3(x + self.dropout_3(feed_forward))


class TransformerStack(nn.Module):
    """`layers.0 ... layers.{N-1}` applied in turn (the official TransEncoder/TransDecoder)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, *args)
        return x


def same_frame_blocked(frames: int, height: int, width: int, device) -> torch.Tensor:
    """`(T*h*w, T*h*w)` bool, True where query and key tokens belong to the same frame."""
    frame_of_token = torch.arange(frames, device=device).repeat_interleave(height * width)
    return frame_of_token[:, None] == frame_of_token[None, :]


class BTNTransformerEnc(nn.Module):
    """Space-time embedding + transformer encoder over the flattened `T*h*w` bottleneck tokens."""

    def __init__(self, width, num_layers, num_heads, ff_dim, dropout, same_frame_mask):
        super().__init__()
        self.encoder_positime = SoftPositionTimeEmbed(width)
        self.transformer_encoder = TransformerStack(
            [EncoderLayer(width, num_heads, ff_dim, dropout) for _ in range(num_layers)])
        self.same_frame_mask = same_frame_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, h, w, c)
        batch, t, h, w, c = x.shape
        x = self.encoder_positime(x).reshape(batch, t * h * w, c)
        blocked = same_frame_blocked(t, h, w, x.device) if self.same_frame_mask else None
        return self.transformer_encoder(x, blocked).reshape(batch, t, h, w, c)


class BTNTransformerDec(nn.Module):
    """K learned queries broadcast over T (+ time embedding), decoded against the encoder output."""

    def __init__(self, width, num_layers, num_heads, num_query, ff_dim, dropout):
        super().__init__()
        self.transformer_decoder = TransformerStack(
            [DecoderLayer(width, num_heads, ff_dim, dropout) for _ in range(num_layers)])
        self.encoder_time = SoftTimeEmbed(width)
        self.motion_embed = nn.Embedding(num_query, width)

    def forward(self, memory: torch.Tensor) -> torch.Tensor:  # (B, T, h, w, c)
        batch, t, h, w, c = memory.shape
        queries = self.motion_embed.weight[None, :, None, :].expand(batch, -1, t, -1)  # (B, K, T, c)
        queries = self.encoder_time(queries).reshape(batch, -1, c)  # (B, K*T, c), index k*T + t
        return self.transformer_decoder(queries, memory.reshape(batch, t * h * w, c))


class AttnMap(nn.Module):
    """Raw per-group dot products of queries and pixels, channel `k*G + g`, then Linear+ReLU."""

    def __init__(self, width: int, num_heads: int, num_query: int):
        super().__init__()
        self.heads = num_heads
        self.mlp = nn.Sequential(nn.Linear(num_heads * num_query, width), nn.ReLU(inplace=True))

    def forward(self, decoded: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        batch, t, h, w, c = memory.shape
        groups, group_width = self.heads, c // self.heads
        pixels = memory.reshape(batch, t, h, w, groups, group_width)
        queries = decoded.reshape(batch, -1, t, groups, group_width)  # (B, K, T, G, c/G)
        # Product-then-sum over the group channels, as the official code computes it.
        products = queries[:, :, :, None, None] * pixels[:, None]  # (B, K, T, h, w, G, c/G)
        maps = products.sum(-1).permute(0, 2, 3, 4, 1, 5)  # (B, T, h, w, K, G)
        return self.mlp(maps.reshape(batch, t, h, w, -1))  # (B, T, h, w, c)


class OrderingHead(nn.Module):
    """Max over T of each query's decoder output -> Linear(c, c)-ReLU-Linear(c, 1)."""

    def __init__(self, width: int, num_query: int):
        super().__init__()
        self.num_query = num_query
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, 1))

    def forward(self, decoded: torch.Tensor) -> torch.Tensor:  # (B, K*T, c)
        batch, _, c = decoded.shape
        pooled = decoded.reshape(batch, self.num_query, -1, c).max(dim=2).values  # (B, K, c)
        return self.mlp(pooled)[..., 0]  # (B, K)


class TorchOCLR(nn.Module):
    """The official OCLR network (same parameter names, shapes and computation).

    Args mirror the official `OCLR(in_channels, out_channels, unet_features, num_layers,
    num_heads, num_query)`; `ff_dim` (official: fixed 512), `dropout` (official: 0.1) and
    `same_frame_mask` (official: always on) are extra knobs with the official defaults.
    Attention-weight dropout is fixed at 0.1 as in the official MultiHeadAttention.
    """

    def __init__(self, in_channels: int, out_channels: int, unet_features: int = 32,
                 num_layers: int = 3, num_heads: int = 8, num_query: int = 3, ff_dim: int = 512,
                 dropout: float = 0.1, same_frame_mask: bool = True):
        super().__init__()
        width = 16 * unet_features
        if width % num_heads:
            raise ValueError(f"transformer width {width} (16 x unet_features) is not divisible by "
                             f"num_heads={num_heads}")
        self.num_query = num_query
        self.encoder = UNetEncoder(in_channels, unet_features)
        self.transformer_enc = BTNTransformerEnc(width, num_layers, num_heads, ff_dim, dropout, same_frame_mask)
        self.transformer_dec = BTNTransformerDec(width, num_layers, num_heads, num_query, ff_dim, dropout)
        self.heatmap = AttnMap(width, num_heads, num_query)
        self.classhead = OrderingHead(width, num_query)
        self.decoder_am = UNetDecoder(out_channels, unet_features)

    def forward(self, flow: torch.Tensor):
        """flow `(B, T, C, H, W)` -> (amodal logits `(B, T, K, H, W)`, order logits `(B, T, K)`)."""
        batch, t = flow.shape[:2]
        skips, bottleneck = self.encoder(flow.flatten(0, 1))  # bottleneck (B*T, c, h, w)
        bottleneck = bottleneck.unflatten(0, (batch, t)).permute(0, 1, 3, 4, 2)  # (B, T, h, w, c)
        memory = self.transformer_enc(bottleneck)
        decoded = self.transformer_dec(memory)  # (B, K*T, c)
        maps = self.heatmap(decoded, memory).flatten(0, 1).permute(0, 3, 1, 2)  # (B*T, c, h, w)
        amodal = self.decoder_am(skips, maps).unflatten(0, (batch, t))  # (B, T, K_out, H, W)
        order = self.classhead(decoded)  # (B, K)
        order = order[:, None].expand(batch, t, amodal.shape[2])  # repeated over T, as official
        return amodal, order
