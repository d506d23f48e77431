"""Model checkpoints: params + the config that built them, in one folder.

Layout of a checkpoint folder (what `save_checkpoint` writes, and what the trainer exports):

    CKPT_DIR/
      config.json    the full ml_collections config (model, data, ...) as JSON
      params/        an orbax StandardCheckpointer tree of float32 params

The folder is written under a temporary name and renamed when complete, so a crash never
leaves a half checkpoint under the final name.  `load_checkpoint` also accepts an official
PyTorch `.pth` (through `oclr_jax.port`) and a training workdir (its exported `model/`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from oclr_jax import model as model_lib
from oclr_jax.atomic import staged_directory
from oclr_jax.config import paper
from oclr_jax.config.model import ModelConfig
from oclr_jax.errors import UserError
from oclr_jax.model import OCLR, build_model

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
TORCH_EXTENSIONS = (".pth", ".pt", ".pth.tar", ".ckpt")


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, incomplete or does not fit the model its config describes."""


def model_for(config: ml_collections.ConfigDict) -> OCLR:
    """The network `config` describes (its model section and flow gaps)."""
    return build_model(ModelConfig.from_config(config))


def abstract_params(config: ml_collections.ConfigDict) -> Any:
    """The params tree's shapes/dtypes for `config`, without allocating or compiling."""
    return model_lib.abstract_params(model_for(config))


def _config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, found {type(raw).__name__}")
    if "data" in raw and "gaps" in raw["data"]:
        raw["data"]["gaps"] = tuple(raw["data"]["gaps"])
    if "data" in raw and "resolution" in raw["data"]:
        raw["data"]["resolution"] = tuple(raw["data"]["resolution"])
    return ml_collections.ConfigDict(raw)


