"""RAFT weights both ways: `raft-things.pth` (official PyTorch layout) <-> Flax variables.  Numpy.

One table (`conversion_table`) lists every official state-dict name in the official order with
its shape, the Flax variable path it maps to (collection first: `params` or `batch_stats`) and
the layout change:

  conv      Conv2d `(O, I, kh, kw)` <-> `(kh, kw, I, O)`   transpose(2, 3, 1, 0)
  copy      biases; BatchNorm weight -> scale, bias, running_mean -> mean, running_var -> var
  alias     the official residual block registers its shortcut norm twice (`norm3` and
            `downsample.1`): the second name must hold the same values as the first; export
            writes them to both
  counter   BatchNorm `num_batches_tracked` (int64 scalar; `counter_alias` for the second
            registration): not used by an eval-mode model and not a Flax variable; returned
            beside the variables and written back on export

A state dict saved from `torch.nn.DataParallel` (every key prefixed `module.`) is accepted; the
prefix is removed when the file is read (`oclr_jax.port.torch_io`).  Every conversion validates
the whole input and raises `PortError` listing each missing key, unexpected key, shape
mismatch, alias disagreement and non-finite or wrongly typed tensor, before anything is
returned.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from oclr_jax.port import convert as port_convert
from oclr_jax.port.convert import PortError, flatten_params, unflatten_params

LAYOUT = "RAFT (raft-things.pth)"


class Rule(port_convert.Rule):
    """One tensor as the OCLR port's `Rule` (official name and shape, Flax path, layout), with
    RAFT's kinds: conv | copy | alias (a second registration of a tensor) | counter |
    counter_alias (BatchNorm's num_batches_tracked).  The Flax path starts with the collection."""

    @property
    def flax_shape(self) -> tuple:
        if self.kind == "conv":
            return tuple(self.torch_shape[a] for a in (2, 3, 1, 0))
        return tuple(self.torch_shape)


def _conv(torch_prefix, flax_prefix, out_ch, in_ch, kh, kw):
    return [Rule(f"{torch_prefix}.weight", ("params",) + flax_prefix + ("kernel",), "conv", (out_ch, in_ch, kh, kw)),
            Rule(f"{torch_prefix}.bias", ("params",) + flax_prefix + ("bias",), "copy", (out_ch,))]


def _batch_norm(torch_prefix, flax_prefix, width, kind="copy"):
    """BatchNorm2d tensors in the official order; `kind='alias'` for the second registration."""
    counter = "counter" if kind == "copy" else "counter_alias"
    return [Rule(f"{torch_prefix}.weight", ("params",) + flax_prefix + ("scale",), kind, (width,)),
            Rule(f"{torch_prefix}.bias", ("params",) + flax_prefix + ("bias",), kind, (width,)),
            Rule(f"{torch_prefix}.running_mean", ("batch_stats",) + flax_prefix + ("mean",), kind, (width,)),
            Rule(f"{torch_prefix}.running_var", ("batch_stats",) + flax_prefix + ("var",), kind, (width,)),
            Rule(f"{torch_prefix}.num_batches_tracked", ("counters",) + flax_prefix, counter, ())]


def _residual_block(torch_prefix, flax_prefix, in_planes, planes, stride, batch_norm):
    rules = _conv(f"{torch_prefix}.conv1", flax_prefix + ("conv1",), planes, in_planes, 3, 3)
    rules += _conv(f"{torch_prefix}.conv2", flax_prefix + ("conv2",), planes, planes, 3, 3)
    if batch_norm:
        for norm in ("norm1", "norm2") + (("norm3",) if stride != 1 else ()):
            rules += _batch_norm(f"{torch_prefix}.{norm}", flax_prefix + (norm,), planes)
    if stride != 1:
        rules += _conv(f"{torch_prefix}.downsample.0", flax_prefix + ("downsample_0",), planes, in_planes, 1, 1)
        if batch_norm:
            rules += _batch_norm(f"{torch_prefix}.downsample.1", flax_prefix + ("norm3",), planes, "alias")
    return rules


def _encoder(name, output_dim, batch_norm):
    rules = _batch_norm(f"{name}.norm1", (name, "norm1"), 64) if batch_norm else []
    rules += _conv(f"{name}.conv1", (name, "conv1"), 64, 3, 7, 7)
    in_planes = 64
    for layer, (planes, stride) in enumerate(((64, 1), (96, 2), (128, 2)), start=1):
        rules += _residual_block(f"{name}.layer{layer}.0", (name, f"layer{layer}_0"), in_planes, planes, stride,
                                 batch_norm)
        rules += _residual_block(f"{name}.layer{layer}.1", (name, f"layer{layer}_1"), planes, planes, 1, batch_norm)
        in_planes = planes
    rules += _conv(f"{name}.conv2", (name, "conv2"), output_dim, 128, 1, 1)
    return rules


def conversion_table() -> list:
    """Every tensor of the official full RAFT in `state_dict()` order (179 entries)."""
    rules = _encoder("fnet", 256, batch_norm=False) + _encoder("cnet", 256, batch_norm=True)
    ub, enc = ("update_block",), ("update_block", "encoder")
    for name, out_ch, in_ch, k in (("convc1", 256, 324, 1), ("convc2", 192, 256, 3), ("convf1", 128, 2, 7),
                                   ("convf2", 64, 128, 3), ("conv", 126, 256, 3)):
        rules += _conv(f"update_block.encoder.{name}", enc + (name,), out_ch, in_ch, k, k)
    for suffix, (kh, kw) in (("1", (1, 5)), ("2", (5, 1))):
        for gate in "zrq":
            name = f"conv{gate}{suffix}"
            rules += _conv(f"update_block.gru.{name}", ub + ("gru", name), 128, 384, kh, kw)
    rules += _conv("update_block.flow_head.conv1", ub + ("flow_head", "conv1"), 256, 128, 3, 3)
    rules += _conv("update_block.flow_head.conv2", ub + ("flow_head", "conv2"), 2, 256, 3, 3)
    rules += _conv("update_block.mask.0", ub + ("mask_0",), 256, 128, 3, 3)
    rules += _conv("update_block.mask.2", ub + ("mask_2",), 576, 256, 1, 1)
    return rules


def _format(what: str, missing, unexpected, mismatched, invalid, limit: int = 40) -> str:
    lines = [f"{what} does not match the {LAYOUT} layout:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches (name: expected -> found)", mismatched),
                         ("invalid tensors", invalid)):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines += [f"    {item}" for item in items[:limit]]
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")
    return "\n".join(lines)


