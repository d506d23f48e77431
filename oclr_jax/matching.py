"""Hungarian matching of predicted object layers to ground-truth layers (DESIGN.md §3).

The official trainer matches each sample with `scipy.optimize.linear_sum_assignment` on
cost[i, j] = mean over frames and pixels of BCE(sigmoid(prediction layer j), GT layer i), with a
NaN/inf element counted as 10, and then permutes the predicted layers (and their order values)
into the GT order.  Two exact solvers are offered:

- `permutations` (default): enumerates the K! assignments on device; exact, no host round
  trip, cheap for the official K = 3 (6 candidates).
- `scipy`: `linear_sum_assignment` on the host through `jax.pure_callback`, for any K.  Under a
  mesh it runs inside `shard_map`, so every device solves only its own samples and the cost is
  never gathered to one device.

Ties may be broken differently by the two solvers; the total cost is the same.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from oclr_jax import losses

MATCHERS = ("permutations", "scipy")
NONFINITE_COST = 10.0  # official value for NaN/inf BCE elements.
_MAX_PERMUTATION_LAYERS = 7  # 5040 candidates; beyond that use scipy.


def matching_cost(amodal_logits: jnp.ndarray, gt_amodal: jnp.ndarray) -> jnp.ndarray:
    """(B, T, h, w, K) logits and (B, T, H, W, K) GT -> cost (B, K_gt, K_pred), no gradient.

    The GT is resized (nearest) to the prediction size and clamped to [0, 1], as officially.
    """
    amodal_logits = jax.lax.stop_gradient(amodal_logits)
    gt = jnp.clip(losses.resize_masks_nearest(gt_amodal, amodal_logits.shape[2:4]), 0.0, 1.0)
    probs = jax.nn.sigmoid(amodal_logits)
    log_p = losses.clamped_log(probs)[..., None, :]  # (B, T, h, w, 1, K_pred)
    log_not_p = losses.clamped_log(1.0 - probs)[..., None, :]
    gt = gt[..., :, None]  # (B, T, h, w, K_gt, 1)
    bce = -(gt * log_p + (1.0 - gt) * log_not_p)
    bce = jnp.where(jnp.isfinite(bce), bce, NONFINITE_COST)
    return jnp.mean(bce, axis=(1, 2, 3))


@functools.lru_cache(maxsize=None)
def _permutation_table(num_layers: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(num_layers))), dtype=np.int32)


def permutation_assignment(cost: jnp.ndarray) -> jnp.ndarray:
    """Exact minimum-cost assignment by enumeration.  cost (B, K, K) -> (B, K) int32.

    `result[b, i]` is the predicted layer assigned to GT layer i.  Among equal totals the
    lexicographically first permutation wins.
    """
    num_layers = cost.shape[-1]
    if num_layers > _MAX_PERMUTATION_LAYERS:
        raise ValueError(f"the permutation matcher enumerates K! assignments; K={num_layers} is "
                         f"too many (max {_MAX_PERMUTATION_LAYERS}): use matcher='scipy'")
    table = _permutation_table(num_layers)  # (P, K)
    totals = jnp.sum(cost[:, np.arange(num_layers)[None, :], table], axis=-1)  # (B, P)
    return jnp.asarray(table)[jnp.argmin(totals, axis=-1)]


def _scipy_assign_host(cost: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment  # host only; not needed on device paths.

    cost = np.asarray(cost, dtype=np.float64)
    result = np.empty(cost.shape[:-1], dtype=np.int32)
    for index in np.ndindex(*cost.shape[:-2]):
        rows, cols = linear_sum_assignment(cost[index])
        result[index][rows] = cols
    return result


def scipy_assignment(cost: jnp.ndarray) -> jnp.ndarray:
    """`linear_sum_assignment` per sample on the host.  cost (B, K, K) -> (B, K) int32."""
    out = jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32)
    return jax.pure_callback(_scipy_assign_host, out, jax.lax.stop_gradient(cost),
                             vmap_method="expand_dims")


def make_assigner(method: str, mesh: Optional[Mesh] = None,
                  data_axis: str = "data") -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The solver named by `config.loss.matcher`.  With a mesh, the scipy solver runs per
    device on that device's samples (the batch axis of the cost must be sharded over
    `data_axis`)."""
    if method == "permutations":
        return permutation_assignment
    if method != "scipy":
        raise ValueError(f"unknown matcher {method!r}; expected one of {MATCHERS}")
    if mesh is None or mesh.size == 1:
        return scipy_assignment
    spec = PartitionSpec(data_axis)
    return jax.shard_map(scipy_assignment, mesh=mesh, in_specs=spec, out_specs=spec)


def permute_layers(values: jnp.ndarray, assignment: jnp.ndarray) -> jnp.ndarray:
    """Reorders the last (layer) axis of (B, ..., K) values so channel i is prediction
    `assignment[b, i]`."""
    index = assignment.reshape(assignment.shape[:1] + (1,) * (values.ndim - 2)
                               + assignment.shape[1:])
    return jnp.take_along_axis(values, index, axis=-1)


def match_predictions(amodal_logits: jnp.ndarray, order_logits: jnp.ndarray,
                      gt_amodal: jnp.ndarray, assigner: Callable = permutation_assignment):
    """Permutes predicted layers into GT order.  Returns (amodal_logits, order_logits, assignment).

    The assignment carries no gradient; the permuted outputs do.
    """
    assignment = assigner(matching_cost(amodal_logits, gt_amodal))
    assignment = jax.lax.stop_gradient(assignment)
    return (permute_layers(amodal_logits, assignment), permute_layers(order_logits, assignment),
            assignment)


def hungarian_iou(pred_masks: jnp.ndarray, gt_masks: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Official `hungarian_iou` (the Syn-Val metric): per-frame J after an IoU assignment.

    pred_masks, gt_masks (B, T, H, W, K) in [0, 1], thresholded at 0.5.  IoU of an empty union
    is 1.  Layers are assigned once per sample by the frame-mean IoU matrix; each frame's score
    is the mean over GT layers that are non-empty in the sample (0 when none is).
    Returns (per-frame J (B, T), valid (B,) = sample has a non-empty GT layer).
    """
    pred = (pred_masks > 0.5).astype(jnp.float32)
    gt = (gt_masks > 0.5).astype(jnp.float32)
    intersection = jnp.einsum("bthwi,bthwj->btij", gt, pred)  # GT i, prediction j
    union = (jnp.sum(gt, axis=(2, 3))[..., :, None] + jnp.sum(pred, axis=(2, 3))[..., None, :]
             - intersection)
    empty = (union < 1e-6).astype(jnp.float32)
    iou = jnp.clip(intersection / (union + 1e-12) + empty, 0.0, 1.0)  # (B, T, K, K)
    assignment = permutation_assignment(-jnp.mean(iou, axis=1))  # (B, K)
    matched = jnp.take_along_axis(iou, assignment[:, None, :, None], axis=-1)[..., 0]  # (B, T, K)
    num_pixels = math.prod(gt_masks.shape[1:4])
    exists = jnp.sum(gt_masks, axis=(1, 2, 3)) / num_pixels > 1e-6  # (B, K)
    count = jnp.sum(exists, axis=-1)  # (B,)
    per_frame = jnp.sum(matched * exists[:, None, :], axis=-1) / jnp.maximum(count, 1)[:, None]
    return per_frame, count > 0
