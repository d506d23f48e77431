"""OCLR in Flax: flow sequence -> amodal logits per object layer + a depth order of the layers.

Behaviour equals the official PyTorch `OCLR` (Jyxarthur/OCLR_model, models/oclr.py) in NHWC
layout; the parameter tree mirrors the official module tree so the port is a mechanical table
(`oclr_jax/port/convert.py`).  See DESIGN.md §1-2.

Symbols: B batch, T frames, H/W input size, h/w = H/16, W/16 bottleneck grid, c = 16 f
transformer width, K queries (object layers), G heads.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from oclr_jax.config.model import ModelConfig
from oclr_jax.modules.transformer import DecoderLayer, EncoderLayer, TransformerStack, dense
from oclr_jax.modules.unet import UNetDecoder, UNetEncoder

Dtype = Any
SIZE_MULTIPLE = 16  # four 2x2 poolings in the U-Net encoder.


def linspace_grid(sizes: Sequence[int]) -> np.ndarray:
    """Coordinates `linspace(-1, 1, n)` per axis on a meshgrid: (*sizes, len(sizes)) float32.

    Built in float64 with numpy and cast, exactly as the official `build_spacetime_grid`, so
    both frameworks see bit-identical embeddings inputs.
    """
    axes = [np.linspace(-1.0, 1.0, num=n) for n in sizes]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)


def other_frames_allowed(num_frames: int, tokens_per_frame: int) -> jnp.ndarray:
    """(L, L) bool with L = T*h*w: True where query and key tokens lie in DIFFERENT frames.

    The official encoder blocks attention within a frame (its mask is 1 where frames are equal).
    """
    frame_of_token = jnp.repeat(jnp.arange(num_frames), tokens_per_frame)
    return frame_of_token[:, None] != frame_of_token[None, :]


class SpaceTimeEmbed(nn.Module):
    """Adds Linear(3 -> c) of the (t, y, x) grid to the bottleneck features.  Param: proj."""

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
        """(B, T, h, w, c) -> (B, T, h, w, c)."""
        _, t, h, w, c = features.shape
        grid = jnp.asarray(linspace_grid((t, h, w)))  # (T, h, w, 3)
        embedding = dense(c, 3, features.dtype, "proj")(grid.astype(features.dtype))
        return features + embedding


class TimeEmbed(nn.Module):
    """Adds Linear(1 -> c) of `linspace(-1, 1, T)` to per-frame query tokens.  Param: proj."""

    @nn.compact
    def __call__(self, queries: jnp.ndarray) -> jnp.ndarray:
        """(B, K, T, c) -> (B, K, T, c)."""
        t, c = queries.shape[-2:]
        grid = jnp.asarray(linspace_grid((t,)))  # (T, 1)
        return queries + dense(c, 1, queries.dtype, "proj")(grid.astype(queries.dtype))


class SpaceTimeTransformerEncoder(nn.Module):
    """Space-time embedding + transformer encoder on the T*h*w bottleneck tokens.

    Attributes:
      num_layers, num_heads, ff_dim, dropout_rate: transformer sizes.
      same_frame_mask: a token attends only to tokens of other frames (official default).
      deterministic: disables dropout.
      dtype: compute dtype.
      remat: rematerialise each layer.
      attention, attention_chunk: attention implementation (modules/transformer.py).
    """

    num_layers: int = 3
    num_heads: int = 8
    ff_dim: int = 512
    dropout_rate: float = 0.1
    same_frame_mask: bool = True
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    remat: bool = False
    attention: str = "dense"
    attention_chunk: int = 0

    @nn.compact
    def __call__(self, bottleneck: jnp.ndarray) -> jnp.ndarray:
        """(B, T, h, w, c) -> (B, T, h, w, c)."""
        b, t, h, w, c = bottleneck.shape
        tokens = SpaceTimeEmbed(name="encoder_positime")(bottleneck).reshape(b, t * h * w, c)
        allowed = other_frames_allowed(t, h * w) if self.same_frame_mask else None
        tokens = TransformerStack(EncoderLayer, self.num_layers, self.num_heads, self.ff_dim,
                                  self.dropout_rate, self.deterministic, self.dtype, self.remat,
                                  self.attention, self.attention_chunk,
                                  name="transformer_encoder")(tokens, allowed)
        return tokens.reshape(b, t, h, w, c)


class QueryTransformerDecoder(nn.Module):
    """K learned object queries, broadcast over T plus a temporal embedding, decoded against the
    encoder tokens.  Output tokens are query-major: index k*T + t.

    Attributes: num_queries (K) and the transformer sizes as in the encoder.
    """

    num_queries: int = 3
    num_layers: int = 3
    num_heads: int = 8
    ff_dim: int = 512
    dropout_rate: float = 0.1
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    remat: bool = False
    attention: str = "dense"
    attention_chunk: int = 0

    @nn.compact
    def __call__(self, encoded: jnp.ndarray) -> jnp.ndarray:
        """(B, T, h, w, c) -> (B, K*T, c)."""
        b, t, h, w, c = encoded.shape
        embedding = nn.Embed(self.num_queries, c, embedding_init=nn.initializers.normal(1.0),
                             name="motion_embed")(jnp.arange(self.num_queries))  # (K, c)
        queries = jnp.broadcast_to(embedding.astype(self.dtype)[None, :, None, :],
                                   (b, self.num_queries, t, c))  # (B, K, T, c)
        queries = TimeEmbed(name="encoder_time")(queries).reshape(b, self.num_queries * t, c)
        memory = encoded.reshape(b, t * h * w, c)
        return TransformerStack(DecoderLayer, self.num_layers, self.num_heads, self.ff_dim,
                                self.dropout_rate, self.deterministic, self.dtype, self.remat,
                                self.attention, self.attention_chunk,
                                name="transformer_decoder")(queries, memory)


class AttentionMapHead(nn.Module):
    """Per-group raw dot products of decoded queries with encoder tokens -> Linear(K*G, c)+ReLU.

    Not a softmax attention: the official "heatmap" splits the c channels into G groups and
    takes unscaled dot products per group, giving K*G maps (channel k*G + g) per pixel.

    Attributes:
      num_heads: G.
      num_queries: K.
    """

    num_heads: int = 8
    num_queries: int = 3

    @nn.compact
    def __call__(self, decoded: jnp.ndarray, encoded: jnp.ndarray) -> jnp.ndarray:
        """decoded (B, K*T, c), encoded (B, T, h, w, c) -> (B, T, h, w, c)."""
        b, t, h, w, c = encoded.shape
        groups, group_dim = self.num_heads, c // self.num_heads
        decoded = decoded.reshape(b, self.num_queries, t, groups, group_dim)
        encoded = encoded.reshape(b, t, h, w, groups, group_dim)
        maps = jnp.einsum("bktgd,bthwgd->bthwkg", decoded, encoded)
        maps = maps.reshape(b, t, h, w, self.num_queries * groups)  # channel k*G + g
        return nn.relu(dense(c, self.num_queries * groups, maps.dtype, "mlp_0")(maps))


class OrderingHead(nn.Module):
    """Max over T of each query's tokens -> Linear(c, c) -> ReLU -> Linear(c, 1)."""

    num_queries: int = 3

    @nn.compact
    def __call__(self, decoded: jnp.ndarray) -> jnp.ndarray:
        """(B, K*T, c) -> (B, K)."""
        b, _, c = decoded.shape
        pooled = jnp.max(decoded.reshape(b, self.num_queries, -1, c), axis=2)  # (B, K, c)
        hidden = nn.relu(dense(c, c, decoded.dtype, "mlp_0")(pooled))
        return dense(1, c, decoded.dtype, "mlp_2")(hidden)[..., 0]