def _is_float(value) -> bool:
    return np.dtype(value.dtype).kind == "f" or np.dtype(value.dtype).name == "bfloat16"


def check_tensors(arrays: Mapping[str, Any], expected: Mapping[str, tuple[tuple, str]], what: str,
                  aliases: Optional[Mapping[str, str]] = None) -> None:
    """Raises PortError unless `arrays` has exactly the names of `expected` ({name: (shape, kind)}),
    each with its shape, floats finite, counters integer, and every alias equal to its original."""
    missing = [name for name in expected if name not in arrays]
    unexpected = sorted(name for name in arrays if name not in expected)
    mismatched, invalid = [], []
    for name, (shape, kind) in expected.items():
        if name not in arrays:
            continue
        value = arrays[name]
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            invalid.append(f"{name}: not an array but {type(value).__name__}")
            continue
        if tuple(value.shape) != tuple(shape):
            mismatched.append(f"{name}: expected {tuple(shape)}, found {tuple(value.shape)}")
            continue
        if kind.startswith("counter"):
            if np.dtype(value.dtype).kind not in "iu":
                invalid.append(f"{name}: dtype {value.dtype}, expected an integer counter")
        elif not _is_float(value):
            invalid.append(f"{name}: dtype {value.dtype}, expected a floating-point type")
        elif not np.isfinite(np.asarray(value, np.float32)).all():
            bad = int(np.size(value) - np.isfinite(np.asarray(value, np.float32)).sum())
            invalid.append(f"{name}: {bad} NaN/inf values")
    for alias, original in (aliases or {}).items():
        if alias in arrays and original in arrays and not mismatched:
            if not np.array_equal(np.asarray(arrays[alias]), np.asarray(arrays[original])):
                invalid.append(f"{alias}: differs from {original}; the official model registers one "
                               "BatchNorm under both names, so they must be equal")
    if missing or unexpected or mismatched or invalid:
        message = _format(what, missing, unexpected, mismatched, invalid)
        if len(missing) == len(expected):
            message = (f"{what} holds none of the {len(expected)} RAFT tensor names; it is not a RAFT "
                       f"checkpoint.\n" + message)
        raise PortError(message, missing, unexpected, mismatched, invalid)


