"""RAFT (Teed & Deng, ECCV 2020) in Flax: the full model of `raft-things.pth`, test mode.

Everything is NHWC.  Images are `(B, H, W, 3)` RGB as float 0..255 with H and W multiples of 8
(pad with `oclr_jax.flow.padding` first); flows are `(B, H, W, 2)` holding (u, v) in pixels.
Submodule names mirror the PyTorch attribute names (`fnet/layer2_0/conv1`, `cnet/norm1`,
`update_block/gru/convz1`, `update_block/mask_0`, ...), so `oclr_jax.flow.convert` is a short
mechanical table.  The context encoder's BatchNorm always uses its running statistics (the
official scripts call `model.eval()`), kept in the `batch_stats` collection.

The network is split into methods (`features`, `context`, `update`, `upsample_mask`) so that
`estimate_flow` can run the refinement as a `lax.fori_loop` of pure `apply` calls: one compiled
body for any number of iterations instead of an unrolled graph.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from oclr_jax.flow import corr as corr_lib
from oclr_jax.modules.unet import instance_norm

Dtype = Any
HIDDEN_DIM = 128
CONTEXT_DIM = 128
CORR_LEVELS = 4
CORR_RADIUS = 4
_BATCH_NORM_EPS = 1e-5  # torch's default; Flax's is 1e-6


def _pads(kernel: tuple[int, int]) -> tuple:
    """torch `padding=k//2` per axis (odd kernels), explicit so strided convs match torch."""
    return tuple((k // 2, k // 2) for k in kernel)


def conv(features: int, kernel: tuple[int, int], name=None, stride: int = 1, dtype: Dtype = jnp.float32):
    """torch `Conv2d(..., padding=k//2, stride)` with bias."""
    return nn.Conv(features, kernel, strides=(stride, stride), padding=_pads(kernel), dtype=dtype, name=name)


def norm_layer(kind: str, name: str):
    """Non-affine instance norm (eps 1e-5, the feature encoder) or eval-mode BatchNorm with its
    running statistics (the context encoder); call inside a compact method.  (N, H, W, C)."""
    if kind == "instance":
        return instance_norm
    return nn.BatchNorm(use_running_average=True, epsilon=_BATCH_NORM_EPS, name=name)


class ResidualBlock(nn.Module):
    """Two 3x3 conv -> norm -> relu, a strided 1x1 conv + norm shortcut, relu of the sum.

    Attributes:
      planes: output channels.
      norm: 'instance' | 'batch'.
      stride: 1 or 2 (the first conv and the shortcut).
    """

    planes: int
    norm: str
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:  # (N, H, W, C) -> (N, H/s, W/s, planes)
        y = conv(self.planes, (3, 3), "conv1", self.stride, self.dtype)(x)
        y = nn.relu(norm_layer(self.norm, "norm1")(y))
        y = conv(self.planes, (3, 3), "conv2", 1, self.dtype)(y)
        y = nn.relu(norm_layer(self.norm, "norm2")(y))
        if self.stride != 1:
            x = conv(self.planes, (1, 1), "downsample_0", self.stride, self.dtype)(x)
            x = norm_layer(self.norm, "norm3")(x)  # torch: the same module as downsample.1
        return nn.relu(x + y)


class BasicEncoder(nn.Module):
    """7x7/2 conv (64) -> norm -> relu -> residual stages (64, 96/2, 128/2) x 2 -> 1x1 conv.

    Attributes:
      output_dim: 256 for the feature encoder, hidden + context = 256 for the context encoder.
      norm: 'instance' | 'batch'.

    (N, H, W, 3) -> (N, H/8, W/8, output_dim).
    """

    output_dim: int
    norm: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = conv(64, (7, 7), "conv1", 2, self.dtype)(x)
        x = nn.relu(norm_layer(self.norm, "norm1")(x))
        for index, (planes, stride) in enumerate(((64, 1), (96, 2), (128, 2)), start=1):
            x = ResidualBlock(planes, self.norm, stride, self.dtype, name=f"layer{index}_0")(x)
            x = ResidualBlock(planes, self.norm, 1, self.dtype, name=f"layer{index}_1")(x)
        return conv(self.output_dim, (1, 1), "conv2", 1, self.dtype)(x)


class SepConvGRU(nn.Module):
    """A ConvGRU with 1x5 kernels, then one with 5x1 kernels.  h (N, h, w, hidden), x (N, h, w, C)."""

    hidden_dim: int = HIDDEN_DIM
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
        for suffix, kernel in (("1", (1, 5)), ("2", (5, 1))):
            hx = jnp.concatenate([h, x], axis=-1)
            z = nn.sigmoid(conv(self.hidden_dim, kernel, f"convz{suffix}", 1, self.dtype)(hx))
            r = nn.sigmoid(conv(self.hidden_dim, kernel, f"convr{suffix}", 1, self.dtype)(hx))
            q = jnp.tanh(conv(self.hidden_dim, kernel, f"convq{suffix}", 1, self.dtype)(
                jnp.concatenate([r * h, x], axis=-1)))
            h = (1 - z) * h + z * q
        return h


class BasicMotionEncoder(nn.Module):
    """corr (N, h, w, 324), flow (N, h, w, 2) -> (N, h, w, 128): 126 motion features + the flow."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, flow, corr):
        c = functools.partial(conv, dtype=self.dtype)
        cor = nn.relu(c(256, (1, 1), "convc1")(corr))
        cor = nn.relu(c(192, (3, 3), "convc2")(cor))
        flo = nn.relu(c(128, (7, 7), "convf1")(flow))
        flo = nn.relu(c(64, (3, 3), "convf2")(flo))
        out = nn.relu(c(128 - 2, (3, 3), "conv")(jnp.concatenate([cor, flo], axis=-1)))
        return jnp.concatenate([out, flow.astype(out.dtype)], axis=-1)


