"""Transformer pieces of OCLR, following the official `models/transformers.py`.

Post-norm layers with the official `Norm` (unbiased std, eps added to the std), a multi-head
attention with a packed q|k|v input projection and dropout on the attention weights, and the
feed-forward block Linear -> ReLU -> Dropout -> Linear.  Shapes: tokens `(B, L, c)`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from oclr_jax.modules.initializers import uniform_fan_in, xavier_uniform

Dtype = Any
NORM_EPS = 1e-5
# The official code fills blocked scores with -1e9 (not -inf): a row with every score blocked
# (T=1 with the same-frame mask) then softmaxes to uniform weights instead of NaN.
MASKED_SCORE = -1e9


def dense(features: int, fan_in: int, dtype: Dtype, name: str) -> nn.Dense:
    """nn.Dense with torch.nn.Linear's initialisation."""
    return nn.Dense(features, dtype=dtype, kernel_init=uniform_fan_in(fan_in),
                    bias_init=uniform_fan_in(fan_in), name=name)


class Norm(nn.Module):
    """`scale * (x - mean) / (std + eps) + bias` over the last axis, std unbiased (n - 1).

    Not LayerNorm (which uses the biased variance inside the square root); the difference
    reaches ~4e-3, so a port must keep this form.

    Attributes:
      eps: added to the standard deviation.
    """

    eps: float = NORM_EPS

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """(..., c) -> (..., c), computed in float32."""
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        x32 = x.astype(jnp.float32)
        centered = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        std = jnp.sqrt(jnp.sum(jnp.square(centered), axis=-1, keepdims=True) / (features - 1))
        return (scale * centered / (std + self.eps) + bias).astype(x.dtype)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with a packed input projection.

    Attributes:
      num_heads: G; the width c must be divisible by G.
      dropout_rate: dropout on the softmaxed attention weights (train only).
      deterministic: disables dropout.
      dtype: compute dtype (softmax in float32).
    """

    num_heads: int
    dropout_rate: float = 0.1
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries: jnp.ndarray, keys_values: jnp.ndarray,
                 allowed: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        """queries (B, Lq, c), keys_values (B, Lk, c), allowed (Lq, Lk) bool (True = may attend).

        Returns (B, Lq, c).
        """
        width = queries.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"attention width {width} is not divisible by {self.num_heads} heads")
        head_dim = width // self.num_heads
        in_proj_kernel = self.param("in_proj_kernel", xavier_uniform(width, 3 * width),
                                    (width, 3 * width))
        in_proj_bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * width,))
        kernel = in_proj_kernel.astype(self.dtype)
        bias = in_proj_bias.astype(self.dtype)
        if queries is keys_values:  # self-attention: one matmul, no slices of the kernel
            qkv = queries.astype(self.dtype) @ kernel + bias
            q, kv = qkv[..., :width], qkv[..., width:]
        else:
            q = queries.astype(self.dtype) @ kernel[:, :width] + bias[:width]
            kv = keys_values.astype(self.dtype) @ kernel[:, width:] + bias[width:]
        k, v = kv[..., :width], kv[..., width:]

        def split_heads(x):  # (B, L, c) -> (B, L, G, d)
            return x.reshape(*x.shape[:-1], self.num_heads, head_dim)

        q, k, v = split_heads(q), split_heads(k), split_heads(v)
        scores = jnp.einsum("bqgd,bkgd->bgqk", q, k,
                            preferred_element_type=jnp.float32) / math.sqrt(head_dim)
        if allowed is not None:
            scores = jnp.where(allowed, scores, MASKED_SCORE)  # (B, G, Lq, Lk)
        weights = jax.nn.softmax(scores, axis=-1)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=self.deterministic)
        attended = jnp.einsum("bgqk,bkgd->bqgd", weights.astype(self.dtype), v)
        attended = attended.reshape(*attended.shape[:2], width)  # (B, Lq, c)
        return dense(width, width, self.dtype, "out_proj")(attended)


def _feed_forward(x: jnp.ndarray, ff_dim: int, dropout_rate: float, deterministic: bool,
                  dtype: Dtype) -> jnp.ndarray:
    """Linear(c -> ff) -> ReLU -> Dropout -> Linear(ff -> c), named linear1/linear2.

    Called inside a layer's compact method so the params sit directly under the layer, as the
    official `layers.N.linear1` do.
    """
    width = x.shape[-1]
    hidden = nn.relu(dense(ff_dim, width, dtype, "linear1")(x))
    hidden = nn.Dropout(dropout_rate)(hidden, deterministic=deterministic)
    return dense(width, ff_dim, dtype, "linear2")(hidden)


class EncoderLayer(nn.Module):
    """x = N1(x + Drop(SelfAttn(x))); x = N2(x + Drop(FF(x))).

    Attributes:
      num_heads: G.
      ff_dim: hidden width of the feed-forward block.
      dropout_rate: for the attention weights, residual branches and the FF hidden layer.
      deterministic: disables dropout.
      dtype: compute dtype.
    """

    num_heads: int
    ff_dim: int = 512
    dropout_rate: float = 0.1
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, allowed: Optional[jnp.ndarray]) -> jnp.ndarray:
        """x (B, L, c), allowed (L, L) bool or None -> (B, L, c)."""
        drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
        attended = MultiHeadAttention(self.num_heads, self.dropout_rate, self.deterministic,
                                      self.dtype, name="self_attn")(x, x, allowed)
        x = Norm(name="norm1")(x + drop(attended))
        ff = _feed_forward(x, self.ff_dim, self.dropout_rate, self.deterministic, self.dtype)
        return Norm(name="norm2")(x + drop(ff))


class DecoderLayer(nn.Module):
    """Self-attention (no mask) -> cross-attention to the encoder output -> FF, each post-norm.

    Attributes: as EncoderLayer.
    """

    num_heads: int
    ff_dim: int = 512
    dropout_rate: float = 0.1
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, memory: jnp.ndarray) -> jnp.ndarray:
        """x (B, Lq, c) queries, memory (B, Lk, c) encoder tokens -> (B, Lq, c)."""
        drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
        attention = lambda name: MultiHeadAttention(
            self.num_heads, self.dropout_rate, self.deterministic, self.dtype, name=name)
        x = Norm(name="norm1")(x + drop(attention("self_attn")(x, x)))
        x = Norm(name="norm2")(x + drop(attention("multihead_attn")(x, memory)))
        ff = _feed_forward(x, self.ff_dim, self.dropout_rate, self.deterministic, self.dtype)
        return Norm(name="norm3")(x + drop(ff))


class TransformerStack(nn.Module):
    """N encoder or decoder layers named layers_0 .. layers_{N-1}.

    Attributes:
      layer_type: EncoderLayer or DecoderLayer.
      num_layers, num_heads, ff_dim, dropout_rate, deterministic, dtype: per layer.
      remat: rematerialise each layer in the backward pass.
    """

    layer_type: type
    num_layers: int
    num_heads: int
    ff_dim: int = 512
    dropout_rate: float = 0.1
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: Optional[jnp.ndarray]) -> jnp.ndarray:
        """x (B, L, c); context is the attention mask (encoder) or the memory (decoder)."""
        layer_cls = nn.remat(self.layer_type) if self.remat else self.layer_type
        for index in range(self.num_layers):
            x = layer_cls(self.num_heads, self.ff_dim, self.dropout_rate, self.deterministic,
                          self.dtype, name=f"layers_{index}")(x, context)
        return x