class OCLR(nn.Module):
    """The OCLR network.

    Attributes:
      num_queries: K object layers (official 3).
      unet_features: f; the transformer width is c = 16 f (official 32 -> 512).
      num_layers: transformer encoder and decoder layers each (official 3).
      num_heads: G attention heads, also the groups of the attention-map head (official 8).
      ff_dim: feed-forward hidden width (official 512).
      dropout_rate: transformer dropout (official 0.1), active only with train=True.
      same_frame_mask: encoder tokens attend only to other frames (official True).
      in_channels: expected input channels (2 per flow gap); checked when set.
      dtype: compute dtype; params are float32 and outputs are cast to float32.
      remat: rematerialise U-Net blocks and transformer layers to save activation memory.
      attention: 'dense' (scores materialised) or 'chunked' (blocks of query rows recomputed in
        the backward pass; same outputs, less memory); see modules/transformer.py.
      attention_chunk: at most this many query rows per block of 'chunked' (0: 256).
    """

    num_queries: int = 3
    unet_features: int = 32
    num_layers: int = 3
    num_heads: int = 8
    ff_dim: int = 512
    dropout_rate: float = 0.1
    same_frame_mask: bool = True
    in_channels: Optional[int] = None
    dtype: Dtype = jnp.float32
    remat: bool = False
    attention: str = "dense"
    attention_chunk: int = 0

    @nn.compact
    def __call__(self, flow: jnp.ndarray, *, train: bool = False) -> dict:
        """flow (B, T, H, W, C) -> {'amodal_logits': (B, T, H, W, K), 'order_logits': (B, K)}."""
        check_input_shape(flow.shape, self.in_channels)
        b, t, height, width, channels = flow.shape
        deterministic = not train
        transformer = dict(num_layers=self.num_layers, num_heads=self.num_heads,
                           ff_dim=self.ff_dim, dropout_rate=self.dropout_rate,
                           deterministic=deterministic, dtype=self.dtype, remat=self.remat,
                           attention=self.attention, attention_chunk=self.attention_chunk)

        frames = flow.astype(self.dtype).reshape(b * t, height, width, channels)
        skips, bottleneck = UNetEncoder(self.unet_features, self.dtype, self.remat,
                                        name="encoder")(frames)
        bottleneck = bottleneck.reshape(b, t, *bottleneck.shape[1:])  # (B, T, h, w, c)
        encoded = SpaceTimeTransformerEncoder(same_frame_mask=self.same_frame_mask, **transformer,
                                              name="transformer_enc")(bottleneck)
        decoded = QueryTransformerDecoder(self.num_queries, **transformer,
                                          name="transformer_dec")(encoded)  # (B, K*T, c)
        maps = AttentionMapHead(self.num_heads, self.num_queries, name="heatmap")(decoded, encoded)
        maps = maps.reshape(b * t, *maps.shape[2:])  # (B*T, h, w, c)
        amodal_logits = UNetDecoder(self.num_queries, self.unet_features, self.dtype, self.remat,
                                    name="decoder_am")(skips, maps)
        order_logits = OrderingHead(self.num_queries, name="classhead")(decoded)
        return {
            "amodal_logits": amodal_logits.reshape(b, t, height, width, -1).astype(jnp.float32),
            "order_logits": order_logits.astype(jnp.float32),
        }


