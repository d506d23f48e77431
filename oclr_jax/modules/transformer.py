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
# `attention` implementations (config `model.attention`):
#   dense:   the (B, G, Lq, Lk) scores, weights and dropout mask are materialised and kept for
#            the backward pass (the official formulation; fastest on CPU at small sizes).
#   chunked: the same arithmetic over blocks of `attention_chunk` query rows, each block under
#            `jax.checkpoint`: nothing of size Lq x Lk is stored for the backward pass (it is
#            recomputed per block, dropout mask included, from the block's key), and at most
#            one block's scores are live.  Equal to dense without dropout; with dropout the
#            masks are drawn per block (fold_in of the layer key), so the bits differ.
#   In inference (no dropout) on CPU, 'dense' computes long attentions in blocks of query rows
#   (`inference_block_rows`): the same arithmetic per row, but a block's scores stay in the
#   CPU's cache between the two matmuls and the softmax, which halves the encoder attention's
#   time at the paper size (3360 tokens).
ATTENTION_IMPLEMENTATIONS = ("dense", "chunked")
DEFAULT_CHUNK_ROWS = 256  # attention_chunk=0 means blocks of at most this many rows.
# Inference blocks: at most this many bytes of float32 scores per block (B x G x rows x Lk),
# about half of a server CPU's last-level cache.  Measured on a 2-core EPYC (32 MB L3) at
# (1, 3360 tokens, 8 heads): dense 370-400 ms per attention; blocks of 84-168 rows 200-213 ms.
INFERENCE_BLOCK_BYTES = 16 * 2**20
MIN_BLOCK_ROWS = 8
# The blocks are chosen when tracing on a CPU backend.  A program traced on a CPU host but
# compiled for another target (tools/aot_tpu.py) sets this False to get the one-block form
# the target would trace itself.
CPU_INFERENCE_BLOCKS = True


def dense(features: int, fan_in: int, dtype: Dtype, name: str) -> nn.Dense:
    """nn.Dense with torch.nn.Linear's initialisation."""
    return nn.Dense(features, dtype=dtype, kernel_init=uniform_fan_in(fan_in),
                    bias_init=uniform_fan_in(fan_in), name=name)


