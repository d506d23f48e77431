"""Modal composition (eq. 2) and the ground-truth depth rule against independent loops, and
every caller of the ground-truth rule agreeing with it."""

import itertools

import jax.numpy as jnp
import numpy as np

from oclr_jax.compose import (
    compose_modal_back_to_front,
    compose_modal_front_to_back,
    front_to_back,
    ground_truth_modal,
    hard_modal_masks,
)


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
    modal = np.asarray(compose_modal_front_to_back(jnp.asarray(amodal), jnp.array([[1, 0]])))
    assert modal[..., 1].all() and not modal[..., 0].any()


# ----------------------------------------------------------------------------- ground truth

def _loop_ground_truth(amodal):
    """Per pixel: object k is visible where present and no HIGHER channel is."""
    modal = np.zeros_like(amodal, dtype=bool)
    for index in np.ndindex(amodal.shape[:-1]):
        covering = np.flatnonzero(amodal[index])
        if covering.size:
            modal[index + (covering.max(),)] = True
    return modal


def _random_amodal(seed=0, shape=(2, 3, 5, 6, 3)):
    return np.random.default_rng(seed).random(shape) < 0.5


def test_ground_truth_modal_by_hand_and_by_loop():
    amodal = np.zeros((1, 2, 3, 3), bool)
    amodal[0, :, :, 0] = True          # Object 1 everywhere (back).
    amodal[0, 0, :2, 1] = True         # Object 2 top-left.
    amodal[0, 0, 1:, 2] = True         # Object 3 top-right (front).
    label = np.array([[2, 3, 3], [1, 1, 1]])  # Visible object per pixel, by hand.
    modal = ground_truth_modal(amodal)
    for k in range(3):
        np.testing.assert_array_equal(modal[0, ..., k], label == k + 1)
    amodal = _random_amodal()
    np.testing.assert_array_equal(ground_truth_modal(amodal), _loop_ground_truth(amodal))


def test_every_caller_of_the_ground_truth_rule_agrees(tmp_path):
    """numpy bool, jax float under jit, the fixed back-to-front order the loss mixes, the
    train step's Syn-Val modal J, the official-layout reader and the Syn-Val scorer."""
    import jax
    import official_fixtures as fx

    from oclr_jax.data import benchmarks, official_layout
    from oclr_jax.eval import scoring

    amodal = _random_amodal(1)
    expected = _loop_ground_truth(amodal)
    np.testing.assert_array_equal(ground_truth_modal(amodal), expected)
    as_float = jnp.asarray(amodal, jnp.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(ground_truth_modal)(as_float)), expected)
    identity_order = range(amodal.shape[-1])  # back to front = channel order
    np.testing.assert_array_equal(np.asarray(compose_modal_back_to_front(as_float, identity_order)),
                                  expected)

    truth = fx.moving_squares(4, 32, 48, 3, seed=5)
    fx.write_sequence(str(tmp_path), "3_seq", truth)
    read = official_layout.read_sequence(str(tmp_path), "3_seq")
    np.testing.assert_array_equal(read.modal, _loop_ground_truth(read.amodal))
    record = benchmarks.SequenceRecord(
        dataset="synval", name="3_seq", frame_names=tuple(f"{t:05d}" for t in range(4)),
        image_paths=("",) * 4, image_size=(32, 48), flow_dirs={}, flow_paths={},
        annotated=(0, 1, 2, 3), amodal=read.amodal)
    gt, _ = scoring.ground_truth_layers(record, range(4))  # (N, O, H, W)
    np.testing.assert_array_equal(np.moveaxis(gt, 1, -1), _loop_ground_truth(read.amodal))
