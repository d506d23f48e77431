"""PyTorch <-> Flax parameter conversion for OCLR (docs/port.md).  Pure numpy.

One table (`conversion_table`) lists, for a given model size, every official PyTorch
state-dict name with its shape, the Flax parameter path it maps to, and the layout change:

  conv            Conv2d `(O, I, kh, kw)`          <-> `(kh, kw, I, O)`   transpose(2, 3, 1, 0)
  conv_transpose  ConvTranspose2d `(I, O, 2, 2)`   <-> `(2, 2, I, O)`     transpose(2, 3, 0, 1),
                  no spatial flip: our up-convolution computes
                  out[2y+dy, 2x+dx, o] = sum_i x[y, x, i] * kernel[dy, dx, i, o] + bias[o]
  dense           Linear `(out, in)`, packed `in_proj_weight (3c, c)`  <-> `.T`
  copy            biases, Norm weight -> scale, Embedding weight -> embedding

The model size is read off the tensors (`infer_torch_shape` / `infer_flax_shape`); the number of
heads is only visible through the attention-map head, whose input width is K*G.  Every
conversion validates the whole input against the table and raises `PortError` listing missing
keys, unexpected keys, shape mismatches (name, expected, found), non-float or non-finite
tensors, so a wrong checkpoint fails before anything is written.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping

import numpy as np

from oclr_jax.config.model import ModelConfig
from oclr_jax.errors import UserError


class PortError(UserError, ValueError):
    """A checkpoint does not match the OCLR parameter layout.  Lists every problem found."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=(), invalid=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)  # (name, expected shape, found shape)
        self.invalid = list(invalid)  # (name, reason)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One parameter: official torch name and shape, Flax path, layout change."""

    torch_name: str
    flax_path: tuple
    kind: str  # conv | conv_transpose | dense | copy
    torch_shape: tuple

    @property
    def flax_name(self) -> str:
        return "/".join(self.flax_path)

    @property
    def flax_shape(self) -> tuple:
        return _flax_shape(self.kind, self.torch_shape)


# Axis permutation taking the torch layout to the Flax one (None: as is).
_TO_FLAX_AXES = {"conv": (2, 3, 1, 0), "conv_transpose": (2, 3, 0, 1), "dense": (1, 0), "copy": None}


def to_flax_layout(kind: str, value: np.ndarray) -> np.ndarray:
    axes = _TO_FLAX_AXES[kind]
    return value if axes is None else value.transpose(axes)


def to_torch_layout(kind: str, value: np.ndarray) -> np.ndarray:
    axes = _TO_FLAX_AXES[kind]
    return value if axes is None else value.transpose(np.argsort(axes))


def _flax_shape(kind: str, torch_shape: tuple) -> tuple:
    axes = _TO_FLAX_AXES[kind]
    return tuple(torch_shape) if axes is None else tuple(torch_shape[a] for a in axes)


def _conv_block(torch_prefix, flax_prefix, short, in_width, width):
    """Rules of one ConvBlock: two bias-free 3x3 convolutions."""
    return [Rule(f"{torch_prefix}.conv_block.{short}conv{i}.weight", flax_prefix + (f"conv{i}", "kernel"),
                 "conv", (width, w_in, 3, 3)) for i, w_in in ((1, in_width), (2, width))]


def _linear(torch_prefix, flax_prefix, in_width, out_width):
    return [Rule(f"{torch_prefix}.weight", flax_prefix + ("kernel",), "dense", (out_width, in_width)),
            Rule(f"{torch_prefix}.bias", flax_prefix + ("bias",), "copy", (out_width,))]


def _norm(torch_prefix, flax_prefix, width):
    return [Rule(f"{torch_prefix}.weight", flax_prefix + ("scale",), "copy", (width,)),
            Rule(f"{torch_prefix}.bias", flax_prefix + ("bias",), "copy", (width,))]


def _attention(torch_prefix, flax_prefix, width):
    return [Rule(f"{torch_prefix}.in_proj_weight", flax_prefix + ("in_proj_kernel",), "dense", (3 * width, width)),
            Rule(f"{torch_prefix}.in_proj_bias", flax_prefix + ("in_proj_bias",), "copy", (3 * width,)),
            *_linear(f"{torch_prefix}.out_proj", flax_prefix + ("out_proj",), width, width)]


