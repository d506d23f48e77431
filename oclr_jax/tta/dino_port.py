"""DINO PyTorch checkpoints (.pth state_dict) <-> Flax params of `vit.VisionTransformer`.

Name table (DINO `vision_transformer.py`; N = block index):

  cls_token, pos_embed                        copy         (1, 1, D), (1, 1 + g*g, D)
  patch_embed.proj.weight  (D, 3, p, p)       conv         -> patch_embed/proj/kernel (p, p, 3, D)
  patch_embed.proj.bias                       copy
  blocks.N.{norm1,norm2}.weight / .bias       copy         -> blocks_N/norm1/scale, .../bias
  blocks.N.attn.qkv.weight (3D, D)            dense (.T)   -> blocks_N/attn/qkv/kernel (D, 3D)
  blocks.N.attn.proj.weight, mlp.fc1/fc2      dense (.T)
  norm.weight / norm.bias                     copy         -> norm/scale, norm/bias

Accepted files: the released backbone weights (`dino_deitsmall8_pretrain.pth`, a flat
state_dict) and DINO training checkpoints (`{"student": ..., "teacher": ..., ...}`; the
`checkpoint_key`, "teacher" by default as in the official loader, is taken); `module.` and
`backbone.` prefixes are removed and the DINO projection head (`head.*`) is ignored.  Anything
else that does not match the table raises `DinoCheckpointError` listing every missing,
unexpected, mismatched or non-finite tensor.  torch is imported only to read or write `.pth`.
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from flax import traverse_util

from oclr_jax.errors import UserError
from oclr_jax.port import torch_io
from oclr_jax.tta.vit import VisionTransformer, vit_param_shapes

IGNORED_PREFIXES = ("head.",)  # DINO's projection head in training checkpoints
STRIPPED_PREFIXES = ("module.", "backbone.")
_LIST_LIMIT = 12


class DinoCheckpointError(UserError, ValueError):
    """A checkpoint does not match the ViT.  Lists every problem found."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=(), invalid=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)  # (name, expected torch shape, found shape)
        self.invalid = list(invalid)  # (name, reason)


def torch_name(flax_path: tuple[str, ...]) -> str:
    """Flax parameter path -> DINO state_dict name."""
    parts = []
    for part in flax_path[:-1]:
        parts.extend(part.split("_", 1) if part.startswith("blocks_") else [part])
    leaf = {"kernel": "weight", "scale": "weight"}.get(flax_path[-1], flax_path[-1])
    return ".".join(parts + [leaf])


def _kind(flax_path: tuple[str, ...], ndim: int) -> str:
    if flax_path[-1] != "kernel":
        return "copy"
    return "conv" if ndim == 4 else "dense"


def _torch_shape(flax_shape: tuple, kind: str) -> tuple:
    if kind == "conv":
        return tuple(flax_shape[i] for i in (3, 2, 0, 1))
    return flax_shape[::-1] if kind == "dense" else flax_shape


