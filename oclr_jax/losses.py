"""OCLR training losses, equal to the official `utils.py` criteria (DESIGN.md §3).

All tensors are NHWC: amodal logits / masks `(B, T, H, W, K)`, order logits `(B, K)` (the
official model repeats them over T; every official mean over T of a repeated value is the value
itself).  Ground truth channel k holds object k+1 and a **higher channel is in front**; a smaller
order logit means nearer the camera.

Probability-space BCE follows `torch.nn.functional.binary_cross_entropy`: each log is clamped
at -100, so exact 0/1 probabilities give finite losses (and, here, finite gradients).
"""

from __future__ import annotations

import itertools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oclr_jax.compose import compose_modal_back_to_front, ground_truth_modal
from oclr_jax.resample import torch_nearest_indices

# torch clamps log(p) at -100.  Below float32's smallest normal number we return -100 directly,
# so neither a flushed denormal nor 1/p overflows in the backward pass (torch would give log(p)
# in (-100, -87.3) there; the difference is immaterial).
_LOG_CLAMP = -100.0
_TINY = float(np.finfo(np.float32).tiny)
_ORDER_PROB_CLAMP = 1e-5  # official clamp of sigmoid(order difference).
TERM_NAMES = ("amodal_bce", "boundary", "order", "modal")


def neutralize_nonfinite(x: jnp.ndarray) -> jnp.ndarray:
    """NaN and +-inf -> 0, as the official training loop does to both model outputs."""
    return jnp.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def clip_like_torch(x: jnp.ndarray, low: float, high: float) -> jnp.ndarray:
    """`torch.clamp`: the gradient passes where low <= x <= high (jnp.clip halves it at ties)."""
    return jnp.where(x < low, low, jnp.where(x > high, high, x))


def clamped_log(x: jnp.ndarray) -> jnp.ndarray:
    """`max(log(x), -100)` with a finite gradient everywhere (x in [0, 1])."""
    usable = x >= _TINY
    return jnp.where(usable, jnp.log(jnp.where(usable, x, 1.0)), _LOG_CLAMP)


