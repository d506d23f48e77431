"""The contrastive fine-tuning loss of paper App. C (eqs. 7-9): tri-maps, InfoNCE, frame pairs.

For a pair of frames (0, 1) with l2-normalised patch features f0 `(N, D)`, f1 `(N, D)`:

  A = softmax_j(f0_i . f1_j / tau)                          (N, N), tau = 0.07, rows sum to 1

  for each object channel k and anchor patch i in the positive region P0_k of frame 0:
    pos = sum_{j in P1_k} A_ij,   neg = sum_{j in N1_k} A_ij
    l_i = clip(-log(pos / (pos + neg + 1e-8) + 1e-8), 0, 0.65)
  loss0 = sum_{k, i in P0_k} l_i / (|P0| + 1e-8)

and symmetrically loss1 with anchors in frame 1, summing the same A over frame-0 patches (the
official code reuses A's columns without a second softmax); loss = (loss0 + loss1) / 2.  The
0.65 upper bound and the 1e-8 terms are the official `dino_funetuning.py` values.

Tri-maps (official `find_regions`, on the patch grid, i.e. 1 "pixel" = 1 patch = 8 image px):
  positive  = mask eroded with the taps {-1, 0, +1} along x then y (out-of-image taps ignored),
  negative  = NOT (mask dilated with the taps {-5, 0, +5} along x then y),
  uncertain = the rest, a band from 1 patch inside to 5 patches outside the boundary.
The dilation shifts by exactly 5 patches (not 1..5): for objects at least 5 patches wide this is
the (11 x 11) box dilation; thinner structures leave holes, as in the official code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-8


def _shift(mask: jax.Array, offset: int, axis: int, fill: bool) -> jax.Array:
    """mask shifted so that out[..., i, ...] = mask[..., i - offset, ...]; `fill` outside."""
    size = mask.shape[axis]
    if abs(offset) >= size:
        return jnp.full_like(mask, fill)
    pad = [(0, 0)] * mask.ndim
    pad[axis] = (max(offset, 0), max(-offset, 0))
    padded = jnp.pad(mask, pad, constant_values=fill)
    start = max(-offset, 0)
    return jax.lax.slice_in_dim(padded, start, start + size, axis=axis)


def _taps(mask: jax.Array, distance: int, axis: int, erode: bool) -> jax.Array:
    """AND (erode) or OR (dilate) of the mask with its shifts by -distance, 0, +distance."""
    combine = jnp.logical_and if erode else jnp.logical_or
    # Out-of-image taps are ignored: neutral True for AND, False for OR.
    minus = _shift(mask, distance, axis, fill=erode)
    plus = _shift(mask, -distance, axis, fill=erode)
    return combine(combine(minus, mask), plus)


@functools.partial(jax.jit, static_argnames=("inner", "outer"))
def trimap(masks: jax.Array, inner: int = 1, outer: int = 5) -> tuple[jax.Array, jax.Array]:
    """Positive and negative regions of binary masks `(..., h, w)` (official `find_regions`).

    Returns float32 `(positive, negative)` of the same shape; the uncertain band is the rest.
    """
    masks = masks > 0.5
    eroded = _taps(_taps(masks, inner, -1, erode=True), inner, -2, erode=True)
    dilated = _taps(_taps(masks, outer, -1, erode=False), outer, -2, erode=False)
    return eroded.astype(jnp.float32), jnp.logical_not(dilated).astype(jnp.float32)


def _anchor_loss(positive_mass: jax.Array, negative_mass: jax.Array, anchors: jax.Array,
                 loss_clip: float) -> jax.Array:
    """Clipped -log of the positive fraction, averaged over anchors.  All inputs `(N, K)`."""
    per_anchor = -jnp.log(positive_mass / (positive_mass + negative_mass + EPS) + EPS)
    per_anchor = jnp.clip(per_anchor, 0.0, loss_clip)
    return jnp.sum(per_anchor * anchors) / (jnp.sum(anchors) + EPS)


def pair_infonce_loss(features0: jax.Array, features1: jax.Array,
                      positive0: jax.Array, negative0: jax.Array,
                      positive1: jax.Array, negative1: jax.Array,
                      temperature: float = 0.07, loss_clip: float = 0.65) -> jax.Array:
    """Eqs. 7-9 for one frame pair.

    Args:
      features0, features1: l2-normalised patch features `(N, D)` of the two frames.
      positive0, negative0, positive1, negative1: tri-map regions `(K, N)` per object channel.
      temperature: tau of the affinity softmax.
      loss_clip: upper bound of each anchor's loss.

    Returns:
      the scalar loss (loss0 + loss1) / 2.
    """
    logits = features0 @ features1.T / temperature  # (N0, N1)
    affinity = jax.nn.softmax(logits, axis=1)  # (N0, N1), softmax over frame-1 patches
    loss0 = _anchor_loss(affinity @ positive1.T, affinity @ negative1.T, positive0.T, loss_clip)
    loss1 = _anchor_loss(affinity.T @ positive0.T, affinity.T @ negative0.T, positive1.T,
                         loss_clip)
    return 0.5 * (loss0 + loss1)


def frame_pairs(num_frames: int, max_gap: int) -> np.ndarray:
    """All pairs (t, t + n), n = 1 .. max_gap, as `(P, 2)` int32 (gap-major, like the official)."""
    pairs = [(t, t + gap) for gap in range(1, max_gap + 1) for t in range(num_frames - gap)]
    return np.asarray(pairs, np.int32).reshape(-1, 2)