def _attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, allowed: Optional[jnp.ndarray],
            dropout_key: Optional[jax.Array], dropout_rate: float, dtype: Dtype) -> jnp.ndarray:
    """softmax(q k^T / sqrt(d), blocked where not allowed) -> dropout -> @ v.

    q (B, Lq, G, d), k and v (B, Lk, G, d), allowed (Lq, Lk) bool or None, dropout_key None for
    no dropout.  Returns (B, Lq, G, d).  Scores and softmax in float32.
    """
    scores = jnp.einsum("bqgd,bkgd->bgqk", q, k,
                        preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = jnp.where(allowed, scores, MASKED_SCORE)  # (B, G, Lq, Lk)
    weights = jax.nn.softmax(scores, axis=-1)
    if dropout_key is not None and dropout_rate > 0.0:  # as flax.linen.Dropout
        keep_prob = 1.0 - dropout_rate
        keep = jax.random.bernoulli(dropout_key, keep_prob, weights.shape)
        weights = jax.lax.select(keep, weights / keep_prob, jnp.zeros_like(weights))
    return jnp.einsum("bgqk,bkgd->bqgd", weights.astype(dtype), v)


def chunk_rows(length: int, max_rows: int = 0) -> int:
    """Query rows per block: the largest divisor of `length` not above `max_rows`
    (0: DEFAULT_CHUNK_ROWS), so every block has the same shape."""
    limit = max_rows or DEFAULT_CHUNK_ROWS
    if limit < 1:
        raise ValueError(f"model.attention_chunk must be >= 0; got {max_rows}")
    return max(d for d in range(1, min(length, limit) + 1) if length % d == 0)


def inference_block_rows(batch: int, num_queries: int, num_keys: int, num_heads: int) -> int:
    """Query rows per block for inference attention on CPU, or 0 for one dense block.

    0 while all scores fit INFERENCE_BLOCK_BYTES; else the largest divisor of `num_queries`
    within the budget, preferring multiples of 8 (vector width; 105-row blocks were 25 % slower
    than 112-row ones), and 0 again when that divisor is below MIN_BLOCK_ROWS.
    """
    row_bytes = batch * num_heads * num_keys * 4
    if num_queries * row_bytes <= INFERENCE_BLOCK_BYTES:
        return 0
    limit = max(1, INFERENCE_BLOCK_BYTES // row_bytes)
    divisors = [r for r in range(1, min(num_queries, limit) + 1) if num_queries % r == 0]
    aligned = [r for r in divisors if r % 8 == 0]
    rows = max(aligned or divisors)
    # A length with no divisor of at least 8 rows in budget (e.g. a prime) stays one block:
    # thousands of tiny blocks cost more than the cache saves.
    return rows if MIN_BLOCK_ROWS <= rows < num_queries else 0


def _scan_row_blocks(block, q: jnp.ndarray, allowed: Optional[jnp.ndarray],
                     rows: int) -> jnp.ndarray:
    """`block(q_rows, allowed_rows, index)` over consecutive blocks of `rows` query rows, in a
    scan.  q (B, Lq, G, d), allowed (Lq, Lk) or None -> (B, Lq, G, d)."""
    b, length, g, d = q.shape
    blocks = length // rows
    q_blocks = q.reshape(b, blocks, rows, g, d).swapaxes(0, 1)  # (n, B, rows, G, d)
    allowed_blocks = None if allowed is None else allowed.reshape(blocks, rows, -1)

    def body(_, inputs):
        q_rows, allowed_rows, index = inputs
        return None, block(q_rows, allowed_rows, index)

    _, out = jax.lax.scan(body, None, (q_blocks, allowed_blocks, jnp.arange(blocks)))
    return out.swapaxes(0, 1).reshape(b, length, g, d)


def chunked_attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray,
                   allowed: Optional[jnp.ndarray], dropout_key: Optional[jax.Array],
                   dropout_rate: float, dtype: Dtype, max_rows: int = 0) -> jnp.ndarray:
    """`_attend` over blocks of query rows, each rematerialised in the backward pass.

    Block i uses dropout key `fold_in(dropout_key, i)`.  Same shapes as `_attend`.
    """
    b, length, g, d = q.shape
    rows = chunk_rows(length, max_rows)
    blocks = length // rows

    def block(q_rows, allowed_rows, index):
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
        return _attend(q_rows, k, v, allowed_rows, key, dropout_rate, dtype)

    block = jax.checkpoint(block, prevent_cse=False)
    if blocks == 1:
        return block(q, allowed, 0)
    return _scan_row_blocks(block, q, allowed, rows)


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
      attention: 'dense' or 'chunked' (see ATTENTION_IMPLEMENTATIONS).
      attention_chunk: at most this many query rows per block of 'chunked' (0: 256); blocks
        are the largest divisor of the query length up to it.
    """

    num_heads: int
    dropout_rate: float = 0.1
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    attention: str = "dense"
    attention_chunk: int = 0

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
        rows = self._inference_rows(q, k) if self.attention == "dense" else 0
        if self.attention == "chunked":
            dropout = not self.deterministic and self.dropout_rate > 0.0
            key = self.make_rng("dropout") if dropout else None
            attended = chunked_attend(q, k, v, allowed, key, self.dropout_rate, self.dtype,
                                      self.attention_chunk)
        elif rows:
            attended = _scan_row_blocks(
                lambda q_rows, allowed_rows, _: _attend(q_rows, k, v, allowed_rows, None, 0.0,
                                                        self.dtype), q, allowed, rows)
        elif self.attention == "dense":
            scores = jnp.einsum("bqgd,bkgd->bgqk", q, k,
                                preferred_element_type=jnp.float32) / math.sqrt(head_dim)
            if allowed is not None:
                scores = jnp.where(allowed, scores, MASKED_SCORE)  # (B, G, Lq, Lk)
            weights = jax.nn.softmax(scores, axis=-1)
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=self.deterministic)
            attended = jnp.einsum("bgqk,bkgd->bqgd", weights.astype(self.dtype), v)
        else:
            raise ValueError(f"model.attention must be one of {ATTENTION_IMPLEMENTATIONS}; "
                             f"got {self.attention!r}")
        attended = attended.reshape(*attended.shape[:2], width)  # (B, Lq, c)
        return dense(width, width, self.dtype, "out_proj")(attended)

    def _inference_rows(self, q: jnp.ndarray, k: jnp.ndarray) -> int:
        """Row blocks for 'dense' without dropout on CPU (0: one dense block); training and
        accelerators keep the one-block form (its dropout masks; cuBLAS/TPU prefer it)."""
        if (not (self.deterministic or self.dropout_rate == 0.0) or not CPU_INFERENCE_BLOCKS
                or jax.default_backend() != "cpu"):
            return 0
        return inference_block_rows(q.shape[0], q.shape[1], k.shape[1], self.num_heads)


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
      attention, attention_chunk: as MultiHeadAttention.
    """

    num_heads: int
    ff_dim: int = 512
    dropout_rate: float = 0.1
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    attention: str = "dense"
    attention_chunk: int = 0

    @nn.compact
    def __call__(self, x: jnp.ndarray, allowed: Optional[jnp.ndarray]) -> jnp.ndarray:
        """x (B, L, c), allowed (L, L) bool or None -> (B, L, c)."""
        drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
        attended = MultiHeadAttention(self.num_heads, self.dropout_rate, self.deterministic,
                                      self.dtype, self.attention, self.attention_chunk,
                                      name="self_attn")(x, x, allowed)
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
    attention: str = "dense"
    attention_chunk: int = 0

    @nn.compact
    def __call__(self, x: jnp.ndarray, memory: jnp.ndarray) -> jnp.ndarray:
        """x (B, Lq, c) queries, memory (B, Lk, c) encoder tokens -> (B, Lq, c)."""
        drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
        attention = lambda name: MultiHeadAttention(
            self.num_heads, self.dropout_rate, self.deterministic, self.dtype, self.attention,
            self.attention_chunk, name=name)
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
      attention, attention_chunk: as MultiHeadAttention.
    """

    layer_type: type
    num_layers: int
    num_heads: int
    ff_dim: int = 512
    dropout_rate: float = 0.1
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    remat: bool = False
    attention: str = "dense"
    attention_chunk: int = 0

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: Optional[jnp.ndarray]) -> jnp.ndarray:
        """x (B, L, c); context is the attention mask (encoder) or the memory (decoder)."""
        layer_cls = nn.remat(self.layer_type) if self.remat else self.layer_type
        for index in range(self.num_layers):
            x = layer_cls(self.num_heads, self.ff_dim, self.dropout_rate, self.deterministic,
                          self.dtype, self.attention, self.attention_chunk,
                          name=f"layers_{index}")(x, context)
        return x
