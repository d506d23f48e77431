"""Layer motions: the thin-plate spline against an independent solve, exact inverses."""

import numpy as np
import pytest

from oclr_jax.data.synth import inverse
from oclr_jax.data.synth.geometry import apply_homography, homography_flow_grid, pose_homography
from oclr_jax.data.synth.motion import (DeformedHomographyMotion, GluedMotion, HomographyMotion,
                                        WaveHomographyMotion)
from oclr_jax.data.synth.spline import bilinear, min_fold_determinant, thin_plate_field

RNG = np.random.default_rng(0)


def _independent_tps(control, values, points):
    """Thin-plate spline with U(r) = r^2 log r in raw texel units, solved from scratch."""
    def kernel(a, b):
        r = np.linalg.norm(a[:, None] - b[None], axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r > 0, r**2 * np.log(r), 0.0)

    k = len(control)
    p = np.hstack([np.ones((k, 1)), control])
    system = np.block([[kernel(control, control), p], [p.T, np.zeros((3, 3))]])
    coefficients = np.linalg.solve(system, np.vstack([values, np.zeros((3, values.shape[1]))]))
    basis = np.hstack([kernel(points, control), np.ones((len(points), 1)), points])
    return basis @ coefficients


def test_thin_plate_field_matches_an_independent_spline():
    size, spacing, border = 41, 2, 6.0
    grid = (size - 1) // spacing + 1
    control = np.array([[10, 12], [30, 10], [20, 28], [32, 30], [14, 24]], float)
    control = np.vstack([control, [[0, 0], [40, 0], [0, 40], [40, 40]]])  # corner anchors
    displacement = RNG.uniform(-1.5, 1.5, (3, len(control), 2))
    displacement[:, -4:] = 0
    field = thin_plate_field(control, displacement, (grid, grid), spacing, border, min_jacobian=-np.inf)
    ys, xs = np.mgrid[0:grid, 0:grid] * spacing
    nodes = np.stack([xs.ravel(), ys.ravel()], 1).astype(float)
    interior = np.all((nodes >= border) & (nodes <= size - 1 - border), 1)  # fade == 1 there
    for t in range(3):
        expected = _independent_tps(control, displacement[t], nodes)
        np.testing.assert_allclose(field[t].reshape(-1, 2)[interior], expected[interior], atol=1e-9)
        # Control points on grid nodes are interpolated exactly.
        np.testing.assert_allclose(bilinear(field[t], spacing, control[:5]), displacement[t, :5], atol=1e-9)
    # The fade makes the field vanish on the canvas edge.
    assert np.abs(field[:, 0]).max() == 0 and np.abs(field[:, :, -1]).max() == 0


def test_folding_deformations_are_scaled_down():
    control = np.array([[10, 10], [14, 10], [12, 14], [0, 0], [30, 0], [0, 30], [30, 30]], float)
    wild = np.zeros((1, 7, 2))
    wild[0, 0] = [9, 0]  # pushes a point past its neighbour: a fold
    field = thin_plate_field(control, wild, (31, 31), 1, 5.0)
    assert min_fold_determinant(field, 1) >= 0.3
    assert np.abs(field).max() > 0  # scaled, not dropped


def _deformed_motion(frames=2):
    control = np.array([[12, 12], [28, 14], [20, 28], [0, 0], [40, 0], [0, 40], [40, 40]], float)
    displacement = RNG.uniform(-3, 3, (frames, 7, 2))
    displacement[:, 3:] = 0
    field = thin_plate_field(control, displacement, (21, 21), 2, 6.0)
    poses = np.stack([pose_homography(60 + 3 * t, 40, 0.3 + 0.05 * t, 1.3, 2e-3, -1e-3, (20, 20))
                      for t in range(frames)])
    return DeformedHomographyMotion(poses, field, 2.0)


def test_deformed_motion_inverse_is_exact():
    motion = _deformed_motion()
    canonical = RNG.uniform(-5, 45, (500, 2))  # also beyond the canvas
    image = motion.forward(1, canonical)
    np.testing.assert_allclose(motion.inverse(1, image), canonical, atol=1e-8)
    pixels = RNG.uniform(20, 100, (500, 2))
    np.testing.assert_allclose(motion.forward(0, motion.inverse(0, pixels)), pixels, atol=1e-8)


