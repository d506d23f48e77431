"""tta/propagation.py: top-k affinity propagation on clips with a known translation."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from oclr_jax.tta import propagation
from oclr_jax.tta.propagation import (
    consistency_errors,
    label_disagreement,
    neighborhood_mask,
    propagate_from_keyframe,
    propagate_labels,
)

H, W, VISIBLE, DIM = 6, 18, 10, 32  # world grid, visible columns per frame, feature width


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _panning_clip(num_frames, seed=0):
    """A static world of random patch features seen by a camera panning 1 patch per frame.

    Frame t shows world columns t .. t + VISIBLE - 1, so content moves left by one patch per
    frame.  The object is world rows 1..3, columns 7..9.  Returns features (T, N, D), one-hot
    labels (T, N, 2) and the true label maps (T, H, VISIBLE).
    """
    world = _unit(np.random.default_rng(seed).normal(size=(H, W, DIM))).astype(np.float32)
    world_labels = np.zeros((H, W), np.int32)
    world_labels[1:4, 7:10] = 1
    features = np.stack([world[:, t:t + VISIBLE] for t in range(num_frames)])
    labels = np.stack([world_labels[:, t:t + VISIBLE] for t in range(num_frames)])
    one_hot = np.eye(2, dtype=np.float32)[labels]
    return (features.reshape(num_frames, -1, DIM), one_hot.reshape(num_frames, -1, 2), labels)


def _numpy_propagate(target, sources, labels, valid, grid_hw, topk, temperature, radius):
    """Dense loops over target patches, written from the module docstring."""
    h, w = grid_hw
    out = np.zeros((h * w, labels.shape[-1]))
    for n in range(h * w):
        candidates = []
        for s, m in itertools.product(range(len(sources)), range(h * w)):
            near = abs(n // w - m // w) <= radius and abs(n % w - m % w) <= radius
            if valid[s] and near:
                candidates.append((np.exp(target[n] @ sources[s, m] / temperature), s, m))
        threshold = sorted(value for value, _, _ in candidates)[-topk]
        kept = [(value, s, m) for value, s, m in candidates if value >= threshold]
        total = sum(value for value, _, _ in kept)
        for value, s, m in kept:
            out[n] += value / total * labels[s, m]
    return out


def test_neighborhood_mask_matches_loops():
    mask = np.asarray(neighborhood_mask((4, 5), 1))
    for n, m in itertools.product(range(20), range(20)):
        assert mask[n, m] == (abs(n // 5 - m // 5) <= 1 and abs(n % 5 - m % 5) <= 1)
    assert np.asarray(neighborhood_mask((4, 5), 0)).all()  # no restriction


def test_propagate_labels_matches_numpy_reference():
    rng = np.random.default_rng(3)
    grid_hw = (4, 5)
    target = _unit(rng.normal(size=(20, 6))).astype(np.float32)
    sources = _unit(rng.normal(size=(3, 20, 6))).astype(np.float32)
    labels = rng.random((3, 20, 3)).astype(np.float32)
    valid = np.array([True, True, False])
    ours = propagate_labels(jnp.asarray(target), jnp.asarray(sources), jnp.asarray(labels),
                            jnp.asarray(valid), grid_hw, topk=5, temperature=0.1, radius=1)
    expected = _numpy_propagate(target, sources, labels, valid, grid_hw, 5, 0.1, 1)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=1e-6)


def test_one_step_carries_labels_along_the_translation():
    features, one_hot, true_labels = _panning_clip(2)
    propagated = propagate_labels(jnp.asarray(features[1]), jnp.asarray(features[:1]),
                                  jnp.asarray(one_hot[:1]), jnp.ones((1,), bool), (H, VISIBLE),
                                  topk=5, temperature=0.1, radius=3)
    predicted = np.asarray(propagated).argmax(-1).reshape(H, VISIBLE)
    # Every column but the one entering the view has its true match in frame 0.
    np.testing.assert_array_equal(predicted[:, :-1], true_labels[1][:, :-1])
    assert np.asarray(propagated).reshape(H, VISIBLE, 2)[1:4, 6:9, 1].min() > 0.9


def test_label_disagreement_official_normalisation():
    flow = np.zeros((6, 3), np.float32)
    flow[:2, 1] = 1  # layer 0: 2 patches
    propagated = np.zeros((6, 3), np.float32)
    propagated[1:3, 1] = 1  # shifted by one patch
    # L1 = 2 over K=2 layers, mean mass 2 -> 2 / 2 / 2.
    assert float(label_disagreement(jnp.asarray(propagated), jnp.asarray(flow))) == \
        pytest.approx(0.5, rel=1e-5)
    assert float(label_disagreement(jnp.asarray(flow), jnp.asarray(flow))) == 0.0


def test_consistency_errors_flag_the_corrupted_frame():
    features, one_hot, _ = _panning_clip(7)
    corrupted = one_hot.copy().reshape(7, H, VISIBLE, 2)
    corrupted[4] = np.roll(corrupted[4], 3, axis=1)  # frame 4's flow mask is off by 3 patches
    errors = consistency_errors(jnp.asarray(features),
                                jnp.asarray(corrupted.reshape(7, -1, 2)), (H, VISIBLE),
                                window=3, topk=5, temperature=0.1, radius=4)
    assert errors.shape == (6,)
    assert int(np.argmax(errors)) == 3  # frame 4
    # Frames before it only err on the column entering the view; frames after it have frame
    # 4's wrong flow mask among their sources (the consistency pass pushes flow masks).
    assert errors[3] > 4 * errors[:3].max()
    assert errors[4:].min() > errors[:3].max()


def test_refinement_recovers_a_corrupted_frame_in_both_directions():
    features, one_hot, true_labels = _panning_clip(8)
    corrupted = one_hot.copy().reshape(8, H, VISIBLE, 2)
    for frame in (1, 6):  # one wrong flow mask on each side of the key frame
        corrupted[frame] = np.roll(corrupted[frame], 3, axis=1)
    soft, errors = propagate_from_keyframe(
        jnp.asarray(features), jnp.asarray(corrupted.reshape(8, -1, 2)), key_frame=3,
        mean_error=0.3, grid_hw=(H, VISIBLE), window=7, topk=5, temperature=0.1, radius=4)
    predicted = soft.argmax(-1).reshape(8, H, VISIBLE)
    np.testing.assert_array_equal(predicted[3], true_labels[3])  # key frame: its flow mask
    for frame in range(8):
        # Only content seen in the key frame (world columns 3..12) has a chain of true
        # correspondences; columns entering the view later get labels from random matches.
        columns = slice(max(3 - frame, 0), 3 - frame + VISIBLE)
        np.testing.assert_array_equal(predicted[frame][:, columns],
                                      true_labels[frame][:, columns], err_msg=f"frame {frame}")
    assert errors[1] > 0.3 and errors[6] > 0.3 and errors[3] == 0


def test_dynamic_refinement_pushes_the_average_only_below_the_threshold():
    features, one_hot, _ = _panning_clip(2)
    flow_next = np.roll(one_hot[1].reshape(H, VISIBLE, 2), 1, axis=1).reshape(-1, 2)
    for mean_error, expect_average in ((10.0, True), (0.0, False)):
        context = propagation.empty_context(jnp.asarray(features[0]), jnp.asarray(one_hot[0]), 2)
        context, propagated, _ = propagation._propagation_step(
            context, jnp.asarray(features[1]), jnp.asarray(flow_next), jnp.float32(mean_error),
            jnp.int32(1), grid_hw=(H, VISIBLE), topk=5, temperature=0.1, radius=3,
            push_flow=False)
        pushed = np.asarray(context[1][1])
        expected = 0.5 * (np.asarray(propagated) + flow_next) if expect_average else propagated
        np.testing.assert_allclose(pushed, expected, atol=1e-6)
        assert np.asarray(context[2]).tolist() == [True, True, False]