def _aliases(table) -> dict:
    """{alias torch name: original torch name} (the `downsample.1` -> `norm3` pairs)."""
    first = {}
    for rule in table:
        if rule.kind in ("copy", "counter"):
            first.setdefault(rule.flax_name, rule.torch_name)
    return {r.torch_name: first[r.flax_name] for r in table if r.kind in ("alias", "counter_alias")}


def target_variable_shapes() -> dict:
    """{'params/fnet/conv1/kernel': shape, 'batch_stats/...': shape} of an abstractly
    initialised `oclr_jax.flow.raft.RAFT`."""
    import jax  # the table itself needs only numpy.
    import jax.numpy as jnp

    from oclr_jax.flow.raft import RAFT

    image = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)
    variables = jax.eval_shape(lambda a, b: RAFT().init(jax.random.key(0), a, b, iters=1), image, image)
    return {name: tuple(leaf.shape) for name, leaf in flatten_params(dict(variables)).items()}


def torch_state_dict_to_flax(state_dict: Mapping[str, Any], check_target: bool = True):
    """Official state dict {name: array} -> (variables {'params', 'batch_stats'}, counters).

    `counters` maps each `num_batches_tracked` name to its int64 value, for `flax_to_torch_state_dict`.
    Arrays become float32 numpy arrays (the official file is float32, so this is exact).
    """
    table = conversion_table()
    check_tensors(state_dict, {r.torch_name: (r.torch_shape, r.kind) for r in table}, "PyTorch state dict",
                  aliases=_aliases(table))
    flat = {}
    counters = {}
    for rule in table:
        value = np.asarray(state_dict[rule.torch_name])
        if rule.kind.startswith("counter"):
            counters[rule.torch_name] = np.array(value, dtype=np.int64)
        elif rule.kind in ("conv", "copy"):
            value = value.transpose(2, 3, 1, 0) if rule.kind == "conv" else value
            flat[rule.flax_name] = np.array(value, dtype=np.float32, order="C", copy=True)
    if check_target:
        target = target_variable_shapes()
        check_tensors(flat, {k: (v, "copy") for k, v in target.items()}, "converted Flax variables")
    return unflatten_params(flat), counters


def flax_to_torch_state_dict(variables: Mapping[str, Any], counters: Optional[Mapping[str, Any]] = None) -> dict:
    """Flax RAFT variables {'params', 'batch_stats'} -> official state dict of numpy arrays in
    the official order (float32 tensors, int64 `num_batches_tracked`).  `counters` as returned
    by `torch_state_dict_to_flax`; a counter not given is written as 0 (a fresh model's value)."""
    table = conversion_table()
    if "params" not in variables or "batch_stats" not in variables:
        raise PortError("Flax RAFT variables need the collections 'params' and 'batch_stats'; "
                        f"found {sorted(variables)}")
    flat = flatten_params({"params": variables["params"], "batch_stats": variables["batch_stats"]})
    check_tensors(flat, {r.flax_name: (r.flax_shape, r.kind) for r in table if r.kind in ("conv", "copy")},
                  "Flax RAFT variables")
    counters = dict(counters or {})
    expected_counters = [r.torch_name for r in table if r.kind.startswith("counter")]
    unknown = sorted(set(counters) - set(expected_counters))
    if unknown:
        raise PortError(f"unknown num_batches_tracked names: {unknown}", unexpected=unknown)
    state_dict = {}
    for rule in table:
        if rule.kind.startswith("counter"):
            state_dict[rule.torch_name] = np.array(counters.get(rule.torch_name, 0), dtype=np.int64)
            continue
        value = np.asarray(flat[rule.flax_name], dtype=np.float32)
        value = value.transpose(3, 2, 0, 1) if rule.kind == "conv" else value
        state_dict[rule.torch_name] = np.array(value, dtype=np.float32, order="C", copy=True)
    return state_dict


def random_variables(seed: int = 0) -> dict:
    """Flax RAFT variables {'params', 'batch_stats'} with random values, shaped by the table (no
    model init, so no compilation): for tests and benchmarks.  Kernels ~ N(0, 1/fan_in), norm
    scales and running variances uniform in [0.5, 1.5], other tensors ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for rule in conversion_table():
        if rule.kind not in ("conv", "copy"):
            continue
        fan_in = int(np.prod(rule.flax_shape[:-1])) if rule.kind == "conv" else 1
        value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), rule.flax_shape)
        if rule.flax_path[-1] in ("var", "scale"):
            value = rng.uniform(0.5, 1.5, rule.flax_shape)
        flat[rule.flax_name] = value.astype(np.float32)
    return unflatten_params(flat)
