"""Reading and writing PyTorch `.pth` checkpoints of OCLR as numpy state dicts.

torch is imported inside the functions: it is an optional dependency, needed only here and by
the reference model.  Accepted inputs: a bare state dict (name -> tensor), the official
training checkpoint (`{'iteration', 'model_state_dict', 'optimizer_state_dict', 'loss'}`), a
`{'state_dict': ...}` wrapper, and the same with DataParallel's `module.` prefix on every name.
"""

from __future__ import annotations

import collections
import os
from typing import Mapping

import numpy as np

from oclr_jax.atomic import atomic_file
from oclr_jax.port.convert import PortError

_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
_DATA_PARALLEL_PREFIX = "module."


def _import_torch(error_type: type = PortError):
    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the environment.
        raise error_type("reading or writing .pth files needs PyTorch: pip install "
                         "'oclr-jax[torch]' (torch==2.13.0)") from error
    return torch


def torch_load(path: str, trust_pickle: bool = False, *, error_type: type = PortError,
               missing: str = "no such file", unreadable: str = "not a readable PyTorch checkpoint",
               pickle_hint: str = " If the file comes from a trusted source and holds pickled "
                                  "Python objects, retry with --trust-pickle."):
    """`torch.load` on CPU, the one way the package reads a `.pth` (OCLR and DINO weights).

    Only tensors and containers are unpickled unless `trust_pickle` (files from a trusted
    source).  A missing or unreadable file raises `error_type` naming the file, with
    `pickle_hint` added when pickled objects may be the cause.
    """
    torch = _import_torch(error_type)
    if not os.path.isfile(path):
        raise error_type(f"{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as error:  # torch raises many types for foreign or corrupt files.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in reason:  # torch's advice to unpickle anyway: ours is pickle_hint.
            reason = "not a weights-only state dict, or not a PyTorch file at all"
        raise error_type(f"{path}: {unreadable} ({type(error).__name__}: {reason[:300]})."
                         f"{'' if trust_pickle else pickle_hint}") from error


def _is_tensor_dict(obj, torch) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())


def _describe(obj) -> str:
    if isinstance(obj, Mapping):
        keys = [repr(k) for k in list(obj.keys())[:12]]
        return f"a dict with keys [{', '.join(keys)}{', ...' if len(obj) > 12 else ''}]"
    return f"a {type(obj).__name__}"


def extract_state_dict(obj, path: str, model_name: str = "OCLR"):
    """Finds the model state dict in a loaded `.pth` object.  Returns (state_dict, meta)."""
    torch = _import_torch()
    meta = {"source": path}
    if isinstance(obj, torch.nn.Module):
        obj, meta["format"] = obj.state_dict(), "pickled module"
    if isinstance(obj, Mapping) and not _is_tensor_dict(obj, torch):
        for key in _WRAPPER_KEYS:
            if key in obj and _is_tensor_dict(obj[key], torch):
                meta["format"] = "training checkpoint" if key == "model_state_dict" else f"'{key}' wrapper"
                for extra in ("iteration", "epoch", "step"):
                    if isinstance(obj.get(extra), (int, np.integer)):
                        meta[extra] = int(obj[extra])
                obj = obj[key]
                break
    if not _is_tensor_dict(obj, torch):
        raise PortError(f"{path}: not an {model_name} checkpoint: expected a state dict (parameter name -> "
                        f"tensor) or a training checkpoint with 'model_state_dict', found {_describe(obj)}")
    meta.setdefault("format", "state dict")
    names = list(obj.keys())
    if all(name.startswith(_DATA_PARALLEL_PREFIX) for name in names):
        obj = {name[len(_DATA_PARALLEL_PREFIX):]: value for name, value in obj.items()}
        meta["stripped_prefix"] = _DATA_PARALLEL_PREFIX
    state_dict = {}
    for name, tensor in obj.items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            meta.setdefault("cast_to_float32", []).append(f"{name} ({tensor.dtype})")
            tensor = tensor.float()  # exact for half/bfloat16; numpy has no bfloat16.
        state_dict[name] = tensor.numpy().copy()
    return state_dict, meta


def load_torch_checkpoint_file(path: str, trust_pickle: bool = False, model_name: str = "OCLR",
                               pickle_hint: str | None = "--trust-pickle"):
    """Reads a `.pth` file -> (state dict of numpy arrays, meta dict).

    `meta` holds `source`, `format` ('state dict' | 'training checkpoint' | ...), and when present
    `iteration`, `stripped_prefix`, `cast_to_float32`.  By default the file is loaded with
    `torch.load(weights_only=True)`, which refuses arbitrary pickled objects; `trust_pickle`
    lifts that for files from a trusted source (e.g. a whole pickled nn.Module).
    Raises PortError naming the file when it is missing or not a checkpoint; `pickle_hint` is
    the flag to suggest for pickled files (None where the command has no such flag).
    """
    hint = (f" If the file comes from a trusted source and holds pickled Python objects, retry "
            f"with {pickle_hint}." if pickle_hint else "")
    return extract_state_dict(torch_load(path, trust_pickle, pickle_hint=hint), path, model_name)


def atomic_torch_save(obj, path: str) -> None:
    """torch.save to a temporary file in the target folder, then rename: never half-written."""
    torch = _import_torch()
    with atomic_file(path) as handle:
        torch.save(obj, handle)


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], path: str,
                          wrap: bool = True, extra: Mapping | None = None) -> None:
    """Writes a numpy state dict as a `.pth` of torch tensors (key order kept), atomically.

    With `wrap` the file is `{'model_state_dict': ..., **extra}`, which the official `eval.py`
    (`--resume_path`) reads; otherwise it is the bare state dict for `load_state_dict`.
    """
    torch = _import_torch()
    tensors = collections.OrderedDict(
        # np.array, not np.ascontiguousarray: the latter turns 0-d counters (num_batches_tracked) into (1,).
        (name, torch.from_numpy(np.array(value, order="C"))) for name, value in state_dict.items())
    obj = {"model_state_dict": tensors, **(extra or {})} if wrap else tensors
    atomic_torch_save(obj, path)
