"""Hard modal composition (eq. 2) against an independent per-pixel loop."""

import itertools

import jax.numpy as jnp
import numpy as np

from oclr_jax.compose import compose_modal, front_to_back, hard_modal_masks


def _loop_compose(amodal, order_values):
    """Per pixel: the nearest (smallest value; ties -> higher index) covering layer wins."""
    b, t, h, w, k = amodal.shape
    modal = np.zeros_like(amodal, dtype=bool)
    for bi, ti, y, x in itertools.product(range(b), range(t), range(h), range(w)):
        covering = [j for j in range(k) if amodal[bi, ti, y, x, j]]
        if covering:
            winner = min(covering, key=lambda j: (order_values[bi, j], -j))
            modal[bi, ti, y, x, winner] = True
    return modal


def test_hard_modal_matches_loop():
    rng = np.random.RandomState(0)
    logits = rng.randn(3, 2, 5, 6, 3).astype(np.float32)
    order = np.array([[0.3, -1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    modal = np.asarray(hard_modal_masks(jnp.asarray(logits), jnp.asarray(order)))
    expected = _loop_compose(1 / (1 + np.exp(-logits)) > 0.5, order)
    np.testing.assert_array_equal(modal, expected)
    assert modal.sum(-1).max() <= 1


def test_front_to_back_ties_put_higher_index_in_front():
    np.testing.assert_array_equal(front_to_back(jnp.zeros((1, 3))), [[2, 1, 0]])
    np.testing.assert_array_equal(front_to_back(jnp.array([[2.0, -1.0, 0.5]])), [[1, 2, 0]])


def test_full_occluder_hides_everything_behind():
    amodal = np.ones((1, 1, 2, 2, 2), bool)
    modal = np.asarray(compose_modal(jnp.asarray(amodal), jnp.array([[1, 0]])))
    assert modal[..., 1].all() and not modal[..., 0].any()
