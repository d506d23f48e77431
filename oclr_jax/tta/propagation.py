"""Label propagation with top-k patch affinities (CRW / DINO video-segmentation style).

For a target frame with l2-normalised patch features `(N, D)` and S source frames (features
`(S, N, D)`, soft labels `(S, N, C)`, C = 1 + K with channel 0 the background):

  A[n, s, m] = exp(f_target[n] . f_s[m] / 0.1), kept only where source patch m lies within
               +-12 rows and columns of target patch n (the official `restrict_neighborhood`);
  per target patch keep the top-k (k = 5) values over all S*N sources (ties kept), normalise
  them to sum 1, and average the source labels with these weights.

Two passes use it (official `eval_adaptation.py`):
  * consistency: frames 1 .. T-1 in order, sources = frame 0 and the flow masks of the previous
    `consistency_window` (3) frames; the error of each frame is its normalised L1 disagreement
    with its own flow mask (`label_disagreement`), used for the key frame and as a threshold.
  * refinement: from the key frame forwards to T-1 and backwards to 0, sources = the key frame
    (its flow mask) and the previous `window` (7) frames of the pass; each frame pushes
    (propagated + flow) / 2 when its error is below the mean consistency error ("dynamic
    refinement"), else the propagated labels only.  The output of a frame is its propagated
    labels; the key frame keeps its flow mask.

The per-frame step is one jitted call on a fixed-size context buffer (slot 0 = anchor frame,
slots 1..W a ring of the previous frames), so every frame of every sequence of one size reuses
one compilation.  Memory per step: (1 + W) * N * N float32 affinities (1.25 GB at 60x104, W=7).
"""

from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

MASS_EPS = 1e-6  # official denominator guard of the L1 disagreement


def neighborhood_mask(grid_hw: tuple[int, int], radius: int) -> jax.Array:
    """`(N, N)` bool: source m within +-radius rows and columns of target n (all True if <= 0)."""
    h, w = grid_hw
    rows = jnp.repeat(jnp.arange(h), w)  # (N,) row of each row-major patch
    cols = jnp.tile(jnp.arange(w), h)
    if radius <= 0:
        return jnp.ones((h * w, h * w), bool)
    near_rows = jnp.abs(rows[:, None] - rows[None, :]) <= radius
    near_cols = jnp.abs(cols[:, None] - cols[None, :]) <= radius
    return near_rows & near_cols


def propagate_labels(target_features: jax.Array, source_features: jax.Array,
                     source_labels: jax.Array, source_valid: jax.Array,
                     grid_hw: tuple[int, int], *, topk: int = 5, temperature: float = 0.1,
                     radius: int = 12) -> jax.Array:
    """Soft labels `(N, C)` of the target frame from S source frames (see module docstring).

    Args:
      target_features: `(N, D)` l2-normalised.
      source_features: `(S, N, D)` l2-normalised.
      source_labels: `(S, N, C)`.
      source_valid: `(S,)` bool; invalid (empty) buffer slots take no part.
    """
    similarity = jnp.einsum("nd,smd->nsm", target_features, source_features,
                            precision=jax.lax.Precision.HIGHEST)  # (N, S, N)
    keep = neighborhood_mask(grid_hw, radius)[:, None, :] & source_valid[None, :, None]
    affinity = jnp.where(keep, jnp.exp(similarity / temperature), 0.0)  # (N, S, N)
    affinity = affinity.reshape(affinity.shape[0], -1)  # (N, S*N)
    kth_largest = jax.lax.top_k(affinity, topk)[0][:, -1:]  # (N, 1)
    affinity = jnp.where(affinity >= kth_largest, affinity, 0.0)
    affinity = affinity / jnp.sum(affinity, axis=1, keepdims=True)
    labels = source_labels.reshape(-1, source_labels.shape[-1])  # (S*N, C)
    return jnp.matmul(affinity, labels, precision=jax.lax.Precision.HIGHEST)  # (N, C)


def label_disagreement(propagated: jax.Array, flow_labels: jax.Array) -> jax.Array:
    """Official error: L1 over the object channels / K / (mean object mass of the two + 1e-6).

    Both `(N, C)`; channel 0 (background) is ignored.
    """
    propagated, flow_labels = propagated[:, 1:], flow_labels[:, 1:]
    num_layers = propagated.shape[-1]
    mass = 0.5 * (jnp.sum(propagated) + jnp.sum(flow_labels))
    return jnp.sum(jnp.abs(flow_labels - propagated)) / num_layers / (mass + MASS_EPS)


