"""tta/loss.py: tri-maps and the InfoNCE of eqs. 7-9 against independent numpy computations."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oclr_jax.tta.loss import frame_pairs, pair_infonce_loss, trimap


def _numpy_trimap(mask, inner=1, outer=5):
    """Per pixel: positive iff all in-image taps {-inner,0,inner}^2 are inside the mask;
    negative iff no in-image tap of {-outer,0,outer}^2 is inside the mask."""
    h, w = mask.shape
    positive = np.zeros((h, w), np.float32)
    negative = np.zeros((h, w), np.float32)
    for y, x in itertools.product(range(h), range(w)):
        def taps(d):
            return [mask[y + dy, x + dx] for dy in (-d, 0, d) for dx in (-d, 0, d)
                    if 0 <= y + dy < h and 0 <= x + dx < w]
        positive[y, x] = all(taps(inner))
        negative[y, x] = not any(taps(outer))
    return positive, negative


def _numpy_loss(f0, f1, pos0, neg0, pos1, neg1, tau=0.07, clip=0.65):
    """Loops over channels and anchors, written from the equations in loss.py's docstring."""
    logits = f0 @ f1.T / tau
    aff = np.exp(logits - logits.max(1, keepdims=True))
    aff /= aff.sum(1, keepdims=True)

    def side(anchor_pos, other_pos, other_neg, affinity_rows):
        total, count = 0.0, 0.0
        for k in range(anchor_pos.shape[0]):
            for i in range(anchor_pos.shape[1]):
                if anchor_pos[k, i] == 0:
                    continue
                p = sum(affinity_rows[i][j] for j in range(len(other_pos[k])) if other_pos[k, j])
                n = sum(affinity_rows[i][j] for j in range(len(other_neg[k])) if other_neg[k, j])
                total += min(max(-np.log(p / (p + n + 1e-8) + 1e-8), 0.0), clip)
                count += 1
        return total / (count + 1e-8)

    return 0.5 * (side(pos0, pos1, neg1, aff) + side(pos1, pos0, neg0, aff.T))


@pytest.mark.parametrize("seed", [0, 1])
def test_trimap_matches_numpy_loops(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 14, 19), bool)
    masks[0, 3:10, 4:13] = True  # a box
    masks[1] = rng.random((14, 19)) < 0.3  # scattered pixels
    masks[2, 0:5, 15:19] = True  # touching the border
    positive, negative = trimap(jnp.asarray(masks))
    for k in range(3):
        expected_pos, expected_neg = _numpy_trimap(masks[k])
        np.testing.assert_array_equal(np.asarray(positive[k]), expected_pos)
        np.testing.assert_array_equal(np.asarray(negative[k]), expected_neg)


def test_trimap_band_of_a_box():
    mask = np.zeros((30, 30), bool)
    mask[10:20, 12:18] = True
    positive, negative = (np.asarray(a) for a in trimap(jnp.asarray(mask)))
    assert positive[11:19, 13:17].all() and positive.sum() == 8 * 4  # eroded by 1
    uncertain = 1 - positive - negative
    assert (uncertain >= 0).all()
    # The band reaches 5 patches outside the box (a full 16 x 20 box minus the positives).
    assert negative[5:25, 7:23].sum() == 0 and negative.sum() == 30 * 30 - 20 * 16
    # An empty mask: everything negative, nothing positive.
    pos_empty, neg_empty = trimap(jnp.zeros((6, 6)))
    assert float(pos_empty.sum()) == 0 and float(neg_empty.min()) == 1


def test_trimap_dilation_leaves_holes_for_thin_objects():
    # Official shift-by-exactly-5 dilation: a 1-patch line at column 10 marks columns 5, 10, 15
    # as non-negative but not 6..9 (a true 5-patch dilation would).
    mask = np.zeros((8, 21), bool)
    mask[:, 10] = True
    _, negative = trimap(jnp.asarray(mask))
    assert np.asarray(negative)[:, [5, 10, 15]].sum() == 0
    assert np.asarray(negative)[:, 6:10].all()


def _random_problem(seed, n=24, d=8, k=2):
    rng = np.random.default_rng(seed)
    f0 = rng.normal(size=(n, d))
    f1 = rng.normal(size=(n, d))
    f0 /= np.linalg.norm(f0, axis=1, keepdims=True)
    f1 /= np.linalg.norm(f1, axis=1, keepdims=True)
    masks = rng.random((4, k, n)) < 0.35
    pos0, pos1 = masks[0], masks[1]
    neg0, neg1 = masks[2] & ~pos0, masks[3] & ~pos1
    return [a.astype(np.float32) for a in (f0, f1, pos0, neg0, pos1, neg1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_numpy(seed):
    args = _random_problem(seed)
    ours = float(pair_infonce_loss(*map(jnp.asarray, args)))
    expected = _numpy_loss(*[a.astype(np.float64) for a in args])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_loss_rewards_features_that_separate_object_and_background():
    n = 16
    positive = np.zeros((1, n), np.float32)
    positive[0, :6] = 1
    negative = np.zeros((1, n), np.float32)
    negative[0, 9:] = 1
    object_dir, background_dir = np.eye(4, dtype=np.float32)[:2]
    good = np.where(np.arange(n)[:, None] < 8, object_dir, background_dir)
    bad = np.roll(good, 8, axis=0)  # frame 1's object patches look like background
    loss_good = float(pair_infonce_loss(good, good, positive, negative, positive, negative))
    loss_bad = float(pair_infonce_loss(good, bad, positive, negative, positive, negative))
    assert loss_good < 1e-3
    assert loss_bad == pytest.approx(0.65)  # clipped per anchor


def test_loss_gradient_is_finite_and_clip_stops_it():
    f0, f1, pos0, neg0, pos1, neg1 = map(jnp.asarray, _random_problem(3))
    grad = jax.grad(lambda a: pair_infonce_loss(a, f1, pos0, neg0, pos1, neg1))(f0)
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).sum()) > 0
    # With every anchor above the clip, no gradient flows.
    grad_clipped = jax.grad(lambda a: pair_infonce_loss(a, f1, pos0, neg0, pos1, neg1,
                                                        loss_clip=1e-6))(f0)
    assert float(jnp.abs(grad_clipped).sum()) == 0


def test_frame_pairs():
    pairs = frame_pairs(6, 4)
    assert len(pairs) == 5 + 4 + 3 + 2
    assert set(map(tuple, pairs)) == {(t, t + n) for n in range(1, 5) for t in range(6 - n)}
    assert frame_pairs(3, 4).tolist() == [[0, 1], [1, 2], [0, 2]]
    assert frame_pairs(1, 4).shape == (0, 2)