def _transformer_layer(torch_prefix, flax_prefix, width, ff_dim, decoder):
    """Rules of one layer in the official state-dict order."""
    norms = ("norm1", "norm2", "norm3") if decoder else ("norm1", "norm2")
    attentions = ("self_attn", "multihead_attn") if decoder else ("self_attn",)
    rules = [r for n in norms for r in _norm(f"{torch_prefix}.{n}", flax_prefix + (n,), width)]
    rules += [r for a in attentions for r in _attention(f"{torch_prefix}.{a}", flax_prefix + (a,), width)]
    rules += _linear(f"{torch_prefix}.linear1", flax_prefix + ("linear1",), width, ff_dim)
    rules += _linear(f"{torch_prefix}.linear2", flax_prefix + ("linear2",), ff_dim, width)
    return rules


def conversion_table(shape: ModelConfig) -> list:
    """Every parameter of OCLR at `shape`, in the official state-dict order."""
    f, c, k = shape.unet_features, shape.width, shape.num_queries
    rules = []
    widths = [shape.in_channels, f, 2 * f, 4 * f, 8 * f]
    for level in range(1, 5):
        rules += _conv_block(f"encoder.encoder{level}", ("encoder", f"encoder{level}"), f"enc{level}",
                             widths[level - 1], widths[level])
    rules += _conv_block("encoder.bottleneck", ("encoder", "bottleneck"), "bottleneck", 8 * f, c)

    rules += _linear("transformer_enc.encoder_positime.proj", ("transformer_enc", "encoder_positime", "proj"), 3, c)
    for i in range(shape.num_layers):
        rules += _transformer_layer(f"transformer_enc.transformer_encoder.layers.{i}",
                                    ("transformer_enc", "transformer_encoder", f"layers_{i}"),
                                    c, shape.ff_dim, decoder=False)
    for i in range(shape.num_layers):
        rules += _transformer_layer(f"transformer_dec.transformer_decoder.layers.{i}",
                                    ("transformer_dec", "transformer_decoder", f"layers_{i}"),
                                    c, shape.ff_dim, decoder=True)
    rules += _linear("transformer_dec.encoder_time.proj", ("transformer_dec", "encoder_time", "proj"), 1, c)
    rules.append(Rule("transformer_dec.motion_embed.weight", ("transformer_dec", "motion_embed", "embedding"),
                      "copy", (k, c)))

    rules += _linear("heatmap.mlp.0", ("heatmap", "mlp_0"), k * shape.num_heads, c)
    rules += _linear("classhead.mlp.0", ("classhead", "mlp_0"), c, c)
    rules += _linear("classhead.mlp.2", ("classhead", "mlp_2"), c, 1)

    for level in (4, 3, 2, 1):
        width = f * 2 ** (level - 1)
        rules += [Rule(f"decoder_am.upconv{level}.weight", ("decoder_am", f"upconv{level}", "kernel"),
                       "conv_transpose", (2 * width, width, 2, 2)),
                  Rule(f"decoder_am.upconv{level}.bias", ("decoder_am", f"upconv{level}", "bias"),
                       "copy", (width,))]
        rules += _conv_block(f"decoder_am.decoder{level}", ("decoder_am", f"decoder{level}"), f"dec{level}",
                             2 * width, width)
    rules += [Rule("decoder_am.conv.weight", ("decoder_am", "conv", "kernel"), "conv", (k, f, 1, 1)),
              Rule("decoder_am.conv.bias", ("decoder_am", "conv", "bias"), "copy", (k,))]
    return rules


