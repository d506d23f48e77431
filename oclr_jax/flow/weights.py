"""RAFT weight files: read `raft-things.pth` (or our `.npz`), write either back.

* `.pth`: the official PyTorch file, a state dict saved from `torch.nn.DataParallel(RAFT(args))`
  (keys prefixed `module.`, removed on reading).  Needs torch (CPU build is enough); read with
  `torch.load(weights_only=True)` unless `trust_pickle`.
* `.npz`: the same tensors in the official layout and names (no prefix), as numpy arrays; read
  and written without torch, so a machine without PyTorch can run RAFT after one conversion.

Both go through the strict table of `oclr_jax.flow.convert`.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from oclr_jax.atomic import atomic_write_bytes
from oclr_jax.flow import convert
from oclr_jax.port.convert import PortError


def read_state_dict(path: str, trust_pickle: bool = False) -> dict:
    """The official-layout state dict of a `.pth` or `.npz` RAFT file, as numpy arrays."""
    if not os.path.isfile(path):
        raise PortError(f"{path}: no such file")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise PortError(f"{path}: not a readable .npz ({type(error).__name__}: {error})") from error
    from oclr_jax.port.torch_io import load_torch_checkpoint_file

    state_dict, _ = load_torch_checkpoint_file(path, trust_pickle=trust_pickle, model_name="RAFT")
    return state_dict


def load_raft_variables(path: str, trust_pickle: bool = False):
    """`raft-things.pth` / `.npz` -> (Flax variables {'params', 'batch_stats'}, counters).
    Raises PortError naming the file and every problem."""
    state_dict = read_state_dict(path, trust_pickle)
    try:
        return convert.torch_state_dict_to_flax(state_dict)
    except PortError as error:
        raise PortError(f"{path}: {error}", error.missing, error.unexpected, error.mismatched,
                        error.invalid) from error


def save_raft_variables(variables, path: str, counters=None, data_parallel: bool = True) -> None:
    """Writes Flax RAFT variables atomically: `.pth` in the official layout (with the `module.`
    prefix of DataParallel unless `data_parallel=False`, so the official `predict.py` loads it),
    or `.npz` (no prefix, no torch needed)."""
    state_dict = convert.flax_to_torch_state_dict(variables, counters)
    if path.endswith(".npz"):
        buffer = io.BytesIO()
        np.savez(buffer, **state_dict)
        atomic_write_bytes(path, buffer.getvalue())
        return
    from oclr_jax.port.torch_io import save_torch_state_dict

    prefix = "module." if data_parallel else ""
    save_torch_state_dict({prefix + name: value for name, value in state_dict.items()}, path, wrap=False)
