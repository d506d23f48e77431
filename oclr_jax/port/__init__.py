"""Checkpoints both ways between oclr-jax and the official PyTorch OCLR (docs/port.md).

- `convert`: the name/layout table and the numpy conversions (`torch_state_dict_to_flax`,
  `flax_to_torch_state_dict`), with size inference and validation.
- `torch_io`: reading/writing `.pth` files (imports torch lazily).
- `commands`: `from_torch` / `to_torch` on files; `python -m oclr_jax.port` wraps them.
- `torch_reference`: `TorchOCLR`, our PyTorch re-implementation of the official network
  (imports torch; used by the parity tests and the PyTorch benchmark baselines).

Importing this package imports neither torch nor jax.
"""

from oclr_jax.port.convert import (
                                   ModelConfig,
                                   PortError,
                                   conversion_table,
                                   flax_to_torch_state_dict,
                                   infer_flax_shape,
                                   infer_torch_shape,
                                   torch_state_dict_to_flax,
)

__all__ = ["ModelConfig", "PortError", "conversion_table", "flax_to_torch_state_dict",
           "infer_flax_shape", "infer_torch_shape", "torch_state_dict_to_flax"]
