"""DINO's Vision Transformer (ViT-S/8 by default) in Flax.

Parameter-compatible with `VisionTransformer` of facebookresearch/dino (the copy in the official
OCLR `dino/vision_transformer.py`): submodules carry the PyTorch attribute names
(`patch_embed.proj`, `blocks_N.norm1`, `blocks_N.attn.qkv`, `blocks_N.attn.proj`,
`blocks_N.mlp.fc1`, `norm`, ...), so `dino_port.py` is a mechanical table.  Facts it reproduces:

  * pre-norm blocks: x = x + Attn(LN1(x)); x = x + MLP(LN2(x)); LayerNorm eps 1e-6; exact (erf)
    GELU; q|k|v packed in one `qkv` Linear with bias; scores scaled by head_dim ** -0.5.
  * features for propagation = `get_intermediate_layers(x, n=1)`: the last block's output through
    the final `norm`, without the [CLS] token.
  * the positional embedding is learned on a square grid (28x28 for 224/8) and resized to the
    image's patch grid by torch's bicubic interpolation (A = -0.75, align_corners=False) called
    with `scale_factor = (h + 0.1) / 28, (w + 0.1) / 28`; torch then maps output pixel o to source
    (o + 0.5) / scale - 0.5, NOT to (o + 0.5) * 28 / h - 0.5.  `torch_bicubic_matrix` builds that
    map exactly, so 480x832 images (60x104 patches) get the same embedding as in PyTorch.

Shapes: images `(B, H, W, 3)` (normalised RGB, H and W multiples of the patch size), tokens
`(B, 1 + h*w, D)` with the [CLS] token first and patches row-major, `h, w = H/p, W/p`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
BICUBIC_A = -0.75  # torch's cubic convolution coefficient.
POS_EMBED_OFFSET = 0.1  # DINO adds 0.1 to the target grid size "to avoid floating point error".


def _cubic_coefficients(t: float, a: float = BICUBIC_A) -> tuple[float, float, float, float]:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for a fractional position t in [0, 1)."""

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)


def torch_bicubic_matrix(in_size: int, out_size: int, scale_factor: float) -> np.ndarray:
    """`(out_size, in_size)` matrix equal to torch's 1-D bicubic resampling with a scale factor.

    torch (`upsample_bicubic2d`, align_corners=False, scale_factor given): source position
    `(o + 0.5) / scale_factor - 0.5` (not clamped), taps at floor(src) - 1 .. floor(src) + 2 with
    indices clamped to the border.  The 2-D resize is separable: rows then columns.
    """
    matrix = np.zeros((out_size, in_size), np.float64)
    inv_scale = 1.0 / scale_factor
    for o in range(out_size):
        src = (o + 0.5) * inv_scale - 0.5
        base = math.floor(src)
        for tap, weight in enumerate(_cubic_coefficients(src - base)):
            index = min(max(base - 1 + tap, 0), in_size - 1)
            matrix[o, index] += weight
    return matrix