def test_fast_box_inverse_is_exact_where_the_sprite_can_cover():
    motion = _deformed_motion()
    alpha = np.zeros((41, 41), np.uint8)
    alpha[8:33, 10:30] = 255
    distance = inverse.support_distance(alpha)
    boxes = {0: (12, 24, 75, 100), 1: (10, 20, 80, 110)}
    fast = inverse.deformed_canonical_boxes(motion, distance, np.eye(3), boxes)
    for t, box in boxes.items():
        ys, xs = np.mgrid[box[0]:box[2], box[1]:box[3]]
        exact = motion.inverse(t, np.stack([xs.ravel(), ys.ravel()], 1).astype(float))
        # Bilinear sampling at c touches texels floor(c) and floor(c) + 1: coverage is possible
        # exactly for c in (9, 30) x (7, 33).
        near = np.all((exact > [9, 7]) & (exact < [30, 33]), 1)
        assert near.sum() > 500
        np.testing.assert_allclose(fast[t][near], exact[near], atol=1e-8)
        # Every other pixel keeps a guess, but never one that would sample coverage.
        guess = fast[t][~near]
        assert not np.any(np.all((guess > [9, 7]) & (guess < [30, 33]), 1))


def test_per_point_frames_match_per_frame_calls():
    motion = _deformed_motion(frames=3)
    points = RNG.uniform(30, 90, (60, 2))
    frames = RNG.integers(0, 3, 60)
    batched = motion.inverse_at(frames, points)
    for t in range(3):
        np.testing.assert_allclose(batched[frames == t], motion.inverse(t, points[frames == t]), atol=1e-9)
        np.testing.assert_allclose(motion.forward_at(frames, batched)[frames == t],
                                   motion.forward(t, batched[frames == t]), atol=1e-9)


def test_wave_and_glued_motions_round_trip():
    waves = np.array([[2.0, 0.05, 0.3, 1.5, 0.07, 1.0]] * 2)
    homographies = np.stack([pose_homography(10, 5, 0.1, 0.9, 1e-3, 0, (50, 40))] * 2)
    wave = WaveHomographyMotion(homographies, waves)
    canonical = RNG.uniform(0, 100, (300, 2))
    np.testing.assert_allclose(wave.inverse(0, wave.forward(0, canonical)), canonical, atol=1e-4)
    glued = GluedMotion(wave, pose_homography(30, 20, 0.5, 0.7, 0, 0, (5, 5)))
    own = RNG.uniform(0, 10, (50, 2))
    np.testing.assert_allclose(glued.inverse(1, glued.forward(1, own)), own, atol=1e-4)
    assert glued.homography(0) is None
    flat = GluedMotion(HomographyMotion(homographies), np.eye(3))
    np.testing.assert_allclose(flat.homography(1), homographies[1])


def test_homography_flow_grid_matches_point_mapping():
    relative = pose_homography(1.5, -2.0, 0.02, 1.01, 1e-4, -2e-4, (10, 8))
    flow = np.zeros((9, 13, 2), np.float32)
    ys, xs = np.mgrid[0:9, 0:13]
    pixels = np.stack([xs.ravel(), ys.ravel()], 1).astype(float)
    homography_flow_grid(relative, pixels, flow)
    homogeneous = np.hstack([pixels, np.ones((len(pixels), 1))]) @ relative.T  # independent
    expected = homogeneous[:, :2] / homogeneous[:, 2:] - pixels
    np.testing.assert_allclose(flow.reshape(-1, 2), expected, atol=1e-5)


@pytest.mark.parametrize("angle", [0.0, 1.0])
def test_pose_homography_maps_the_centre(angle):
    matrix = pose_homography(70, 30, angle, 2.0, 0.0, 0.0, (5, 5))
    np.testing.assert_allclose(apply_homography(matrix, np.array([[5.0, 5.0]])), [[70, 30]])
    np.testing.assert_allclose(apply_homography(matrix, np.array([[6.0, 5.0]])),
                               [[70 + 2 * np.cos(angle), 30 + 2 * np.sin(angle)]], atol=1e-12)