def empty_context(anchor_features: jax.Array, anchor_labels: jax.Array, window: int):
    """Context buffer with the anchor in slot 0 and `window` empty slots."""
    features = jnp.zeros((window + 1,) + anchor_features.shape, anchor_features.dtype)
    labels = jnp.zeros((window + 1,) + anchor_labels.shape, anchor_labels.dtype)
    valid = jnp.zeros((window + 1,), bool).at[0].set(True)
    return features.at[0].set(anchor_features), labels.at[0].set(anchor_labels), valid


@functools.partial(jax.jit, donate_argnums=(0,),
                   static_argnames=("grid_hw", "topk", "temperature", "radius", "push_flow"))
def _propagation_step(context, target_features, target_flow_labels, mean_error, slot, *,
                      grid_hw, topk, temperature, radius, push_flow):
    """One frame: propagate from the context, measure the error, push the frame's labels."""
    features, labels, valid = context
    propagated = propagate_labels(target_features, features, labels, valid, grid_hw, topk=topk,
                                  temperature=temperature, radius=radius)  # (N, C)
    error = label_disagreement(propagated, target_flow_labels)
    if push_flow:  # consistency pass: the context holds flow masks, never propagated ones
        pushed = target_flow_labels
    else:  # dynamic refinement
        pushed = jnp.where(error < mean_error, 0.5 * (propagated + target_flow_labels), propagated)
    context = (features.at[slot].set(target_features), labels.at[slot].set(pushed),
               valid.at[slot].set(True))
    return context, propagated, error


def _run_pass(features: jax.Array, flow_labels: jax.Array, order: Iterable[int], window: int,
              mean_error: float, push_flow: bool, grid_hw: tuple[int, int], topk: int,
              temperature: float, radius: int):
    """Propagates along `order` (first entry = anchor).  Returns {frame: (labels, error)}."""
    order = list(order)
    anchor = order[0]
    context = empty_context(features[anchor], flow_labels[anchor], window)
    results = {}
    for step, frame in enumerate(order[1:]):
        slot = 1 + step % window  # the oldest of the previous frames is replaced
        context, propagated, error = _propagation_step(
            context, features[frame], flow_labels[frame], jnp.float32(mean_error),
            jnp.int32(slot), grid_hw=grid_hw, topk=topk, temperature=temperature,
            radius=radius, push_flow=push_flow)
        results[frame] = (propagated, error)
    return results


def consistency_errors(features: jax.Array, flow_labels: jax.Array, grid_hw: tuple[int, int],
                       *, window: int = 3, topk: int = 5, temperature: float = 0.1,
                       radius: int = 12) -> np.ndarray:
    """Errors `(T-1,)` of frames 1..T-1 against propagation from frame 0 + previous flow masks.

    Args:
      features: `(T, N, D)` l2-normalised patch features.
      flow_labels: `(T, N, C)` one-hot flow-mask labels on the patch grid.
    """
    results = _run_pass(features, flow_labels, range(len(features)), window, 0.0, True,
                        grid_hw, topk, temperature, radius)
    return np.asarray([float(results[t][1]) for t in range(1, len(features))], np.float64)


def propagate_from_keyframe(features: jax.Array, flow_labels: jax.Array, key_frame: int,
                            mean_error: float, grid_hw: tuple[int, int], *, window: int = 7,
                            topk: int = 5, temperature: float = 0.1,
                            radius: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Bi-directional propagation with dynamic refinement from `key_frame`.

    Returns:
      soft labels `(T, N, C)` (the key frame's flow labels at the key frame) and the error of
      each frame `(T,)` against its flow mask (0 at the key frame).
    """
    num_frames = len(features)
    kwargs = dict(window=window, mean_error=mean_error, push_flow=False, grid_hw=grid_hw,
                  topk=topk, temperature=temperature, radius=radius)
    results = _run_pass(features, flow_labels, range(key_frame, num_frames), **kwargs)
    results.update(_run_pass(features, flow_labels, range(key_frame, -1, -1), **kwargs))
    soft = [np.asarray(flow_labels[t]) if t == key_frame else np.asarray(results[t][0])
            for t in range(num_frames)]
    errors = [0.0 if t == key_frame else float(results[t][1]) for t in range(num_frames)]
    return np.stack(soft), np.asarray(errors, np.float64)