# Where each size can be read off (first present source wins): (name, axis).
_TORCH_SOURCES = {
    "in_channels": [("encoder.encoder1.conv_block.enc1conv1.weight", 1)],
    "unet_features": [("encoder.encoder1.conv_block.enc1conv1.weight", 0),
                      ("encoder.encoder1.conv_block.enc1conv2.weight", 0), ("decoder_am.conv.weight", 1)],
    "num_queries": [("transformer_dec.motion_embed.weight", 0), ("decoder_am.conv.weight", 0)],
    "heatmap_in": [("heatmap.mlp.0.weight", 1)],
    "ff_dim": [("transformer_enc.transformer_encoder.layers.0.linear1.weight", 0),
               ("transformer_dec.transformer_decoder.layers.0.linear1.weight", 0)],
}
_FLAX_SOURCES = {
    "in_channels": [("encoder/encoder1/conv1/kernel", 2)],
    "unet_features": [("encoder/encoder1/conv1/kernel", 3), ("encoder/encoder1/conv2/kernel", 3),
                      ("decoder_am/conv/kernel", 2)],
    "num_queries": [("transformer_dec/motion_embed/embedding", 0), ("decoder_am/conv/kernel", 3)],
    "heatmap_in": [("heatmap/mlp_0/kernel", 0)],
    "ff_dim": [("transformer_enc/transformer_encoder/layers_0/linear1/kernel", 1),
               ("transformer_dec/transformer_decoder/layers_0/linear1/kernel", 1)],
}
_TORCH_LAYER = [re.compile(r"transformer_(enc|dec)\.transformer_(encoder|decoder)\.layers\.(\d+)\.")]
_FLAX_LAYER = [re.compile(r"transformer_(enc|dec)/transformer_(encoder|decoder)/layers_(\d+)/")]


def _infer(shapes: Mapping[str, tuple], sources: dict, layer_patterns) -> ModelConfig:
    """Reads the sizes off the tensor shapes; a size whose sources are all absent keeps its
    default (validation then reports the missing tensors)."""
    default = ModelConfig()
    found = {}
    for field, candidates in sources.items():
        for name, axis in candidates:
            if name in shapes and len(shapes[name]) > axis:
                found[field] = int(shapes[name][axis])
                break
    layer_indices = {}
    for name in shapes:
        for pattern in layer_patterns:
            match = pattern.match(name)
            if match:
                layer_indices.setdefault(match.group(1), set()).add(int(match.group(3)))
    counts = [max(indices) + 1 for indices in layer_indices.values()]
    num_layers = max(counts) if counts else default.num_layers
    num_queries = found.get("num_queries", default.num_queries)
    num_heads = default.num_heads
    if "heatmap_in" in found:
        heatmap_in = found["heatmap_in"]
        if num_queries <= 0 or heatmap_in % num_queries:
            raise PortError(f"cannot infer the number of heads: the attention-map head takes "
                            f"{heatmap_in} inputs, not a multiple of num_queries={num_queries} (K*G)")
        num_heads = heatmap_in // num_queries
    unet_features = found.get("unet_features", default.unet_features)
    if num_heads <= 0 or (16 * unet_features) % num_heads:
        raise PortError(f"inferred num_heads={num_heads} does not divide the transformer width "
                        f"{16 * unet_features} (16 x unet_features={unet_features})")
    return ModelConfig(in_channels=found.get("in_channels", default.in_channels),
                      unet_features=unet_features, num_queries=num_queries,
                      num_layers=num_layers, num_heads=num_heads,
                      ff_dim=found.get("ff_dim", default.ff_dim))


def _array_shapes(arrays: Mapping[str, Any]) -> dict:
    return {name: tuple(np.shape(value)) for name, value in arrays.items()}


def infer_torch_shape(state_dict: Mapping[str, Any]) -> ModelConfig:
    """Model sizes of an official-layout state dict (numpy arrays or anything with a shape)."""
    return _infer(_array_shapes(state_dict), _TORCH_SOURCES, _TORCH_LAYER)


def flatten_params(params: Mapping[str, Any]) -> dict:
    """Nested Flax params (optionally wrapped in {'params': ...}) -> {'a/b/kernel': array}."""
    if set(params.keys()) == {"params"} and isinstance(params["params"], Mapping):
        params = params["params"]
    flat = {}

    def visit(node, prefix):
        for key, value in node.items():
            path = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                visit(value, path)
            else:
                flat[path] = value

    visit(params, "")
    return flat


def unflatten_params(flat: Mapping[str, Any]) -> dict:
    """{'a/b/kernel': array} -> nested dicts."""
    tree = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def infer_flax_shape(params: Mapping[str, Any]) -> ModelConfig:
    """Model sizes of a Flax OCLR params tree."""
    return _infer(_array_shapes(flatten_params(params)), _FLAX_SOURCES, _FLAX_LAYER)


def _format_problems(what, missing, unexpected, mismatched, invalid, limit=40) -> str:
    lines = [f"{what} does not match the OCLR parameter layout:"]

    def section(title, items, fmt):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {fmt(item)}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")

    section("missing keys", missing, str)
    section("unexpected keys", unexpected, str)
    section("shape mismatches (name: expected -> found)", mismatched,
            lambda m: f"{m[0]}: expected {m[1]}, found {m[2]}")
    section("invalid tensors", invalid, lambda m: f"{m[0]}: {m[1]}")
    return "\n".join(lines)