def check_input_shape(shape: Sequence[int], in_channels: Optional[int] = None) -> None:
    """Raises ValueError unless shape is (B, T>=1, H, W, C) with H, W multiples of 16."""
    if len(shape) != 5:
        raise ValueError(f"OCLR expects flow of shape (B, T, H, W, C); got {tuple(shape)}")
    _, t, height, width, channels = shape
    if t < 1:
        raise ValueError(f"OCLR needs at least one frame; got T={t}")
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height == 0 or width == 0:
        raise ValueError(f"OCLR needs H and W to be positive multiples of {SIZE_MULTIPLE} "
                         f"(four 2x2 poolings); got H={height}, W={width}")
    if in_channels is not None and channels != in_channels:
        raise ValueError(f"OCLR was built for {in_channels} input channels (2 per flow gap); "
                         f"got {channels}")


def build_model(model_config: ModelConfig) -> OCLR:
    """The network a `ModelConfig` describes."""
    c = model_config
    return OCLR(num_queries=c.num_queries, unet_features=c.unet_features,
                num_layers=c.num_layers, num_heads=c.num_heads, ff_dim=c.ff_dim,
                dropout_rate=c.dropout_rate, same_frame_mask=c.same_frame_mask,
                in_channels=c.in_channels, dtype=jnp.dtype(c.dtype), remat=c.remat,
                attention=c.attention, attention_chunk=c.attention_chunk)


def model_from_config(model_config, in_channels: int) -> OCLR:
    """Builds OCLR from a `config.model` ConfigDict and the input channels (2 per flow gap)."""
    return build_model(ModelConfig.from_sections(model_config, in_channels))


def dummy_flow(in_channels: int) -> jnp.ndarray:
    """The smallest valid input, (1, 1, 16, 16, C): params depend on C only, not B, T, H, W."""
    return jnp.zeros((1, 1, SIZE_MULTIPLE, SIZE_MULTIPLE, in_channels), jnp.float32)


def new_params(model: OCLR, rng: jax.Array) -> dict:
    """Fresh params (un-jitted: call it inside a jit or `jax.eval_shape`).

    The initialisers draw from an `rbg` key derived deterministically from `rng`: XLA on CPU
    compiles ~130 threefry samplers of this model in minutes, the `rbg` ones in seconds (same
    values for the same `rng`, on every backend).
    """
    if model.in_channels is None:
        raise ValueError("new_params needs a model built with in_channels")
    return model.init({"params": init_key(rng)}, dummy_flow(model.in_channels),
                      train=False)["params"]


def abstract_params(model: OCLR) -> dict:
    """The params tree's shapes and dtypes, without allocating or compiling."""
    return jax.eval_shape(lambda key: new_params(model, key), jax.random.PRNGKey(0))


def init_params(model: OCLR, rng: jax.Array, flow_shape: Optional[Sequence[int]] = None) -> dict:
    """Fresh params, jitted (see `new_params`); `flow_shape` (B, T, H, W, C) gives the input
    channels of a model built without them (only C matters)."""
    if model.in_channels is None:
        model = model.clone(in_channels=int(flow_shape[-1]))
    return jax.jit(lambda key: new_params(model, key))(rng)


def init_key(rng: jax.Array) -> jax.Array:
    """A typed `rbg` PRNG key determined by a (raw or typed) threefry key."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    data = jnp.asarray(rng, jnp.uint32).reshape(-1)
    return jax.random.wrap_key_data(jnp.concatenate([data, data[::-1]])[:4], impl="rbg")
