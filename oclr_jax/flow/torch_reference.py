"""A PyTorch re-implementation of RAFT (Teed & Deng, ECCV 2020), the full model of `raft-things.pth`.

`TorchRAFT()` has the module tree of the official `RAFT(args)` with `small=False`, so its
`state_dict()` names and shapes are those of `raft-things.pth` (after the `module.` prefix of
`DataParallel` is removed) and either loads into the other with `strict=True`.  It computes what
the official model computes in test mode, in the same way (the all-pairs correlation pyramid
sampled with `grid_sample(align_corners=True)`, the x/y-transposed lookup window, the convex
upsampling of the last iterate), because the parity tests of the Flax RAFT and the benchmark
baseline rest on it.  Layout is PyTorch's: images `(N, 3, H, W)` float 0..255 with H, W
multiples of 8; flow `(N, 2, H, W)`.

This module imports torch at import time; nothing in the Flax package imports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN_DIM = 128
CONTEXT_DIM = 128
CORR_LEVELS = 4
CORR_RADIUS = 4


def _norm(kind: str, width: int) -> nn.Module:
    return nn.BatchNorm2d(width) if kind == "batch" else nn.InstanceNorm2d(width)


class ResidualBlock(nn.Module):
    """conv3x3(stride) -> norm -> relu -> conv3x3 -> norm -> relu, plus a (1x1 conv, norm)
    shortcut when strided; relu of the sum.  `norm3` is registered twice (as `norm3` and as
    `downsample.1`), exactly as the official block does, so a BatchNorm's tensors appear under
    both names in the state dict."""

    def __init__(self, in_planes: int, planes: int, norm: str, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.norm1 = _norm(norm, planes)
        self.norm2 = _norm(norm, planes)
        self.downsample = None
        if stride != 1:
            self.norm3 = _norm(norm, planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class BasicEncoder(nn.Module):
    """7x7/2 conv (64) -> norm -> relu -> 3 stages of 2 residual blocks (64, 96/2, 128/2) -> 1x1
    conv: `(N, 3, H, W)` -> `(N, output_dim, H/8, W/8)`."""

    def __init__(self, output_dim: int, norm: str):
        super().__init__()
        self.norm1 = _norm(norm, 64)  # registered before conv1, as in the official state dict
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        widths, in_planes = ((64, 1), (96, 2), (128, 2)), 64
        for index, (width, stride) in enumerate(widths, start=1):
            setattr(self, f"layer{index}", nn.Sequential(ResidualBlock(in_planes, width, norm, stride),
                                                         ResidualBlock(width, width, norm, 1)))
            in_planes = width
        self.conv2 = nn.Conv2d(128, output_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)


class BasicMotionEncoder(nn.Module):
    """Correlation (324 ch) and flow (2 ch) -> 126 features, with the flow appended (128)."""

    def __init__(self):
        super().__init__()
        corr_planes = CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2
        self.convc1 = nn.Conv2d(corr_planes, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class SepConvGRU(nn.Module):
    """A ConvGRU with 1x5 convolutions, then one with 5x1 convolutions."""

    def __init__(self, hidden_dim: int, input_dim: int):
        super().__init__()
        width = hidden_dim + input_dim
        for suffix, kernel, pad in (("1", (1, 5), (0, 2)), ("2", (5, 1), (2, 0))):
            for gate in ("z", "r", "q"):
                setattr(self, f"conv{gate}{suffix}", nn.Conv2d(width, hidden_dim, kernel, padding=pad))

    def _gru(self, h, x, suffix):
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(getattr(self, f"convz{suffix}")(hx))
        r = torch.sigmoid(getattr(self, f"convr{suffix}")(hx))
        q = torch.tanh(getattr(self, f"convq{suffix}")(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._gru(self._gru(h, x, "1"), x, "2")


class FlowHead(nn.Module):
    def __init__(self, input_dim: int = 128, hidden_dim: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


class BasicUpdateBlock(nn.Module):
    """Motion encoder, separable ConvGRU, flow head and the upsampling-mask head."""

    def __init__(self, hidden_dim: int = HIDDEN_DIM):
        super().__init__()
        self.encoder = BasicMotionEncoder()
        self.gru = SepConvGRU(hidden_dim, 128 + hidden_dim)
        self.flow_head = FlowHead(hidden_dim, 256)
        self.mask = nn.Sequential(nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(256, 64 * 9, 1))

    def forward(self, net, inp, corr, flow):
        motion = self.encoder(flow, corr)
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        return net, 0.25 * self.mask(net), self.flow_head(net)  # mask scaled as in the official code


def coords_grid(batch: int, height: int, width: int) -> torch.Tensor:
    """(N, 2, H, W) pixel coordinates, channel 0 = x, channel 1 = y."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs, ys], dim=0).float()[None].repeat(batch, 1, 1, 1)


