"""Frames and masks in and out of the DINO patch grid, as the official `dino/data.py` does.

  * Frame size: short side -> 480, long side scaled and floored to a multiple of 64
    (DAVIS 480x854 -> 480x832, a 60x104 patch grid); cv2 bilinear resize of the uint8 frame,
    /255, per-channel (x - mean) / std with the official mean/std (std 0.228 for red).
  * Flow masks: modal (non-overlapping) layer masks `(T, H, W, K)` -> a label map (0 background,
    k + 1 for layer k) -> nearest-neighbour resample to the patch grid (PIL's rule,
    `resample.pil_nearest_indices`) -> one-hot `(T, h, w, 1 + K)`.
  * Back: soft labels on the grid -> bilinear x patch (align_corners=False) -> each channel
    min-max normalised over the frame -> argmax -> nearest resample to the mask size.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oclr_jax import resample


def model_input_size(height: int, width: int, short_side: int = 480,
                     multiple: int = 64) -> tuple[int, int]:
    """(H, W) the frames are resized to: short side fixed, long side floored to a multiple."""
    if height > width:
        new_width = short_side
        new_height = int((short_side * height / width) // multiple * multiple)
    else:
        new_height = short_side
        new_width = int((short_side * width / height) // multiple * multiple)
    if new_height <= 0 or new_width <= 0:
        raise ValueError(f"frame size {height}x{width} is too small for short side {short_side} "
                         f"and multiple {multiple}")
    return new_height, new_width


def check_sequence(rgb_frames: np.ndarray, flow_masks: np.ndarray) -> None:
    """Raises ValueError naming the problem when the inputs of `adapt_sequence` are malformed."""
    rgb_frames, flow_masks = np.asarray(rgb_frames), np.asarray(flow_masks)
    if rgb_frames.ndim != 4 or rgb_frames.shape[-1] != 3 or rgb_frames.dtype != np.uint8:
        raise ValueError(f"rgb_frames must be uint8 (T, H, W, 3) RGB, got {rgb_frames.dtype} "
                         f"{rgb_frames.shape}")
    if flow_masks.ndim != 4:
        raise ValueError(f"flow_masks must be (T, H, W, K) layer masks, got {flow_masks.shape}")
    if len(rgb_frames) != len(flow_masks):
        raise ValueError(f"{len(rgb_frames)} frames but {len(flow_masks)} flow masks")
    if len(rgb_frames) == 0:
        raise ValueError("empty sequence")
    if flow_masks.dtype != np.bool_ and not np.isin(flow_masks, (0, 1)).all():
        raise ValueError("flow_masks must be binary (bool or 0/1); threshold the probabilities")
    if (flow_masks.astype(np.int32).sum(-1) > 1).any():
        raise ValueError("flow_masks overlap: pass modal masks (e.g. compose.hard_modal_masks), "
                         "not amodal ones")


def normalize_frames(rgb_frames: np.ndarray, size_hw: tuple[int, int],
                     mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 RGB `(T, H, W, 3)` -> float32 `(T, size_h, size_w, 3)` normalised for DINO."""
    height, width = size_hw
    out = np.empty((len(rgb_frames), height, width, 3), np.float32)
    for t, frame in enumerate(rgb_frames):
        out[t] = resample.bilinear(frame, size_hw).astype(np.float32) / 255.0
    return (out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def resize_nearest(array: np.ndarray, size_hw: tuple[int, int], axes=(1, 2)) -> np.ndarray:
    """PIL's nearest-neighbour resample (the official code's) of two axes (labels or masks)."""
    return resample.resize_nearest(array, size_hw, resample.pil_nearest_indices, axes)


def masks_to_labels(flow_masks: np.ndarray) -> np.ndarray:
    """Modal layer masks `(T, H, W, K)` -> label map `(T, H, W)` int32: 0 bg, k + 1 layer k."""
    flow_masks = np.asarray(flow_masks).astype(bool)
    layer_index = np.argmax(flow_masks, axis=-1) + 1
    return np.where(flow_masks.any(-1), layer_index, 0).astype(np.int32)


def grid_one_hot(flow_masks: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Modal layer masks `(T, H, W, K)` -> one-hot labels on the patch grid `(T, h, w, 1 + K)`."""
    num_layers = flow_masks.shape[-1]
    labels = resize_nearest(masks_to_labels(flow_masks), grid_hw)  # (T, h, w)
    return np.eye(num_layers + 1, dtype=np.float32)[labels]


def _min_max_normalise(soft: jax.Array, min_peak: float) -> jax.Array:
    # Official `norm_mask`: per channel (x - min) / max(x - min) when the channel's peak is above
    # 0 (`min_peak` = 0).  A constant channel (where the official code divides by zero) is left
    # as it is.
    low = soft.min(axis=(1, 2), keepdims=True)
    peak = soft.max(axis=(1, 2), keepdims=True)
    span = peak - low
    stretch = (peak > min_peak) & (span > 0)
    return jnp.where(stretch, (soft - low) / jnp.where(span > 0, span, 1.0), soft)


@functools.partial(jax.jit, static_argnames=("patch_size",))
def _grid_to_image_labels(soft_labels: jax.Array, min_peak: jax.Array,
                          patch_size: int) -> jax.Array:
    """Soft grid labels `(B, h, w, C)` -> argmax labels at `(B, h*p, w*p)` (official rule)."""
    _, h, w, _ = soft_labels.shape
    upsampled = resample.upsample_linear(soft_labels, (h * patch_size, w * patch_size))
    return jnp.argmax(_min_max_normalise(upsampled, min_peak), axis=-1).astype(jnp.int32)


def soft_labels_to_masks(soft_labels: np.ndarray, patch_size: int, out_hw: tuple[int, int],
                         min_peak: float = 0.0, chunk: int = 8) -> np.ndarray:
    """Soft labels `(T, h, w, 1 + K)` -> layer masks `(T, out_h, out_w, K)` bool.

    Each channel is stretched to [0, 1] over the frame before the argmax when its peak exceeds
    `min_peak`.  Official: 0, so a layer that has left the view but keeps a 0.1% leak of
    propagated mass is stretched to 1 at the leak and wins a patch there; a small positive
    `min_peak` (e.g. 0.05) leaves such channels unstretched.
    """
    num_layers = soft_labels.shape[-1] - 1
    masks = []
    for start in range(0, len(soft_labels), chunk):
        block = np.asarray(soft_labels[start:start + chunk], np.float32)
        count = len(block)
        # Padded to a whole chunk so every call reuses one compilation.
        block = np.pad(block, [(0, chunk - count)] + [(0, 0)] * 3)
        labels = np.asarray(_grid_to_image_labels(jnp.asarray(block), jnp.float32(min_peak),
                                                  patch_size))[:count]
        labels = resize_nearest(labels, out_hw)  # (b, out_h, out_w)
        masks.append(labels[..., None] == np.arange(1, num_layers + 1))
    return np.concatenate(masks, axis=0)
