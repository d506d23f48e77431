"""Hungarian matching: cost against numpy, both solvers against scipy by total cost, under jit,
vmap and an 8-device mesh, and the layer permutation itself."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from oclr_jax import matching, sharding


def _total(cost, assignment):
    rows = np.arange(cost.shape[-1])
    return np.array([cost[b, rows, assignment[b]].sum() for b in range(cost.shape[0])])


def _scipy_totals(cost):
    return np.array([c[linear_sum_assignment(c)].sum() for c in np.asarray(cost, np.float64)])


def test_matching_cost_matches_numpy_bce_with_nonfinite_elements():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (2, 3, 6, 8, 3)).astype(np.float32)
    gt = (rng.random((2, 3, 6, 8, 3)) < 0.4).astype(np.float32)
    gt[1, 0, 0, 0, 2] = np.nan  # a NaN GT element costs 10 in every entry of its row
    cost = np.asarray(matching.matching_cost(logits, gt))
    p = (1.0 / (1.0 + np.exp(-logits.astype(np.float64))))
    expected = np.zeros((2, 3, 3))
    for b, i, j in itertools.product(range(2), range(3), range(3)):
        y = np.clip(gt[b, ..., i].astype(np.float64), 0, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            bce = -(y * np.maximum(np.log(p[b, ..., j]), -100)
                    + (1 - y) * np.maximum(np.log(1 - p[b, ..., j]), -100))
        bce[~np.isfinite(bce)] = 10.0
        expected[b, i, j] = bce.mean()
    np.testing.assert_allclose(cost, expected, rtol=1e-4)


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4, 5])
def test_permutation_and_scipy_solvers_reach_scipy_total(num_layers):
    rng = np.random.default_rng(num_layers)
    cost = rng.random((16, num_layers, num_layers)).astype(np.float32)
    cost[0] = 1.0  # all ties
    expected = _scipy_totals(cost)
    for solver in (matching.permutation_assignment, matching.scipy_assignment):
        assignment = np.asarray(jax.jit(solver)(cost))
        for row in assignment:  # a permutation of the layers
            np.testing.assert_array_equal(np.sort(row), np.arange(num_layers))
        np.testing.assert_allclose(_total(cost, assignment), expected, rtol=1e-6)


def test_solvers_agree_on_assignment_without_ties_and_under_vmap():
    rng = np.random.default_rng(7)
    cost = rng.random((5, 4, 3, 3)).astype(np.float32)
    by_permutations = jax.vmap(matching.permutation_assignment)(cost)
    by_scipy = jax.jit(jax.vmap(matching.scipy_assignment))(cost)
    np.testing.assert_array_equal(by_permutations, by_scipy)


@pytest.mark.parametrize("batch", [8, 24])
def test_scipy_solver_under_an_8_device_mesh(batch):
    mesh = sharding.make_data_mesh()
    assert mesh.size == 8, "conftest sets 8 fake CPU devices"
    rng = np.random.default_rng(batch)
    cost = jax.device_put(rng.random((batch, 3, 3)).astype(np.float32),
                          sharding.batch_sharded(mesh))
    assign = jax.jit(matching.make_assigner("scipy", mesh))
    result = assign(cost)
    np.testing.assert_array_equal(result, matching.permutation_assignment(np.asarray(cost)))
    assert result.sharding.spec == sharding.batch_sharded(mesh).spec  # solved where it lives


def test_make_assigner_rejects_unknown_and_large_k():
    with pytest.raises(ValueError, match="unknown matcher"):
        matching.make_assigner("greedy")
    with pytest.raises(ValueError, match="use matcher='scipy'"):
        matching.permutation_assignment(jnp.zeros((1, 8, 8)))


def test_match_predictions_recovers_a_shuffled_layer_order_and_keeps_gradients():
    rng = np.random.default_rng(3)
    gt = (rng.random((2, 2, 8, 8, 3)) < 0.5).astype(np.float32)
    shuffles = np.array([[2, 0, 1], [1, 2, 0]])
    # Prediction layer j is GT layer shuffles[b, j], as confident logits.
    logits = np.stack([(gt[b][..., shuffles[b]] * 2 - 1) * 6 for b in range(2)]).astype(np.float32)
    order = np.array([[10.0, 20.0, 30.0], [1.0, 2.0, 3.0]], np.float32)
    for name in matching.MATCHERS:
        matched_logits, matched_order, assignment = matching.match_predictions(
            logits, order, gt, matching.make_assigner(name))
        np.testing.assert_array_equal(assignment, np.argsort(shuffles, axis=1))
        np.testing.assert_array_equal(np.asarray(matched_logits) > 0, gt > 0.5)
        np.testing.assert_array_equal(matched_order,
                                      np.take_along_axis(order, np.argsort(shuffles, 1), 1))

    def summed(logits):
        matched, _, _ = matching.match_predictions(logits, order, gt)
        return jnp.sum(matched[..., 0])  # depends only on the layer matched to GT 0

    grad = np.asarray(jax.grad(summed)(logits))
    for b in range(2):
        source = int(np.argsort(shuffles[b])[0])
        assert np.all(grad[b, ..., source] == 1) and np.all(np.delete(grad[b], source, -1) == 0)


def test_hungarian_iou_official_rules():
    gt = np.zeros((1, 2, 4, 4, 3), np.float32)
    gt[0, :, :2, :, 0] = 1  # layer 0: top half; layer 1: bottom-left; layer 2 empty
    gt[0, :, 2:, :2, 1] = 1
    pred = np.zeros_like(gt)
    pred[0, :, 2:, :2, 2] = 0.9  # GT 1 predicted on channel 2
    pred[0, 0, :2, :, 1] = 0.8   # GT 0 predicted on channel 1, frame 0 only
    per_frame, valid = matching.hungarian_iou(pred, gt)
    # Frame 0: GT0 IoU 1, GT1 IoU 1 -> 1; frame 1: GT0 IoU 0 -> 0.5.  GT 2 is empty: not counted.
    np.testing.assert_allclose(per_frame, [[1.0, 0.5]])
    assert bool(valid[0])
    per_frame, valid = matching.hungarian_iou(pred, np.zeros_like(gt))
    np.testing.assert_allclose(per_frame, [[0.0, 0.0]])
    assert not bool(valid[0])