def interpolate_pos_embed(pos_embed: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """Resizes a square-grid positional embedding `(1, 1 + g*g, D)` to `(1, 1 + h*w, D)` as DINO.

    Returned unchanged when the grid already is g x g (DINO: same patch count and a square image).
    """
    num_patches = pos_embed.shape[1] - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"pos_embed has {num_patches} patch positions, not a square grid")
    h, w = grid_hw
    if (h, w) == (grid, grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    rows = torch_bicubic_matrix(grid, h, (h + POS_EMBED_OFFSET) / grid)  # (h, g)
    cols = torch_bicubic_matrix(grid, w, (w + POS_EMBED_OFFSET) / grid)  # (w, g)
    patch_grid = pos_embed[0, 1:].reshape(grid, grid, dim)  # (g, g, D)
    resized = jnp.einsum("yi,xj,ijd->yxd", rows.astype(np.float32), cols.astype(np.float32),
                         patch_grid, precision=jax.lax.Precision.HIGHEST)  # (h, w, D)
    return jnp.concatenate([pos_embed[:, :1], resized.reshape(1, h * w, dim)], axis=1)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D channels (`patch_embed.proj`, a strided conv).

    Attributes:
      patch_size: p.
      embed_dim: D.
      dtype: compute dtype.
    """

    patch_size: int
    embed_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.patch_size
        x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    name="proj")(images)  # (B, h, w, D)
        return x.reshape(x.shape[0], -1, self.embed_dim)  # (B, h*w, D), row-major


class Attention(nn.Module):
    """Multi-head self-attention with DINO's packed `qkv` projection and `proj` output.

    Attributes:
      num_heads: G.
      dtype: compute dtype.
    """

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, dim = x.shape  # (B, L, D)
        head_dim = dim // self.num_heads
        qkv = nn.Dense(3 * dim, dtype=self.dtype, name="qkv")(x)  # (B, L, 3D): q | k | v
        qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim)  # (B, L, 3, G, D/G)
        out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                           scale=head_dim ** -0.5)  # (B, L, G, D/G)
        return nn.Dense(dim, dtype=self.dtype, name="proj")(out.reshape(batch, length, dim))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (torch `nn.GELU()` is the erf form, Flax's default is not).

    Attributes:
      hidden_dim: width of fc1.
      dtype: compute dtype.
    """

    hidden_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        return nn.Dense(dim, dtype=self.dtype, name="fc2")(x)


def _layer_norm(eps: float, dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    # The two-pass variance matches torch's LayerNorm more closely than E[x^2] - E[x]^2.
    return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


class Block(nn.Module):
    """Pre-norm transformer block (DINO `Block`, no dropout or drop-path at test time).

    Attributes:
      num_heads: G.
      mlp_ratio: MLP width / D.
      layer_norm_eps: LayerNorm epsilon (DINO's ViTs use 1e-6).
      dtype: compute dtype.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        y = _layer_norm(self.layer_norm_eps, self.dtype, "norm1")(x)
        x = x + Attention(self.num_heads, self.dtype, name="attn")(y)
        y = _layer_norm(self.layer_norm_eps, self.dtype, "norm2")(x)
        return x + Mlp(int(dim * self.mlp_ratio), self.dtype, name="mlp")(y)


class VisionTransformer(nn.Module):
    """DINO ViT backbone (no classifier head).  Defaults are ViT-S/8.

    Attributes:
      patch_size: p (8 for ViT-S/8).
      embed_dim: D (384).
      depth: number of blocks (12).
      num_heads: G (6).
      mlp_ratio: MLP width / D (4).
      pretrain_grid: side of the square patch grid the positional embedding was learned on
        (224 / 8 = 28 for the released DINO weights).
      layer_norm_eps: 1e-6 as DINO's `vit_small`.
      dtype: compute dtype (parameters stay float32).
    """

    patch_size: int = 8
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    pretrain_grid: int = 28
    layer_norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    def setup(self):
        init = nn.initializers.truncated_normal(0.02)
        self.patch_embed = PatchEmbed(self.patch_size, self.embed_dim, self.dtype)
        self.cls_token = self.param("cls_token", init, (1, 1, self.embed_dim))
        self.pos_embed = self.param("pos_embed", init,
                                    (1, 1 + self.pretrain_grid ** 2, self.embed_dim))
        # A list in setup is named blocks_0 ... blocks_{depth-1}, DINO's blocks.N.
        self.blocks = [Block(self.num_heads, self.mlp_ratio, self.layer_norm_eps, self.dtype)
                       for _ in range(self.depth)]
        self.norm = _layer_norm(self.layer_norm_eps, self.dtype)

    def grid_shape(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid (h, w) of an image size; the size must be a multiple of the patch."""
        height, width = image_hw
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size "
                             f"{self.patch_size}; resize the frames first (preprocess.py)")
        return height // self.patch_size, width // self.patch_size

    def embed(self, images: jax.Array) -> jax.Array:
        """DINO `prepare_tokens`: `(B, H, W, 3)` -> tokens `(B, 1 + h*w, D)`."""
        grid_hw = self.grid_shape(images.shape[1:3])
        patches = self.patch_embed(images)  # (B, h*w, D)
        cls = jnp.broadcast_to(self.cls_token, (images.shape[0], 1, self.embed_dim))
        tokens = jnp.concatenate([cls.astype(patches.dtype), patches], axis=1)  # (B, 1+h*w, D)
        return tokens + interpolate_pos_embed(self.pos_embed, grid_hw).astype(tokens.dtype)

    def run_blocks(self, tokens: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        """Blocks `start .. stop-1` on tokens `(B, L, D)` (so frozen blocks can be cached)."""
        stop = self.depth if stop is None else stop
        for block in self.blocks[start:stop]:
            tokens = block(tokens)
        return tokens

    def patch_features(self, tokens: jax.Array) -> jax.Array:
        """Final `norm` and the [CLS] token dropped: `(B, 1 + h*w, D)` -> `(B, h*w, D)`."""
        return self.norm(tokens)[:, 1:]

    def __call__(self, images: jax.Array) -> jax.Array:
        """DINO `get_intermediate_layers(x, n=1)[0][:, 1:]` as a grid `(B, h, w, D)`."""
        h, w = self.grid_shape(images.shape[1:3])
        features = self.patch_features(self.run_blocks(self.embed(images)))  # (B, h*w, D)
        return features.reshape(images.shape[0], h, w, self.embed_dim)


def vit_from_config(tta_config) -> VisionTransformer:
    """The ViT described by the `config.tta` section (see oclr_jax/config/paper.py)."""
    return VisionTransformer(
        patch_size=tta_config.patch_size, embed_dim=tta_config.embed_dim,
        depth=tta_config.depth, num_heads=tta_config.num_heads,
        mlp_ratio=float(tta_config.mlp_ratio),
        pretrain_grid=tta_config.pretrain_image_size // tta_config.patch_size,
        dtype=jnp.dtype(tta_config.dtype))


def vit_param_shapes(model: VisionTransformer) -> dict:
    """The parameter tree as `jax.ShapeDtypeStruct`s (no computation)."""
    side = model.pretrain_grid * model.patch_size
    return jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32))["params"]


def init_vit_params(model: VisionTransformer, seed: int = 0) -> dict:
    """Random parameters with DINO's initialisation: weights and embeddings ~ N(0, 0.02)
    truncated at 2 std, biases 0, LayerNorm scales 1.

    Built leaf by leaf in numpy from `jax.eval_shape` (no compilation: real use loads the
    pretrained DINO weights, this is for tests and benchmarks).
    """
    rng = np.random.default_rng(seed)

    def init_leaf(path, leaf):
        name = getattr(path[-1], "key", str(path[-1]))
        if name == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(np.clip(rng.normal(0.0, 0.02, leaf.shape), -0.04, 0.04), leaf.dtype)

    return jax.tree_util.tree_map_with_path(init_leaf, vit_param_shapes(model))
