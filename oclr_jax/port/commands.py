"""The two port operations as library functions (the CLI in `__main__.py` wraps them).

  from_torch(pth, out_dir)    official PyTorch `.pth` -> oclr-jax checkpoint folder
  to_torch(ckpt_dir, out_pth) oclr-jax checkpoint folder (or training workdir) -> `.pth`

Both validate everything before writing anything, and both writes are atomic (temporary name,
then rename), so a failure leaves no output behind.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from oclr_jax.errors import check_output_dir, check_writable_parent
from oclr_jax.port.convert import (
    ModelConfig,
    PortError,
    count_parameters,
    flax_to_torch_state_dict,
    infer_flax_shape,
    torch_state_dict_to_flax,
)


@dataclasses.dataclass
class PortReport:
    """What a port operation read, inferred and wrote."""

    source: str
    output: str
    shape: ModelConfig
    num_parameters: int
    source_format: str = ""
    iteration: Optional[int] = None
    notes: list = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [f"read {self.source}" + (f" ({self.source_format}" + (
            f", iteration {self.iteration})" if self.iteration is not None else ")")
            if self.source_format else ""),
            f"inferred model: {self.shape.describe()} ({self.num_parameters:,} parameters)"]
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"wrote {self.output}")
        return "\n".join(lines)


def _is_checkpoint_folder(folder: str) -> bool:
    return (os.path.isfile(os.path.join(folder, "config.json"))
            and os.path.isdir(os.path.join(folder, "params")))


def _refuse_existing(path: str, overwrite: bool, folder: bool = False) -> None:
    """Output checks before any work: exists without --overwrite (the port's own rule), then
    the rule of every command's outputs (`errors.check_output_dir`): --overwrite replaces only
    an oclr-jax checkpoint folder (config.json + params/) or an empty folder, never a file, the
    working directory or what we did not write; a single output file replaces only a file.
    Either is refused in an unwritable place."""
    if os.path.exists(path) and not overwrite:
        raise PortError(f"{path}: already exists (pass --overwrite to replace it)")
    if folder:
        check_output_dir(path, "OUT_DIR", "config.json and params/", owned=_is_checkpoint_folder)
        return
    if os.path.exists(path) and not os.path.isfile(path):
        raise PortError(f"{path}: --overwrite replaces only a file; this is a folder")
    check_writable_parent(path, "OUT.pth", "output file")


def from_torch(pth_path: str, out_dir: str, overwrite: bool = False,
               trust_pickle: bool = False) -> PortReport:
    """Converts an official PyTorch checkpoint (bare state dict or training checkpoint) into an
    oclr-jax checkpoint folder whose config carries the inferred model sizes."""
    from oclr_jax.checkpoint import config_from_inferred, save_checkpoint
    from oclr_jax.port.torch_io import load_torch_checkpoint_file

    _refuse_existing(out_dir, overwrite, folder=True)
    state_dict, meta = load_torch_checkpoint_file(pth_path, trust_pickle=trust_pickle)
    try:
        params, shape = torch_state_dict_to_flax(state_dict)
    except PortError as error:
        raise PortError(f"{pth_path}: {error}", error.missing, error.unexpected,
                        error.mismatched, error.invalid) from error
    config = config_from_inferred(shape)
    notes = []
    if "stripped_prefix" in meta:
        notes.append(f"removed the DataParallel prefix {meta['stripped_prefix']!r} from every name")
    if "cast_to_float32" in meta:
        notes.append(f"cast {len(meta['cast_to_float32'])} tensors to float32")
    if tuple(config.data.gaps) != (1, -1):
        notes.append(f"{shape.in_channels} input channels: assumed flow gaps {tuple(config.data.gaps)} "
                     f"(edit data.gaps in config.json if the model was trained with others)")
    written = save_checkpoint(out_dir, params, config, overwrite=overwrite)
    return PortReport(pth_path, written, shape, count_parameters(state_dict.values()),
                      meta.get("format", ""), meta.get("iteration"), notes)


def to_torch(checkpoint_path: str, out_path: str, overwrite: bool = False,
             wrap: bool = True) -> PortReport:
    """Exports an oclr-jax checkpoint (folder or training workdir) to a `.pth` that the official
    `OCLR(in_channels, out_channels=K, unet_features, num_layers, num_heads, num_query=K)` loads
    with `load_state_dict(strict=True)`.

    With `wrap` (default) the file is `{'model_state_dict': state_dict}`, the layout the official
    `eval.py --resume_path` reads; `wrap=False` writes the bare state dict.
    """
    from oclr_jax.checkpoint import load_checkpoint
    from oclr_jax.port.torch_io import save_torch_state_dict

    _refuse_existing(out_path, overwrite)
    if os.path.isfile(checkpoint_path):
        raise PortError(f"{checkpoint_path}: expected an oclr-jax checkpoint folder (config.json + "
                        f"params/) or a training workdir, found a file")
    _, params, config = load_checkpoint(checkpoint_path, model_source="flax")
    state_dict = flax_to_torch_state_dict(params)
    shape = infer_flax_shape(params)
    notes = []
    if not config.model.get("same_frame_mask", True):
        notes.append("this model was trained without the same-frame attention mask; the official "
                     "code always applies it, so its predictions will differ")
    if shape.ff_dim != 512:
        notes.append(f"ff_dim={shape.ff_dim}: the official OCLR hard-codes dim_feedforward=512 and "
                     f"cannot load this file; oclr_jax.port.torch_reference.TorchOCLR(ff_dim=...) can")
    save_torch_state_dict(state_dict, out_path, wrap=wrap)
    return PortReport(checkpoint_path, os.path.abspath(out_path), shape,
                      count_parameters(state_dict.values()), "oclr-jax checkpoint", None, notes)
