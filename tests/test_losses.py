"""Each OCLR loss term against an independent float64 numpy computation written here."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oclr_jax import losses, resample

LOSS_CONFIG = dict(amodal_weight=1.0, boundary_weight=0.2, order_weight=0.05, modal_weight=0.1,
                   boundary_width=3)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _torch_bce(p, y):
    """torch's probability BCE: each log clamped at -100."""
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), -100.0)
        log_q = np.maximum(np.log(1.0 - p), -100.0)
    return -(y * log_p + (1.0 - y) * log_q)


def _strip_by_definition(mask, n):
    """(H, W) binary -> strip: (OR over in-image {0, +-n} offsets, along x then y) minus
    (AND over the same in-image offsets)."""
    height, width = mask.shape
    def combine(image, axis, reduce):
        out = np.zeros_like(image)
        size = image.shape[axis]
        for i in range(size):
            members = [o for o in (i - n, i, i + n) if 0 <= o < size]
            taken = np.take(image, members, axis=axis)
            value = reduce(taken, axis=axis)
            if axis == 1:
                out[:, i] = value
            else:
                out[i, :] = value
        return out
    dilated = combine(combine(mask, 1, np.max), 0, np.max)
    eroded = combine(combine(mask, 1, np.min), 0, np.min)
    assert dilated.shape == (height, width)
    return (dilated - eroded) > 0.5


def _random_masks(rng, shape, density=0.4):
    return (rng.random(shape) < density).astype(np.float32)


