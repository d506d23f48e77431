"""Modal composition of amodal layers (paper eq. 2), hard version used at inference.

Order convention (DESIGN.md §1): a SMALLER order value means NEARER the camera.  Layers are
visited front to back and each keeps only the pixels no nearer layer has claimed.  Ties are
broken towards the higher layer index in front, as the official `amodal_to_modal_hard`
does (it sorts by the negated value and walks the result backwards) and as the synthetic
ground truth stores depth (higher channel = in front).

Works on numpy and jax arrays alike (pure `jnp` operations, jit-friendly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def front_to_back(order_values: jnp.ndarray) -> jnp.ndarray:
    """Layer indices sorted nearest first.  (B, K) -> (B, K) int32.

    Ties go to the higher index first, so `[0, 0, 0]` gives `[2, 1, 0]`.
    """
    num_layers = order_values.shape[-1]
    reversed_rank = jnp.argsort(order_values[..., ::-1], axis=-1, stable=True)
    return (num_layers - 1 - reversed_rank).astype(jnp.int32)


def compose_modal(amodal_masks: jnp.ndarray, layers_front_to_back: jnp.ndarray) -> jnp.ndarray:
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
    return compose_modal(amodal_masks, front_to_back(order_logits))