def bilinear_sample(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """`grid_sample(align_corners=True, zeros padding)` at pixel coordinates (x, y)."""
    height, width = volume.shape[-2:]
    x, y = coords.split([1, 1], dim=-1)
    grid = torch.cat([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], dim=-1)
    return F.grid_sample(volume, grid, align_corners=True)


class CorrPyramid:
    """All-pairs correlation `<f1(i, j), f2(k, l)> / sqrt(D)` average-pooled 3 times over (k, l);
    looked up in a (2r+1)^2 window around each coordinate at every level."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor):
        n, dim, h, w = fmap1.shape
        corr = torch.matmul(fmap1.view(n, dim, h * w).transpose(1, 2), fmap2.view(n, dim, h * w))
        corr = (corr / torch.sqrt(torch.tensor(dim).float())).reshape(n * h * w, 1, h, w)
        self.levels = [corr]
        for _ in range(CORR_LEVELS - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.levels.append(corr)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        r = CORR_RADIUS
        coords = coords.permute(0, 2, 3, 1)  # (N, h, w, 2)
        n, h, w, _ = coords.shape
        offsets = torch.linspace(-r, r, 2 * r + 1)
        # The official window: meshgrid(dy, dx) stacked as (first, second) and added to (x, y),
        # so the first window axis moves x.  Kept, since the weights were trained with it.
        delta = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        out = []
        for level, corr in enumerate(self.levels):
            centre = coords.reshape(n * h * w, 1, 1, 2) / 2 ** level
            out.append(bilinear_sample(corr, centre + delta).view(n, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous().float()


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 2, h, w) flow, (N, 576, h, w) mask logits -> (N, 2, 8h, 8w): each fine pixel a
    softmax-weighted mix of the 3x3 coarse neighbours of 8 * flow."""
    n, _, h, w = flow.shape
    weights = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
    neighbours = F.unfold(8 * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
    up = torch.sum(weights * neighbours, dim=2).permute(0, 1, 4, 2, 5, 3)
    return up.reshape(n, 2, 8 * h, 8 * w)


class TorchRAFT(nn.Module):
    """RAFT (full): `forward(image1, image2, iters)` -> (flow at 1/8, flow at full size)."""

    def __init__(self):
        super().__init__()
        self.hidden_dim, self.context_dim = HIDDEN_DIM, CONTEXT_DIM
        self.fnet = BasicEncoder(256, "instance")
        self.cnet = BasicEncoder(HIDDEN_DIM + CONTEXT_DIM, "batch")
        self.update_block = BasicUpdateBlock(HIDDEN_DIM)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 20):
        image1 = 2 * (image1 / 255.0) - 1.0
        image2 = 2 * (image2 / 255.0) - 1.0
        fmap1, fmap2 = torch.split(self.fnet(torch.cat([image1, image2], dim=0)), image1.shape[0], dim=0)
        corr_fn = CorrPyramid(fmap1.float(), fmap2.float())
        net, inp = torch.split(self.cnet(image1), [self.hidden_dim, self.context_dim], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        n, _, height, width = image1.shape
        coords0 = coords_grid(n, height // 8, width // 8)
        coords1 = coords_grid(n, height // 8, width // 8)
        mask = None
        for _ in range(iters):
            corr = corr_fn(coords1)
            net, mask, delta = self.update_block(net, inp, corr, coords1 - coords0)
            coords1 = coords1 + delta
        return coords1 - coords0, convex_upsample(coords1 - coords0, mask)
