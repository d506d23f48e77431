"""Every modal composition of the package and the ground-truth depth convention (eq. 2).

Two order conventions meet here, each with its own function name:

- Predictions: a SMALLER order value means NEARER the camera.  `front_to_back` sorts the
  layers nearest first and `compose_modal_front_to_back` visits them in that order, each layer
  keeping only the pixels no nearer layer has claimed.  Ties go to the higher layer index in
  front, as the official `amodal_to_modal_hard` does (it sorts by the negated value and walks
  the result backwards).
- Ground truth: channel k holds object k+1 and the HIGHER channel is in front (the official
  synthetic data and training targets).  `ground_truth_modal` is that rule, the one place it
  is written; `compose_modal_back_to_front` is the official `find_recon_mask` for any fixed
  order (soft masks allowed), which the modal loss mixes over all K! orders.

Everything works on numpy and jax arrays alike (`jnp` operations, jit-friendly) unless noted.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def front_to_back(order_values: jnp.ndarray) -> jnp.ndarray:
    """Layer indices sorted nearest first.  (B, K) -> (B, K) int32.

    Ties go to the higher index first, so `[0, 0, 0]` gives `[2, 1, 0]`.
    """
    num_layers = order_values.shape[-1]
    reversed_rank = jnp.argsort(order_values[..., ::-1], axis=-1, stable=True)
    return (num_layers - 1 - reversed_rank).astype(jnp.int32)


def compose_modal_front_to_back(amodal_masks: jnp.ndarray,
                                layers_front_to_back: jnp.ndarray) -> jnp.ndarray:
    """Modal masks from binary amodal masks and a per-sample front-to-back layer order.

    Args:
      amodal_masks: (B, T, H, W, K) bool or {0, 1}.
      layers_front_to_back: (B, K) int, a permutation of 0..K-1 per sample, nearest first.
    Returns:
      (B, T, H, W, K) bool: each pixel belongs to at most one layer, the nearest covering it.
    """
    amodal_masks = amodal_masks.astype(bool)
    gather = layers_front_to_back[:, None, None, None, :]  # (B, 1, 1, 1, K)
    by_depth = jnp.take_along_axis(amodal_masks, gather, axis=-1)
    covered_before = (jnp.cumsum(by_depth, axis=-1) - by_depth) > 0  # claimed by a nearer layer
    modal_by_depth = by_depth & ~covered_before
    inverse = jnp.argsort(layers_front_to_back, axis=-1)[:, None, None, None, :]
    return jnp.take_along_axis(modal_by_depth, inverse, axis=-1)


def compose_modal_back_to_front(masks: jnp.ndarray, back_to_front: Sequence[int]) -> jnp.ndarray:
    """Modal masks from amodal ones for one fixed layer order (official `find_recon_mask`).

    masks (..., K) in [0, 1] (soft masks allowed); `back_to_front` lists the channels from the
    farthest to the nearest.  Each layer keeps what the layers in front of it leave uncovered:
    `modal_k = mask_k * prod(1 - mask_j for j in front of k)`.
    """
    covered = jnp.zeros(masks.shape[:-1], masks.dtype)
    modal = [None] * masks.shape[-1]
    for channel in reversed(tuple(back_to_front)):
        layer = masks[..., channel]
        modal[channel] = layer * (1.0 - covered)
        covered = (1.0 - covered) * layer + covered
    return jnp.stack(modal, axis=-1)


def ground_truth_modal(amodal):
    """Visible masks of ground-truth amodal layers: the HIGHER channel is in front.

    (..., K) bool or {0, 1} -> (..., K) of the same dtype; numpy in, numpy out; jax in (also
    under jit), jax out.  Object k is visible where it is present and no higher channel is.
    """
    xp = jnp if isinstance(amodal, jax.Array) else np
    in_front = xp.cumsum(amodal[..., ::-1], axis=-1)[..., ::-1] - amodal  # higher channels
    return amodal * (in_front == 0)


def hard_modal_masks(amodal_logits: jnp.ndarray, order_logits: jnp.ndarray,
                     threshold: float = 0.5) -> jnp.ndarray:
    """Eq. 2 at inference: sigmoid > threshold, then front-to-back composition by order.

    Args:
      amodal_logits: (B, T, H, W, K) float.
      order_logits: (B, K) float (smaller = nearer).
      threshold: on the sigmoid probability.
    Returns:
      (B, T, H, W, K) bool modal masks.
    """
    amodal_masks = jax.nn.sigmoid(amodal_logits) > threshold
    return compose_modal_front_to_back(amodal_masks, front_to_back(order_logits))