def save_checkpoint(directory: str, params: Any, config: ml_collections.ConfigDict,
                    overwrite: bool = False) -> str:
    """Writes params and config to `directory` atomically.  Returns the absolute path.

    Only the calling process writes, also in a multi-process job (the trainer exports from
    process 0 alone): its orbax checkpointer is told that it is the only active process, so it
    waits at no barrier for the others.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not overwrite:
        raise CheckpointError(f"{directory}: already exists (pass overwrite=True to replace it)")
    check_params_match(params, config, source=directory)
    with staged_directory(directory) as staging:
        with open(os.path.join(staging, CONFIG_FILE), "w") as f:
            f.write(_config_to_json(config))
        host_params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
        this_process = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()},
            barrier_sync_key_prefix="oclr_export")
        checkpointer = ocp.StandardCheckpointer(multiprocessing_options=this_process)
        checkpointer.save(os.path.join(staging, PARAMS_DIR), host_params)
        checkpointer.wait_until_finished()
    return directory


def check_params_match(params: Any, config: ml_collections.ConfigDict, source: str = "") -> None:
    """Raises CheckpointError listing missing/unexpected keys and shape mismatches."""
    expected = _flat_shapes(abstract_params(config))
    found = _flat_shapes(params)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [f"{k}: expected {expected[k]}, found {found[k]}"
                  for k in sorted(set(expected) & set(found)) if expected[k] != found[k]]
    if missing or unexpected or mismatched:
        lines = [f"{source or 'params'} do not fit the model described by its config:"]
        lines += [f"  missing: {k}" for k in missing]
        lines += [f"  unexpected: {k}" for k in unexpected]
        lines += [f"  shape mismatch {m}" for m in mismatched]
        raise CheckpointError("\n".join(lines))


def _flat_shapes(tree: Any) -> dict[str, tuple]:
    # Any pytree: params, or orbax's metadata tree of a saved checkpoint (not a dict).
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path):
            tuple(getattr(leaf, "shape", None) or np.shape(leaf)) for path, leaf in flat}


def is_torch_checkpoint(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(TORCH_EXTENSIONS)


def reads_as_torch(path: str, model_source: str = "auto") -> bool:
    """Whether `load_checkpoint(path, model_source)` reads a PyTorch state dict."""
    return model_source == "torch" or (model_source == "auto" and is_torch_checkpoint(path))


def resolve_checkpoint_dir(path: str) -> str:
    """`path` itself if it holds config.json, else its exported `model/` (a training workdir)."""
    for candidate in (path, os.path.join(path, "model")):
        if os.path.isfile(os.path.join(candidate, CONFIG_FILE)):
            return candidate
    raise CheckpointError(
        f"{path}: not an oclr-jax checkpoint (no {CONFIG_FILE}, nor model/{CONFIG_FILE}); "
        f"expected a folder written by save_checkpoint, a training workdir, or a PyTorch .pth")


def _check_array_files(params_dir: str) -> None:
    """Raises CheckpointError when an OCDBT params folder lost its array data files (a partial
    copy): orbax would fail only inside its asynchronous restore, whose threads then print
    tracebacks at exit."""
    for entry in sorted(os.listdir(params_dir)):
        if entry.startswith("ocdbt.process_"):
            data = os.path.join(params_dir, entry, "d")
            if not os.path.isdir(data) or not os.listdir(data):
                raise CheckpointError(f"{data}: the params' array data files are missing; the "
                                      "folder is damaged: copy or export it again")


def load_checkpoint(path: str, model_source: str = "auto"):
    """Loads a model.  Returns `(model, params, config)`.

    Args:
      path: an oclr-jax checkpoint folder, a training workdir, or an official PyTorch `.pth`.
      model_source: 'auto' (by the path), 'flax' or 'torch'.
    """
    if model_source not in ("auto", "flax", "torch"):
        raise ValueError(f"model_source must be auto, flax or torch; got {model_source!r}")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint does not exist")
    if reads_as_torch(path, model_source):
        return _load_torch(path)
    directory = os.path.abspath(resolve_checkpoint_dir(path))
    config = read_checkpoint_config(os.path.join(directory, CONFIG_FILE))
    params_dir = os.path.join(directory, PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{directory}: has {CONFIG_FILE} but no {PARAMS_DIR}/ folder")
    # The stored tree first (names and shapes only): a mismatch names every key with the
    # expected and found shapes, instead of a failure deep inside the restore.
    _check_array_files(params_dir)
    # One checkpointer, closed on every path: an unclosed one whose restore failed leaves
    # orbax's background event loop to print a traceback at interpreter exit.
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            stored = checkpointer.metadata(params_dir)
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad folders.
            raise CheckpointError(f"{params_dir}: not a readable orbax checkpoint "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from e
        check_params_match(getattr(stored, "item_metadata", stored), config,
                           source=f"{params_dir} (against {CONFIG_FILE})")
        try:
            params = checkpointer.restore(params_dir, abstract_params(config))
        except Exception as e:  # noqa: BLE001 - missing or corrupt array files, after the check.
            raise CheckpointError(f"{params_dir}: cannot read the stored params ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300]}); the folder is damaged: "
                                  "copy or export it again") from e
    return model_for(config), params, config


REQUIRED_CONFIG_KEYS = ("model.num_queries", "model.unet_features", "model.num_layers",
                        "model.num_heads", "model.ff_dim", "data.gaps", "data.resolution",
                        "data.num_frames")


def read_checkpoint_config(path: str) -> ml_collections.ConfigDict:
    """A checkpoint's config.json, checked readable, complete and in range (names the key)."""
    from oclr_jax.config.checks import check_config

    try:
        with open(path) as f:
            config = config_from_json(f.read())
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint config ({e})") from e
    except ValueError as e:
        raise CheckpointError(f"{path}: checkpoint config is not valid JSON ({e}); the file is "
                              "damaged: copy or export the checkpoint again") from e
    missing = []
    for key in REQUIRED_CONFIG_KEYS:
        section, field = key.split(".")
        if section not in config or field not in config[section]:
            missing.append(key)
    if missing:
        raise CheckpointError(f"{path}: checkpoint config lacks {', '.join(missing)}; it is not "
                              "a complete oclr-jax model config")
    try:
        check_config(config, ("model", "data"))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    return config


def config_from_inferred(inferred: ModelConfig) -> ml_collections.ConfigDict:
    """The paper config with the model sizes the port inferred from a state_dict.

    Input channels fix only the number of gaps: 2 channels -> (+1,), 4 -> (+1, -1) as the
    official code; 2n -> +1, -1, +2, -2, ... (say which gaps a custom model used with
    `--config.data.gaps` where a command accepts it).
    """
    config = paper.get_config()
    inferred.write_sizes(config)
    in_channels = inferred.in_channels
    if in_channels % 2:
        raise CheckpointError(f"a flow model needs an even number of input channels; the "
                              f"checkpoint has {in_channels}")
    gaps = []
    for magnitude in range(1, in_channels // 2 + 1):
        gaps += [magnitude, -magnitude]
    config.data.gaps = tuple(gaps[: in_channels // 2])
    return config


def _load_torch(path: str):
    from oclr_jax.port.convert import PortError, torch_state_dict_to_flax
    from oclr_jax.port.torch_io import load_torch_checkpoint_file

    try:  # No advice about a pickle flag: the commands that load models have none.
        state_dict, _ = load_torch_checkpoint_file(path, pickle_hint=None)
        params, model_config = torch_state_dict_to_flax(state_dict)
    except PortError as e:
        raise CheckpointError(str(e)) from e
    config = config_from_inferred(model_config)
    return model_for(config), jax.tree_util.tree_map(jnp.asarray, params), config