def _blob_masks(rng, b, t, h, w, k):
    """Rectangles: large overlapping objects, like synthetic GT."""
    masks = np.zeros((b, t, h, w, k), np.float32)
    for index in np.ndindex(b, t, k):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        masks[index[0], index[1], y0:y0 + rng.integers(2, h // 2 + 1),
              x0:x0 + rng.integers(2, w // 2 + 1), index[2]] = 1.0
    return masks


def test_boundary_strip_matches_definition_on_random_masks():
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, (2, 3, 17, 23, 2), density=0.5)
    strip = np.asarray(losses.boundary_strip(jnp.asarray(masks), 3))
    for b, t, k in np.ndindex(2, 3, 2):
        expected = _strip_by_definition(masks[b, t, :, :, k], 3)
        np.testing.assert_array_equal(strip[b, t, :, :, k].astype(bool), expected)


def test_boundary_strip_single_pixel_and_edge_cases():
    mask = np.zeros((1, 1, 20, 20, 1), np.float32)
    mask[0, 0, 10, 10, 0] = 1
    strip_fn = jax.jit(losses.boundary_strip, static_argnums=1)
    strip = np.asarray(strip_fn(jnp.asarray(mask), 3))[0, 0, :, :, 0]
    # Shift-based: only the pixel and its +-3 offsets (a 3x3 lattice), not a full square.
    expected = np.zeros((20, 20), bool)
    expected[np.ix_([7, 10, 13], [7, 10, 13])] = True
    np.testing.assert_array_equal(strip.astype(bool), expected)
    full = np.ones((1, 2, 12, 12, 1), np.float32)
    assert np.asarray(strip_fn(jnp.asarray(full), 3)).sum() == 0
    # A mask narrower than the shift (image width 3) is left as is by both passes along x.
    thin = _random_masks(np.random.default_rng(1), (1, 1, 9, 3, 1))
    np.testing.assert_array_equal(
        np.asarray(strip_fn(jnp.asarray(thin), 3))[0, 0, :, :, 0].astype(bool),
        _strip_by_definition(thin[0, 0, :, :, 0], 3))


def test_amodal_bce_and_boundary_loss_match_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (2, 3, 16, 24, 3)).astype(np.float32)
    logits[0, 0, :2, :2, 0] = 40.0  # saturated sigmoid: torch's -100 clamp is exercised.
    gt = _blob_masks(rng, 2, 3, 16, 24, 3)
    x = logits.astype(np.float64)  # -log(sigmoid(x)) = log(1 + e^-x), written to not saturate
    expected_bce = np.mean(gt * np.logaddexp(0, -x) + (1 - gt) * np.logaddexp(0, x))
    np.testing.assert_allclose(losses.amodal_bce_loss(logits, gt), expected_bce, rtol=1e-5)

    strip = np.zeros_like(gt, bool)
    for b, t, k in np.ndindex(2, 3, 3):
        strip[b, t, :, :, k] = _strip_by_definition(gt[b, t, :, :, k], 3)
    p32 = _sigmoid(logits).astype(np.float32).astype(np.float64)  # float32 sigmoid saturates.
    elementwise = _torch_bce(p32 * strip, gt * strip)
    expected = elementwise.mean() / (strip.sum() + 1e-12) * strip.size
    np.testing.assert_allclose(losses.boundary_loss(logits, gt, 3), expected, rtol=1e-5)


def _numpy_soft_modal(probs, order):
    """Weighted mix over back-to-front permutations; a layer's modal mask is its amodal mask
    times the product of (1 - mask) of every layer in front of it."""
    b_size, k = order.shape
    perms = list(itertools.permutations(range(k)))
    out = np.zeros_like(probs, np.float64)
    for b in range(b_size):
        weights = []
        for perm in perms:
            w = 1.0
            for i in range(k):
                for j in range(i + 1, k):  # perm[i] is behind perm[j]
                    w *= np.clip(_sigmoid(order[b, perm[i]] - order[b, perm[j]]), 1e-5, 1 - 1e-5)
            weights.append(w)
        weights = np.array(weights) / np.sum(weights)
        for w, perm in zip(weights, perms):
            composed = np.zeros(probs.shape[1:], np.float64)
            for depth, channel in enumerate(perm):
                visible = probs[b, ..., channel].astype(np.float64)
                for front in perm[depth + 1:]:
                    visible = visible * (1.0 - probs[b, ..., front])
                composed[..., channel] = visible
            out[b] += w * composed
    return np.clip(out, 0.0, 1.0)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_modal_soft_loss_matches_numpy(num_layers):
    rng = np.random.default_rng(3 + num_layers)
    logits = rng.normal(0, 2, (2, 2, 8, 8, num_layers)).astype(np.float32)
    order = rng.normal(0, 2, (2, num_layers)).astype(np.float32)
    gt = _blob_masks(rng, 2, 2, 8, 8, num_layers)
    probs = _sigmoid(logits)
    soft = _numpy_soft_modal(probs, order)
    np.testing.assert_allclose(losses.soft_modal_masks(jnp.asarray(probs, jnp.float32), order),
                               soft, atol=1e-5)
    gt_modal = np.zeros_like(gt)
    for k in range(num_layers):  # the higher channel is in front
        gt_modal[..., k] = gt[..., k] * np.prod(1 - gt[..., k + 1:], axis=-1)
    expected = _torch_bce(soft, gt_modal).mean()
    np.testing.assert_allclose(losses.modal_loss(logits, order, gt), expected, rtol=1e-5)


def _numpy_order_loss(order, gt):
    b_size, k = order.shape
    if k == 1:
        return 0.0
    terms = []
    for b in range(b_size):
        for i in range(k):
            for j in range(i + 1, k):
                overlap = np.any(gt[b, ..., i] * gt[b, ..., j] > 0)
                prob = np.clip(_sigmoid(order[b, i] - order[b, j]), 1e-5, 1 - 1e-5)
                terms.append(-np.log(prob) if overlap else 0.0)
    return np.mean(terms)


def test_order_loss_cases():
    rng = np.random.default_rng(4)
    order = rng.normal(0, 3, (3, 3)).astype(np.float32)
    gt = _blob_masks(rng, 3, 2, 16, 16, 3)
    np.testing.assert_allclose(losses.order_loss(order, gt), _numpy_order_loss(order, gt),
                               rtol=1e-5)
    # No overlaps at all: zero.  Disjoint columns per layer.
    disjoint = np.zeros((2, 2, 6, 6, 3), np.float32)
    for k in range(3):
        disjoint[..., 2 * k:2 * k + 2, k] = 1
    assert float(losses.order_loss(order[:2], disjoint)) == 0.0
    # All pairs overlap: every pair counts; a huge margin hits the 1e-5 clamp.
    full = np.ones((1, 1, 4, 4, 3), np.float32)
    extreme = np.array([[100.0, 0.0, -100.0]], np.float32)  # right way round for every pair
    np.testing.assert_allclose(losses.order_loss(-extreme, full), -np.log(1e-5), rtol=1e-5)
    np.testing.assert_allclose(losses.order_loss(extreme, full), -np.log(1 - 1e-5), atol=1e-7)
    # One layer: no pairs.
    assert float(losses.order_loss(order[:, :1], gt[..., :1])) == 0.0
    # Overlap in only one frame still counts.
    one_frame = np.zeros((1, 3, 4, 4, 2), np.float32)
    one_frame[0, 1, 0, 0, :] = 1
    np.testing.assert_allclose(losses.order_loss(np.array([[0.0, 1.0]]), one_frame),
                               -np.log(_sigmoid(-1.0)), rtol=1e-5)


def test_total_loss_weights_and_gt_resize():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, (2, 2, 8, 12, 3)).astype(np.float32)
    order = rng.normal(0, 1, (2, 3)).astype(np.float32)
    gt_full = np.repeat(np.repeat(_blob_masks(rng, 2, 2, 8, 12, 3), 2, axis=2), 2, axis=3)
    total, terms = losses.oclr_losses(logits, order, gt_full, LOSS_CONFIG)
    gt_small = gt_full[:, :, ::2, ::2]  # nearest downsampling by 2 takes the even pixels
    np.testing.assert_allclose(terms["amodal_bce"], losses.amodal_bce_loss(logits, gt_small),
                               rtol=1e-6)
    np.testing.assert_allclose(terms["modal"], losses.modal_loss(logits, order, gt_small),
                               rtol=1e-6)
    expected = (terms["amodal_bce"] + 0.2 * terms["boundary"] + 0.05 * terms["order"]
                + 0.1 * terms["modal"])
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="zero-pad"):
        losses.oclr_losses(logits, order, gt_full[..., :2], LOSS_CONFIG)