def check_arrays(arrays: Mapping[str, Any], expected: Mapping[str, tuple], what: str,
                 hint: str = "") -> None:
    """Raises PortError unless `arrays` has exactly the names and shapes of `expected` and every
    tensor is a finite floating-point array."""
    missing = [name for name in expected if name not in arrays]
    unexpected = sorted(name for name in arrays if name not in expected)
    mismatched, invalid = [], []
    for name, shape in expected.items():
        if name not in arrays:
            continue
        value = arrays[name]
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            invalid.append((name, f"not an array but {type(value).__name__}"))
            continue
        if tuple(value.shape) != tuple(shape):
            mismatched.append((name, tuple(shape), tuple(value.shape)))
        if not _is_float_dtype(value.dtype):
            invalid.append((name, f"dtype {value.dtype}, expected a floating-point type"))
            continue
        finite = np.isfinite(np.asarray(value, dtype=np.float32))
        if not finite.all():
            invalid.append((name, f"{finite.size - int(finite.sum())} NaN/inf values"))
    if missing or unexpected or mismatched or invalid:
        message = _format_problems(what, missing, unexpected, mismatched, invalid)
        if len(missing) == len(expected):
            message = (f"{what} holds none of the {len(expected)} OCLR parameter names; it is not an "
                       f"OCLR checkpoint.\n" + message)
        raise PortError(message + (f"\n  ({hint})" if hint else ""), missing, unexpected, mismatched, invalid)


def _is_float_dtype(dtype) -> bool:
    # ml_dtypes' bfloat16 (jax) is not a subclass of np.floating; its name says what it is.
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def _as_float32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _owned(value: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable copy (inputs such as jax arrays come back read-only)."""
    return np.array(value, dtype=np.float32, order="C", copy=True)


def target_param_shapes(shape: ModelConfig) -> dict:
    """{'a/b/kernel': shape} of an `init`-ed (abstractly: `jax.eval_shape`) Flax OCLR."""
    from oclr_jax.model import abstract_params, build_model  # jax: the table needs numpy only

    params = abstract_params(build_model(shape))
    return {name: tuple(leaf.shape) for name, leaf in flatten_params(params).items()}


def torch_state_dict_to_flax(state_dict: Mapping[str, Any], check_target: bool = True):
    """Official-layout state dict {name: array} -> (Flax params, inferred `ModelConfig`).

    The sizes are inferred from the tensors, the whole dict is validated against the table
    (PortError lists every problem), and with `check_target` the result is compared with the
    params tree of an abstractly initialised `oclr_jax.model.OCLR`.  Params are nested dicts of
    float32 numpy arrays; the `ModelConfig` holds the inferred sizes (its other fields are the
    official defaults) and `oclr_jax.model.build_model` builds the matching network.
    """
    shape = infer_torch_shape(state_dict)
    table = conversion_table(shape)
    check_arrays(state_dict, {r.torch_name: r.torch_shape for r in table}, "PyTorch state dict",
                 hint=f"sizes inferred from the tensors: {shape.describe()}")
    flat = {r.flax_name: _owned(to_flax_layout(r.kind, _as_float32(state_dict[r.torch_name])))
            for r in table}
    if check_target:
        check_arrays(flat, target_param_shapes(shape), "converted Flax params",
                     hint="the conversion table disagrees with oclr_jax.model.OCLR; this is a bug in the port")
    return unflatten_params(flat), shape


def flax_to_torch_state_dict(params: Mapping[str, Any]) -> dict:
    """Flax OCLR params (nested, optionally under 'params') -> official state dict of float32
    numpy arrays, in the official key order.  Validates the tree first (PortError)."""
    flat = flatten_params(params)
    shape = infer_flax_shape(flat)
    table = conversion_table(shape)
    check_arrays(flat, {r.flax_name: r.flax_shape for r in table}, "Flax params",
                 hint=f"sizes inferred from the tensors: {shape.describe()}")
    return {r.torch_name: _owned(to_torch_layout(r.kind, _as_float32(flat[r.flax_name])))
            for r in table}


def count_parameters(arrays: Iterable) -> int:
    return int(sum(np.size(a) for a in arrays))