def _to_torch_layout(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.transpose(array, (3, 2, 0, 1))  # (kh, kw, I, O) -> (O, I, kh, kw)
    return array.T if kind == "dense" else array


def _to_flax_layout(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.transpose(array, (2, 3, 1, 0))  # (O, I, kh, kw) -> (kh, kw, I, O)
    return array.T if kind == "dense" else array


def _as_numpy(value) -> np.ndarray | None:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        return value.float().numpy() if value.is_floating_point() else value.numpy()
    return np.asarray(value) if isinstance(value, (np.ndarray, np.generic)) else None


def unwrap_state_dict(checkpoint: Mapping, checkpoint_key: str | None = "teacher") -> dict:
    """The backbone state_dict inside a DINO checkpoint, with wrapper prefixes removed."""
    if not isinstance(checkpoint, Mapping):
        raise DinoCheckpointError(f"expected a state_dict (a mapping), got {type(checkpoint)}")
    for key in (checkpoint_key, "state_dict", "model"):
        if key and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    state_dict = {}
    for name, value in checkpoint.items():
        for prefix in STRIPPED_PREFIXES:
            name = name.removeprefix(prefix)
        state_dict[name] = value
    return state_dict


def _describe(model: VisionTransformer) -> str:
    return (f"patch {model.patch_size}, dim {model.embed_dim}, depth {model.depth}, "
            f"pos_embed grid {model.pretrain_grid}x{model.pretrain_grid}")


def _report(source: str, model: VisionTransformer, missing, unexpected, mismatched, invalid):
    lines = [f"{source}: DINO checkpoint does not match the ViT ({_describe(model)})"]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch (name, expected, found)", mismatched),
                         ("invalid", invalid)):
        if items:
            shown = ", ".join(str(item) for item in items[:_LIST_LIMIT])
            more = f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else ""
            lines.append(f"  {title} ({len(items)}): {shown}{more}")
    if any(name == "pos_embed" for name, *_ in mismatched):
        lines.append("  hint: pos_embed fixes the pretraining grid; set config.tta."
                     "pretrain_image_size = grid * patch_size (224 for the released DINO weights)")
    raise DinoCheckpointError("\n".join(lines), missing, unexpected, mismatched, invalid)


def state_dict_to_flax(state_dict: Mapping, model: VisionTransformer,
                       source: str = "state_dict") -> dict:
    """Flax params of `model` from a DINO backbone state_dict (validated against the table)."""
    flat_target = traverse_util.flatten_dict(vit_param_shapes(model))
    names = {torch_name(path): path for path in flat_target}
    missing = sorted(name for name in names if name not in state_dict)
    unexpected = sorted(name for name in state_dict
                        if name not in names and not name.startswith(IGNORED_PREFIXES))
    mismatched, invalid, flat = [], [], {}
    for name, path in names.items():
        if name not in state_dict:
            continue
        array = _as_numpy(state_dict[name])
        kind = _kind(path, len(flat_target[path].shape))
        expected = _torch_shape(tuple(flat_target[path].shape), kind)
        if array is None:
            invalid.append((name, f"not a tensor: {type(state_dict[name]).__name__}"))
        elif tuple(array.shape) != expected:
            mismatched.append((name, expected, tuple(array.shape)))
        elif not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            invalid.append((name, f"not finite floating point ({array.dtype})"))
        else:
            flat[path] = np.ascontiguousarray(_to_flax_layout(array, kind), np.float32)
    if missing or unexpected or mismatched or invalid:
        _report(source, model, missing, unexpected, mismatched, invalid)
    return traverse_util.unflatten_dict(flat)


def flax_to_state_dict(params: Mapping) -> dict[str, np.ndarray]:
    """DINO state_dict (numpy arrays, torch layouts) from Flax params."""
    # np.array copies: writable, contiguous arrays (torch.from_numpy needs writable memory).
    return {torch_name(path): np.array(
                _to_torch_layout(np.asarray(value, np.float32), _kind(path, np.ndim(value))),
                np.float32, order="C")
            for path, value in traverse_util.flatten_dict(params).items()}


def read_torch_checkpoint(path: str, allow_pickle: bool = False) -> Mapping:
    """`torch.load` on CPU; only tensors and containers unless `allow_pickle` (trusted files)."""
    return torch_io.torch_load(
        path, allow_pickle, error_type=DinoCheckpointError, missing="DINO checkpoint not found",
        unreadable="cannot read as a PyTorch checkpoint",
        pickle_hint=" A DINO training checkpoint (with 'args') needs allow_pickle=True, only "
                    "for files you trust.")


def load_dino_params(path: str, model: VisionTransformer, checkpoint_key: str | None = "teacher",
                     allow_pickle: bool = False) -> dict:
    """Flax params (device arrays) of `model` from a DINO `.pth` file (flat or nested)."""
    state_dict = unwrap_state_dict(read_torch_checkpoint(path, allow_pickle), checkpoint_key)
    return jax.device_put(state_dict_to_flax(state_dict, model, source=path))


def save_dino_state_dict(path: str, params: Mapping) -> None:
    """Writes Flax params as a DINO `.pth` state_dict (atomically)."""
    torch_io.save_torch_state_dict(flax_to_state_dict(params), path, wrap=False)
