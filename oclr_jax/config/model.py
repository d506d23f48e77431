"""`ModelConfig`: the one description of an OCLR network, read by everything that builds one.

The model (`oclr_jax.model.build_model`), the checkpoint loader (`oclr_jax.checkpoint`) and the
PyTorch port (`oclr_jax.port.convert`, which infers a `ModelConfig` from tensor shapes) all go
through this dataclass, so a size means the same thing everywhere.  Importing it needs neither
jax nor torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# The fields that fix the parameter shapes; the others change how the network computes.
SIZE_FIELDS = ("in_channels", "unet_features", "num_queries", "num_layers", "num_heads", "ff_dim")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The OCLR network's settings (defaults: the official `OCLR(4, 3)`).

    Attributes:
      in_channels: input channels, 2 (u, v) per flow gap.
      unet_features: f; the transformer width is c = 16 f (official 32 -> 512).
      num_queries: K object layers (the official num_query and out_channels, 3).
      num_layers: transformer encoder and decoder layers each (official 3).
      num_heads: G attention heads, also the groups of the attention-map head (official 8).
      ff_dim: feed-forward hidden width (official: fixed 512).
      dropout_rate: transformer dropout (official 0.1), active only in training.
      same_frame_mask: encoder tokens attend only to other frames (official True).
      dtype: compute dtype name, 'float32' or 'bfloat16' (params stay float32).
      remat: rematerialise U-Net blocks and transformer layers to save activation memory.
      attention: 'dense' (one softmax over all keys) or 'chunked' (blocks of query rows under
        `jax.checkpoint`: same outputs, nothing Lq x Lk kept for the backward pass).
      attention_chunk: query rows per chunked block (0: the default block size).
    """

    in_channels: int = 4
    unet_features: int = 32
    num_queries: int = 3
    num_layers: int = 3
    num_heads: int = 8
    ff_dim: int = 512
    dropout_rate: float = 0.1
    same_frame_mask: bool = True
    dtype: str = "float32"
    remat: bool = False
    attention: str = "dense"
    attention_chunk: int = 0

    @property
    def width(self) -> int:
        """Transformer width c = 16 f."""
        return 16 * self.unet_features

    def sizes(self) -> dict[str, int]:
        """The fields that fix the parameter shapes."""
        return {name: getattr(self, name) for name in SIZE_FIELDS}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.sizes().items())

    @classmethod
    def from_sections(cls, model: Mapping[str, Any], in_channels: int) -> "ModelConfig":
        """From a `config.model` section and the input channels (2 per flow gap)."""
        default = cls()
        values = {field.name: type(getattr(default, field.name))(model[field.name])
                  for field in dataclasses.fields(cls)
                  if field.name != "in_channels" and field.name in model}
        return cls(in_channels=int(in_channels), **values)

    @classmethod
    def from_config(cls, config) -> "ModelConfig":
        """From a full config: `config.model` and the flow gaps of `config.data`."""
        return cls.from_sections(config.model, 2 * len(config.data.gaps))

    def write_sizes(self, config) -> None:
        """Sets `config.model`'s size fields to this model's (in place; gaps are not touched)."""
        for name in SIZE_FIELDS:
            if name != "in_channels":
                config.model[name] = int(getattr(self, name))