def binary_cross_entropy(probs: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Elementwise `F.binary_cross_entropy(probs, targets, reduction='none')`."""
    return -(targets * clamped_log(probs) + (1.0 - targets) * clamped_log(1.0 - probs))


def binary_cross_entropy_with_logits(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Elementwise `F.binary_cross_entropy_with_logits` (the stable max/log1p form)."""
    return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def resize_masks_nearest(masks: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
    """(B, T, H, W, K) -> (B, T, h, w, K) by torch's nearest rule; identity when sizes agree."""
    height, width = masks.shape[2:4]
    if (height, width) == tuple(size):
        return masks
    masks = jnp.take(masks, torch_nearest_indices(height, size[0]), axis=2)
    return jnp.take(masks, torch_nearest_indices(width, size[1]), axis=3)


def _shifted_update(x: jnp.ndarray, source: jnp.ndarray, shift: int, axis: int,
                    combine: Callable) -> jnp.ndarray:
    """Official in-place step `x[.., s:] = combine(source[.., :-s], x[.., s:])` (s > 0) or
    `x[.., :s] = combine(source[.., -s:], x[.., :s])` (s < 0) along `axis`."""
    n = x.shape[axis]
    size = n - abs(shift)
    if size <= 0:
        return x
    lead = jax.lax.slice_in_dim
    if shift > 0:
        updated = combine(lead(source, 0, size, axis=axis), lead(x, shift, n, axis=axis))
        return jnp.concatenate([lead(x, 0, shift, axis=axis), updated], axis=axis)
    updated = combine(lead(source, -shift, n, axis=axis), lead(x, 0, size, axis=axis))
    return jnp.concatenate([updated, lead(x, size, n, axis=axis)], axis=axis)


def _union(a, b):
    return jnp.clip(a + b, 0.0, 1.0)


def _intersection(a, b):
    return (((a + b) / 2.0) == 1.0).astype(a.dtype)


def boundary_strip(masks: jnp.ndarray, width: int = 3) -> jnp.ndarray:
    """The official `find_boundary`: shift-dilated minus shift-eroded mask, > 0.5.  (.., H, W, K).

    Shift-based: a pixel is in the dilation when the mask is set at the pixel or exactly
    `width` pixels away along x, then along y (not a full square dilation); the erosion keeps
    a pixel when those shifted neighbours that exist inside the image are all set.  The y steps
    read the x result, and the second step of each axis reads the first, as in the official
    in-place code.
    """
    h_axis, w_axis = masks.ndim - 3, masks.ndim - 2
    dilated = _shifted_update(masks, masks, width, w_axis, _union)
    dilated = _shifted_update(dilated, masks, -width, w_axis, _union)
    dilated = _shifted_update(dilated, dilated, width, h_axis, _union)
    dilated = _shifted_update(dilated, dilated, -width, h_axis, _union)
    eroded = _shifted_update(masks, masks, width, w_axis, _intersection)
    eroded = _shifted_update(eroded, masks, -width, w_axis, _intersection)
    eroded = _shifted_update(eroded, eroded, width, h_axis, _intersection)
    eroded = _shifted_update(eroded, eroded, -width, h_axis, _intersection)
    return ((dilated - eroded) > 0.5).astype(masks.dtype)


def amodal_bce_loss(amodal_logits: jnp.ndarray, gt_amodal: jnp.ndarray) -> jnp.ndarray:
    """Mean BCE-with-logits over every element.  (B, T, H, W, K) each -> scalar."""
    return jnp.mean(binary_cross_entropy_with_logits(amodal_logits, gt_amodal))


def boundary_loss(amodal_logits: jnp.ndarray, gt_amodal: jnp.ndarray, width: int = 3
                  ) -> jnp.ndarray:
    """BCE of `sigmoid(pred) * strip` vs `gt * strip`, renormalised by numel / strip area."""
    strip = jax.lax.stop_gradient(boundary_strip(gt_amodal, width))
    bce = binary_cross_entropy(jax.nn.sigmoid(amodal_logits) * strip, gt_amodal * strip)
    # float: a pod's global batch has more than 2**31 elements (4096 paper-size sequences:
    # 1.06e10), which a Python int would overflow as a jitted int32 constant.
    return jnp.mean(bce) / (jnp.sum(strip) + 1e-12) * float(strip.size)


def order_probabilities(order_logits: jnp.ndarray) -> jnp.ndarray:
    """Normalised weight of every back-to-front permutation (itertools order).  (B, K) -> (B, K!).

    Weight of (a_0, ..., a_{K-1}) = prod_{i<j} clamp(sigmoid(o[a_i] - o[a_j]), 1e-5, 1-1e-5):
    high when each farther layer has the larger order value.
    """
    num_layers = order_logits.shape[-1]
    permutations = np.array(list(itertools.permutations(range(num_layers))))  # (P, K)
    rows, cols = np.triu_indices(num_layers, 1)
    permuted = order_logits[:, permutations]  # (B, P, K)
    differences = permuted[..., rows] - permuted[..., cols]  # (B, P, pairs)
    probs = clip_like_torch(jax.nn.sigmoid(differences), _ORDER_PROB_CLAMP,
                            1.0 - _ORDER_PROB_CLAMP)
    weights = jnp.prod(probs, axis=-1)  # (B, P)
    return weights / jnp.sum(weights, axis=-1, keepdims=True)


def soft_modal_masks(amodal_probs: jnp.ndarray, order_logits: jnp.ndarray) -> jnp.ndarray:
    """Official `amodal_to_modal_soft`: the order-weighted mix of the K! hard compositions.

    amodal_probs (B, T, H, W, K) in [0, 1], order_logits (B, K) -> (B, T, H, W, K) in [0, 1].
    """
    num_layers = amodal_probs.shape[-1]
    weights = order_probabilities(order_logits)  # (B, P)
    mixed = jnp.zeros_like(amodal_probs)
    for index, back_to_front in enumerate(itertools.permutations(range(num_layers))):
        weight = weights[:, index][:, None, None, None, None]
        mixed = mixed + weight * compose_modal_back_to_front(amodal_probs, back_to_front)
    return clip_like_torch(mixed, 0.0, 1.0)


def modal_loss(amodal_logits: jnp.ndarray, order_logits: jnp.ndarray, gt_amodal: jnp.ndarray
               ) -> jnp.ndarray:
    """BCE of the soft-composed modal masks against the GT modal masks (mean)."""
    modal_probs = soft_modal_masks(jax.nn.sigmoid(amodal_logits), order_logits)
    return jnp.mean(binary_cross_entropy(modal_probs, ground_truth_modal(gt_amodal)))


def order_loss(order_logits: jnp.ndarray, gt_amodal: jnp.ndarray) -> jnp.ndarray:
    """Pairwise ranking loss on overlapping GT layer pairs (official `criterion_order`).

    For each pair i < j whose GT amodal masks share a pixel in some frame, layer j is in front:
    loss `-log(clamp(sigmoid(o_i - o_j)))`.  The mean runs over B x all K(K-1)/2 pairs, with
    non-overlapping pairs contributing 0.  K = 1 gives 0.
    """
    num_layers = order_logits.shape[-1]
    if num_layers == 1:
        return jnp.zeros((), jnp.float32)
    rows, cols = np.triu_indices(num_layers, 1)
    # (B, K, K): overlap area summed over frames and pixels.
    overlap = jnp.einsum("bthwi,bthwj->bij", gt_amodal, gt_amodal)
    overlaps = jax.lax.stop_gradient(overlap[:, rows, cols] > 0)  # (B, pairs)
    probs = clip_like_torch(jax.nn.sigmoid(order_logits[:, rows] - order_logits[:, cols]),
                            _ORDER_PROB_CLAMP, 1.0 - _ORDER_PROB_CLAMP)
    return jnp.mean(jnp.where(overlaps, -jnp.log(probs), 0.0))


def oclr_losses(amodal_logits: jnp.ndarray, order_logits: jnp.ndarray, gt_amodal: jnp.ndarray,
                loss_config: Mapping) -> tuple[jnp.ndarray, dict]:
    """Weighted total and every term, for MATCHED predictions (see `matching.py`).

    amodal_logits (B, T, h, w, K), order_logits (B, K), gt_amodal (B, T, H, W, K) with values in
    [0, 1]; the GT is resized (nearest) to (h, w) for the mask terms, while the order loss reads
    it at its own size, as the official code does.
    Returns (total, {'amodal_bce', 'boundary', 'order', 'modal'}): the terms are unweighted.
    """
    if amodal_logits.shape[-1] != gt_amodal.shape[-1]:
        raise ValueError(f"predictions have {amodal_logits.shape[-1]} layers but the ground truth "
                         f"has {gt_amodal.shape[-1]}; zero-pad the GT to K channels")
    gt_resized = resize_masks_nearest(gt_amodal, amodal_logits.shape[2:4])
    terms = {
        "amodal_bce": amodal_bce_loss(amodal_logits, gt_resized),
        "boundary": boundary_loss(amodal_logits, gt_resized, loss_config["boundary_width"]),
        "order": order_loss(order_logits, gt_amodal),
        "modal": modal_loss(amodal_logits, order_logits, gt_resized),
    }
    total = (loss_config["amodal_weight"] * terms["amodal_bce"]
             + loss_config["boundary_weight"] * terms["boundary"]
             + loss_config["order_weight"] * terms["order"]
             + loss_config["modal_weight"] * terms["modal"])
    return total, terms