class FlowHead(nn.Module):
    """(N, h, w, 128) -> 3x3 conv 256 -> relu -> 3x3 conv -> (N, h, w, 2)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(conv(256, (3, 3), "conv1", dtype=self.dtype)(x))
        return conv(2, (3, 3), "conv2", dtype=self.dtype)(x)


class BasicUpdateBlock(nn.Module):
    """Motion encoder + SepConvGRU + flow head; `mask` gives the convex-upsampling logits.

    Attributes:
      hidden_dim: GRU state width (128).
    """

    hidden_dim: int = HIDDEN_DIM
    dtype: Dtype = jnp.float32

    def setup(self):
        self.encoder = BasicMotionEncoder(self.dtype)
        self.gru = SepConvGRU(self.hidden_dim, self.dtype)
        self.flow_head = FlowHead(self.dtype)
        self.mask_0 = conv(256, (3, 3), dtype=self.dtype)  # torch: mask = Sequential(conv, relu, conv)
        self.mask_2 = conv(64 * 9, (1, 1), dtype=self.dtype)

    def __call__(self, net, inp, corr, flow):
        """net (N, h, w, 128), inp (N, h, w, 128), corr (N, h, w, 324), flow (N, h, w, 2)
        -> new net, delta flow (N, h, w, 2)."""
        motion = self.encoder(flow, corr)  # (N, h, w, 128)
        net = self.gru(net, jnp.concatenate([inp, motion], axis=-1))
        return net, self.flow_head(net)

    def mask(self, net):
        """(N, h, w, 128) -> (N, h, w, 576) upsampling logits, scaled by 0.25 as the official code."""
        return 0.25 * self.mask_2(nn.relu(self.mask_0(net)))


class RAFT(nn.Module):
    """RAFT, full variant.  `__call__` runs test mode with a Python loop (used by `init`);
    `estimate_flow` is the compiled path.

    Attributes:
      dtype: computation dtype of the convolutions (correlation and flow stay float32).
    """

    dtype: Dtype = jnp.float32

    def setup(self):
        self.fnet = BasicEncoder(256, "instance", self.dtype)
        self.cnet = BasicEncoder(HIDDEN_DIM + CONTEXT_DIM, "batch", self.dtype)
        self.update_block = BasicUpdateBlock(HIDDEN_DIM, self.dtype)

    def features(self, image1, image2):
        """Two (B, H, W, 3) images 0..255 -> two (B, H/8, W/8, 256) float32 feature maps."""
        fmaps = self.fnet(jnp.concatenate([normalize(image1), normalize(image2)], axis=0))
        fmap1, fmap2 = jnp.split(fmaps.astype(jnp.float32), 2, axis=0)
        return fmap1, fmap2

    def context(self, image1):
        """(B, H, W, 3) -> GRU state tanh(.) and context features relu(.), each (B, H/8, W/8, 128)."""
        out = self.cnet(normalize(image1)).astype(jnp.float32)
        return jnp.tanh(out[..., :HIDDEN_DIM]), nn.relu(out[..., HIDDEN_DIM:])

    def update(self, net, inp, corr, flow):
        net, delta = self.update_block(net.astype(self.dtype), inp.astype(self.dtype),
                                       corr.astype(self.dtype), flow.astype(self.dtype))
        return net.astype(jnp.float32), delta.astype(jnp.float32)

    def upsample_mask(self, net):
        return self.update_block.mask(net.astype(self.dtype)).astype(jnp.float32)

    def __call__(self, image1, image2, iters: int = 1):
        fmap1, fmap2 = self.features(image1, image2)
        pyramid = corr_lib.all_pairs_pyramid(fmap1, fmap2, CORR_LEVELS)
        net, inp = self.context(image1)
        coords0 = coords_grid(*fmap1.shape[:3])
        coords1 = coords0
        for _ in range(iters):
            corr = corr_lib.lookup_all_pairs(pyramid, coords1, CORR_RADIUS)
            net, delta = self.update(net, inp, corr, coords1 - coords0)
            coords1 = coords1 + delta
        flow = coords1 - coords0
        return {"flow_low": flow, "flow_up": convex_upsample(flow, self.upsample_mask(net))}


def normalize(image: jnp.ndarray) -> jnp.ndarray:
    """0..255 -> -1..1, as RAFT does inside its forward."""
    return 2 * (image.astype(jnp.float32) / 255.0) - 1.0


def coords_grid(batch: int, height: int, width: int) -> jnp.ndarray:
    """(B, h, w, 2) pixel coordinates (x, y)."""
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                          indexing="ij")
    return jnp.broadcast_to(jnp.stack([xs, ys], axis=-1), (batch, height, width, 2))


def convex_upsample(flow: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """flow (B, h, w, 2), mask logits (B, h, w, 576) -> (B, 8h, 8w, 2).

    Fine pixel (8i + dy, 8j + dx) = sum over the 3x3 coarse neighbours k of softmax_k(mask[k, dy,
    dx]) * 8 * flow[neighbour k] (zero outside), mask channel = k * 64 + dy * 8 + dx.
    """
    b, h, w, _ = flow.shape
    weights = jax.nn.softmax(mask.reshape(b, h, w, 9, 8, 8), axis=3)
    padded = jnp.pad(8 * flow, ((0, 0), (1, 1), (1, 1), (0, 0)))
    neighbours = jnp.stack([padded[:, ky:ky + h, kx:kx + w] for ky in range(3) for kx in range(3)],
                           axis=3)  # (B, h, w, 9, 2)
    up = jnp.einsum("bhwkyx,bhwkc->bhywxc", weights, neighbours, precision=jax.lax.Precision.HIGHEST)
    return up.reshape(b, 8 * h, 8 * w, 2)


def estimate_flow(model: RAFT, variables, image1: jnp.ndarray, image2: jnp.ndarray, iters: int = 20,
                  corr_impl: str = "all_pairs") -> dict:
    """RAFT test mode: images (B, H, W, 3) 0..255, H and W multiples of 8 ->
    {'flow_low': (B, H/8, W/8, 2), 'flow_up': (B, H, W, 2)}.  Pure; wrap in `jax.jit` with
    `iters` and `corr_impl` static (see `make_flow_fn`)."""
    if corr_impl not in corr_lib.CORR_IMPLS:
        raise ValueError(f"corr_impl must be one of {corr_lib.CORR_IMPLS}, got {corr_impl!r}")
    apply = functools.partial(model.apply, variables)
    fmap1, fmap2 = apply(image1, image2, method=RAFT.features)
    net, inp = apply(image1, method=RAFT.context)
    if corr_impl == "all_pairs":
        pyramid = corr_lib.all_pairs_pyramid(fmap1, fmap2, CORR_LEVELS)
        lookup = lambda coords: corr_lib.lookup_all_pairs(pyramid, coords, CORR_RADIUS)
    else:
        pyramid = corr_lib.feature_pyramid(fmap2, CORR_LEVELS)
        lookup = lambda coords: corr_lib.lookup_on_the_fly(fmap1, pyramid, coords, CORR_RADIUS)
    coords0 = coords_grid(*fmap1.shape[:3])

    def body(_, state):
        net, coords1 = state
        net, delta = apply(net, inp, lookup(coords1), coords1 - coords0, method=RAFT.update)
        return net, coords1 + delta

    net, coords1 = jax.lax.fori_loop(0, iters, body, (net, coords0))
    flow = coords1 - coords0
    mask = apply(net, method=RAFT.upsample_mask)
    return {"flow_low": flow, "flow_up": convex_upsample(flow, mask)}


def make_flow_fn(model: RAFT, iters: int = 20, corr_impl: str = "all_pairs"):
    """Jitted `(variables, image1, image2) -> flow_up (B, H, W, 2)`."""

    @jax.jit
    def flow_fn(variables, image1, image2):
        return estimate_flow(model, variables, image1, image2, iters, corr_impl)["flow_up"]

    return flow_fn


def init_variables(model: RAFT, rng: jax.Array, height: int = 128, width: int = 128):
    """Randomly initialised {'params', 'batch_stats'} (the sizes do not depend on H, W)."""
    image = jnp.zeros((1, height, width, 3), jnp.float32)
    return jax.jit(functools.partial(model.init, iters=1))(rng, image, image)
