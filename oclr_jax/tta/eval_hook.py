"""Test-time adaptation as the evaluation's per-sequence `refine(record, labels) -> labels` hook.

`oclr_jax.eval.EvalOptions.refine` receives each sequence's saved label maps `(T, H, W)`
uint8 (0 background, object ids 1..n) and returns refined ones of the same shape.  This module
turns `adapt_sequence` into that hook:

    params = load_tta_vit_params("dino_deitsmall8_pretrain.pth", config.tta)
    options.refine = TTARefiner(params, config.tta, checkpoint="dino_deitsmall8_pretrain.pth")

Each label id becomes one layer (id k -> layer k-1), the RGB frames are read from
`record.image_paths`, and the refined layers are written back with the same ids.
`TTARefiner`'s repr names the checkpoint and every `config.tta` field, so the evaluation's
resume fingerprint changes exactly when the adaptation does.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

from oclr_jax.tta.adapt import adapt_sequence_detailed
from oclr_jax.tta.dino_port import load_dino_params
from oclr_jax.tta.vit import vit_from_config


def read_rgb_frames(image_paths: Sequence[str]) -> np.ndarray:
    """uint8 RGB `(T, H, W, 3)`; a missing or unreadable frame raises naming the file."""
    frames = []
    for path in image_paths:
        try:
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: cannot read frame image ({error})") from error
        if frames[-1].shape != frames[0].shape:
            raise ValueError(f"{path}: frame size {frames[-1].shape[:2]} differs from the "
                             f"sequence's first frame {frames[0].shape[:2]}")
    return np.stack(frames)


def labels_to_layers(labels: np.ndarray) -> np.ndarray:
    """Label maps `(T, H, W)` -> layer masks `(T, H, W, K)` bool, K = max(max id, 1)."""
    num_layers = max(int(labels.max()), 1)
    return labels[..., None] == np.arange(1, num_layers + 1, dtype=labels.dtype)


def layers_to_labels(layers: np.ndarray) -> np.ndarray:
    """Non-overlapping layer masks `(T, H, W, K)` -> label maps `(T, H, W)` uint8."""
    ids = np.arange(1, layers.shape[-1] + 1, dtype=np.uint8)
    return (layers.astype(np.uint8) * ids).max(axis=-1).astype(np.uint8)


def refine_sequence_with_tta(rgb_frames: np.ndarray, labels: np.ndarray, vit_params: dict,
                             tta_config, *, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Refined label maps `(T, H, W)` uint8 and a summary of the adaptation (JSON-friendly)."""
    if labels.shape[0] != rgb_frames.shape[0]:
        raise ValueError(f"{labels.shape[0]} label maps for {rgb_frames.shape[0]} frames")
    result = adapt_sequence_detailed(rgb_frames, labels_to_layers(labels), vit_params, tta_config,
                                     progress=progress)
    info = {"key_frame": result.key_frame, "mean_error": result.mean_error,
            "final_loss": (float(result.finetune_losses[-10:].mean())
                           if result.finetune_losses.size else None)}
    return layers_to_labels(result.masks), info


def load_tta_vit_params(checkpoint_path: str, tta_config, allow_pickle: bool = False) -> dict:
    """DINO ViT params for `config.tta` from a `.pth` file (see dino_port.py)."""
    return load_dino_params(checkpoint_path, vit_from_config(tta_config),
                            checkpoint_key=tta_config.checkpoint_key, allow_pickle=allow_pickle)


class TTARefiner:
    """`refine(record, labels) -> labels` for `EvalOptions.refine` (see module docstring).

    Attributes:
      last_info: what the last sequence's adaptation found (key frame, mean error, loss).
    """

    def __init__(self, vit_params: dict, tta_config, checkpoint: str = "",
                 progress: bool = False):
        self.vit_params = vit_params
        self.tta_config = tta_config
        self.checkpoint = checkpoint
        # In the resume fingerprint: a checkpoint re-saved under the same path is a new one.
        self.checkpoint_mtime = os.path.getmtime(checkpoint) if os.path.isfile(checkpoint) \
            else None
        self.progress = progress
        self.last_info: dict = {}

    def __call__(self, record, labels: np.ndarray) -> np.ndarray:
        frames = read_rgb_frames(record.image_paths)
        refined, self.last_info = refine_sequence_with_tta(frames, labels, self.vit_params,
                                                           self.tta_config,
                                                           progress=self.progress)
        return refined

    def __repr__(self) -> str:
        fields = json.dumps(self.tta_config.to_dict(), sort_keys=True, default=str)
        return (f"TTARefiner(dino, checkpoint={self.checkpoint!r}, "
                f"mtime={self.checkpoint_mtime}, tta={fields})")
