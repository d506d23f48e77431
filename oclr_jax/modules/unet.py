"""The per-frame U-Net of OCLR: encoder (4 down stages + bottleneck) and decoder.

Everything is NHWC and operates on `(N, H, W, C)` with N = B*T frames.  Layers follow the
official `models/unet.py`: bias-free 3x3 convolutions with padding 1, non-affine instance norm
(eps 1e-5, biased variance), LeakyReLU(0.01); 2x2 transposed convolutions with bias.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from oclr_jax.modules.initializers import uniform_fan_in

Dtype = Any
_INSTANCE_NORM_EPS = 1e-5
_LEAKY_SLOPE = 0.01


def instance_norm(x: jnp.ndarray, eps: float = _INSTANCE_NORM_EPS) -> jnp.ndarray:
    """torch InstanceNorm2d without affine: per frame and channel over H, W.  (N, H, W, C)."""
    # Reducing one merged H*W axis rather than two: XLA CPU runs the forward and backward of
    # the two-axis form about 2x slower (split partial reductions).
    n, h, w, c = x.shape
    flat = x.astype(jnp.float32).reshape(n, h * w, c)
    centred = flat - jnp.mean(flat, axis=1, keepdims=True)
    var = jnp.mean(jnp.square(centred), axis=1, keepdims=True)  # two-pass, as torch
    return (centred * jax.lax.rsqrt(var + eps)).reshape(x.shape).astype(x.dtype)


@jax.custom_vjp
def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """torch `max_pool2d(x, 2)` on even H, W: (N, H, W, C) -> (N, H/2, W/2, C).

    The gradient goes to the first maximum of each window in row-major order, as in torch.
    Written as a reshape and a max with elementwise masks for the backward: XLA CPU lowered
    `nn.max_pool`'s gradient to variadic reduce-windows over four index arrays, about a fifth
    of the whole train step at (2, 8, 64, 112).
    """
    return _pool_windows(x).max(axis=(2, 4))


def _pool_windows(x: jnp.ndarray) -> jnp.ndarray:
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"max_pool_2x2 needs even H and W; got {x.shape}")
    return x.reshape(n, h // 2, 2, w // 2, 2, c)  # (N, h, dy, w, dx, C)


def _max_pool_forward(x):
    pooled = max_pool_2x2(x)
    return pooled, (x, pooled)


def _max_pool_backward(residuals, pooled_grad):
    x, pooled = residuals
    windows = _pool_windows(x)
    taken = jnp.zeros(pooled.shape, bool)
    grads = []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):  # torch's scan order inside a window
        first_max = (windows[:, :, dy, :, dx] == pooled) & ~taken
        taken = taken | first_max
        grads.append(jnp.where(first_max, pooled_grad, 0).astype(x.dtype))
    top = jnp.stack(grads[:2], axis=-2)  # (N, h, w, dx, C)
    bottom = jnp.stack(grads[2:], axis=-2)
    return (jnp.stack([top, bottom], axis=2).reshape(x.shape),)  # (N, h, dy, w, dx, C)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


class Conv3x3(nn.Module):
    """Bias-free 3x3 convolution, padding 1, over the channel concatenation of its inputs.

    `Conv3x3(F)((a, b))` equals a 3x3 convolution of `concat([a, b], -1)` with the kernel
    `(3, 3, C_a + C_b, F)`, computed as the sum of one convolution per input with its slice of
    the kernel: the concatenated tensor (and the slices of its gradient) are never built.

    Attributes:
      features: output channels F.
      dtype: compute dtype (the kernel param stays float32).
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs) -> jnp.ndarray:
        """(N, H, W, C_i) array or sequence of arrays -> (N, H, W, F)."""
        inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        widths = [x.shape[-1] for x in inputs]
        kernel = self.param("kernel", uniform_fan_in(sum(widths) * 9),
                            (3, 3, sum(widths), self.features)).astype(self.dtype)
        out, start = None, 0
        for x, width in zip(inputs, widths):
            part = jax.lax.conv_general_dilated(
                x.astype(self.dtype), kernel[:, :, start:start + width], (1, 1),
                ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
            out = part if out is None else out + part
            start += width
        return out


class ConvBlock(nn.Module):
    """[3x3 conv (no bias) -> instance norm -> LeakyReLU] x 2.

    Attributes:
      features: output channels of both convolutions.
      dtype: compute dtype (params stay float32).
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x) -> jnp.ndarray:
        """(N, H, W, C_in), or a sequence of such arrays standing for their channel
        concatenation (see Conv3x3) -> (N, H, W, features)."""
        for index in (1, 2):
            x = Conv3x3(self.features, self.dtype, name=f"conv{index}")(x)
            x = nn.leaky_relu(instance_norm(x), negative_slope=_LEAKY_SLOPE)
        return x


class UpConv2x2(nn.Module):
    """torch ConvTranspose2d(kernel 2, stride 2) written as a matmul plus depth-to-space.

    `out[n, 2y+dy, 2x+dx, o] = sum_i x[n, y, x, i] * kernel[dy, dx, i, o] + bias[o]`, exactly the
    torch operation (whose weight `(I, O, 2, 2)` is `kernel.transpose(2, 3, 0, 1)`).  The matmul
    form avoids the slow backward of a general transposed convolution (DESIGN.md §8).

    Attributes:
      features: output channels O.
      dtype: compute dtype.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """(N, h, w, I) -> (N, 2h, 2w, O)."""
        in_features = x.shape[-1]
        fan_in = self.features * 4  # torch computes fan_in of (I, O, 2, 2) from dims 1..3.
        kernel = self.param("kernel", uniform_fan_in(fan_in), (2, 2, in_features, self.features))
        bias = self.param("bias", uniform_fan_in(fan_in), (self.features,))
        x = x.astype(self.dtype)
        n, h, w, _ = x.shape
        patches = jnp.einsum("nhwi,abio->nhawbo", x, kernel.astype(self.dtype))  # (N, h, 2, w, 2, O)
        return patches.reshape(n, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


def _block(remat: bool):
    return nn.remat(ConvBlock) if remat else ConvBlock


class UNetEncoder(nn.Module):
    """Widths f, 2f, 4f, 8f with 2x2 max-pool after each, then a 16f bottleneck.

    Attributes:
      features: f, the width of the first stage.
      dtype: compute dtype.
      remat: rematerialise each ConvBlock in the backward pass (saves activation memory).
    """

    features: int = 32
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray):
        """(N, H, W, C) -> skips ((N,H,W,f), (N,H/2,W/2,2f), (N,H/4,W/4,4f), (N,H/8,W/8,8f)) and
        the bottleneck (N, H/16, W/16, 16f)."""
        block = _block(self.remat)
        skips = []
        for stage, width in enumerate((1, 2, 4, 8), start=1):
            x = block(self.features * width, self.dtype, name=f"encoder{stage}")(x)
            skips.append(x)
            x = max_pool_2x2(x)
        bottleneck = block(self.features * 16, self.dtype, name="bottleneck")(x)
        return tuple(skips), bottleneck


class UNetDecoder(nn.Module):
    """Four [2x2 up-convolution, concat(up, skip), ConvBlock] stages and a 1x1 conv to K logits.

    Attributes:
      out_channels: K, one amodal logit channel per layer.
      features: f of the matching encoder.
      dtype: compute dtype.
      remat: rematerialise each ConvBlock.
    """

    out_channels: int
    features: int = 32
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, skips, x: jnp.ndarray) -> jnp.ndarray:
        """skips as returned by UNetEncoder, x (N, H/16, W/16, C) -> (N, H, W, out_channels)."""
        block = _block(self.remat)
        for stage in (4, 3, 2, 1):
            width = self.features * 2 ** (stage - 1)
            x = UpConv2x2(width, self.dtype, name=f"upconv{stage}")(x)
            # concat([up, skip]) -> conv, as officially, without building the concatenation.
            x = block(width, self.dtype, name=f"decoder{stage}")((x, skips[stage - 1]))
        fan_in = self.features
        return nn.Conv(self.out_channels, (1, 1), dtype=self.dtype,
                       kernel_init=uniform_fan_in(fan_in), bias_init=uniform_fan_in(fan_in),
                       name="conv")(x)