def test_nearest_indices_follow_torch_rule():
    # floor(i * in / out) with a float32 scale; e.g. 5 -> 3 takes 0, 1, 3.
    np.testing.assert_array_equal(resample.torch_nearest_indices(5, 3), [0, 1, 3])
    np.testing.assert_array_equal(resample.torch_nearest_indices(3, 6), [0, 0, 1, 1, 2, 2])


def test_losses_and_gradients_finite_on_saturated_and_nonfinite_outputs():
    rng = np.random.default_rng(6)
    gt = _blob_masks(rng, 1, 2, 16, 16, 3)
    logits = rng.normal(0, 1, (1, 2, 16, 16, 3)).astype(np.float32) * 200.0  # saturated
    logits[0, 0, 0, 0, 0] = np.nan
    logits[0, 0, 0, 1, 1] = np.inf
    order = np.array([[np.nan, 1e4, -np.inf]], np.float32)

    def total(logits, order):
        logits = losses.neutralize_nonfinite(logits)
        order = losses.neutralize_nonfinite(order)
        return losses.oclr_losses(logits, order, gt, LOSS_CONFIG)[0]

    value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(logits, order)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in grads)
    # The neutralised elements get no gradient.
    assert grads[0][0, 0, 0, 0, 0] == 0 and grads[1][0, 0] == 0


def test_losses_trace_at_pod_scale_global_batch():
    """A v5e:16x16 pod at 16 paper-size sequences per chip is a global batch of 4096: the
    boundary term's element count (1.06e10) exceeds int32 and once overflowed when traced.
    Traced abstractly (nothing allocated), with gradients, as the train step does."""
    shape = (4096, 30, 128, 224, 3)
    logits = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    order = jax.ShapeDtypeStruct((4096, 3), jnp.float32)
    gt = jax.ShapeDtypeStruct(shape, jnp.float32)
    grad = jax.grad(lambda a, o, g: losses.oclr_losses(a, o, g, LOSS_CONFIG)[0], argnums=(0, 1))
    out = jax.eval_shape(grad, logits, order, gt)
    assert out[0].shape == shape and out[1].shape == (4096, 3)
