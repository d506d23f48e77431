"""Layer motions: the thin-plate spline against an independent solve, exact inverses."""

import numpy as np
import pytest

from oclr_jax.data.synth import inverse, trajectories
from oclr_jax.data.synth.geometry import apply_homography, homography_flow_grid, pose_homography
from oclr_jax.data.synth.motion import DeformedHomographyMotion, GluedMotion, HomographyMotion, WaveHomographyMotion
from oclr_jax.data.synth.spline import bilinear, cell_table, invert_displacement, min_fold_determinant, thin_plate_field

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
        maps, values, pixels = fast[t]
        assert maps.shape == (box[2] - box[0], box[3] - box[1], 2) and maps.dtype == np.float32
        # Exact coordinates for (at least) every pixel that can sample coverage...
        assert np.all(np.isin(np.flatnonzero(near), pixels)) and np.all(np.diff(pixels) > 0)
        np.testing.assert_allclose(values, exact[pixels], atol=1e-8)
        # ... which the float32 sampling maps hold, rounded.
        np.testing.assert_array_equal(maps.reshape(-1, 2)[pixels], values.astype(np.float32))
        # Every other pixel keeps a guess near the truth, but never one that would sample coverage.
        others = np.setdiff1d(np.arange(len(exact)), pixels)
        guess = maps.reshape(-1, 2)[others]
        np.testing.assert_allclose(guess, exact[others], atol=2.0)
        assert not np.any(np.all((guess > [9, 7]) & (guess < [30, 33]), 1))


def _independent_bilinear(field, spacing, points, frames):
    """The clamped bilinear field at points, from the four nodes' weights."""
    nodes = field
    rows, cols = field.shape[1:3]
    gx = np.clip(points[:, 0] / spacing, 0, cols - 1)
    gy = np.clip(points[:, 1] / spacing, 0, rows - 1)
    ix, iy = np.minimum(gx.astype(int), cols - 2), np.minimum(gy.astype(int), rows - 2)
    fx, fy = (gx - ix)[:, None], (gy - iy)[:, None]
    return ((1 - fx) * (1 - fy) * nodes[frames, iy, ix] + fx * (1 - fy) * nodes[frames, iy, ix + 1]
            + (1 - fx) * fy * nodes[frames, iy + 1, ix] + fx * fy * nodes[frames, iy + 1, ix + 1])


def test_inverse_is_exact_from_poor_guesses_and_beyond_a_clamped_grid():
    """Closed-form solves in the guessed cell, the walk to the right cell and the Newton
    fallback (points beyond a grid whose edge is not zero) all solve c + D(c) = q."""
    spacing = 3.0
    # Edges not zero: clamped, non-zero beyond the grid.  Multiples of 2^-10, so that the
    # table's float32 coefficients (node differences) are exact and match the weights below.
    field = np.round(RNG.uniform(-0.5, 0.5, (2, 9, 11, 2)) * 1024) / 1024
    assert min_fold_determinant(field, spacing) > 0.3
    table = cell_table(field)
    assert not table.zero_border
    canonical = RNG.uniform(-6, 36, (3000, 2))  # the grid spans [0, 30] x [0, 24]
    frames = RNG.integers(0, 2, 3000)
    targets = canonical + _independent_bilinear(field, spacing, canonical, frames)
    for start in (None, canonical + RNG.normal(0, 2.0, canonical.shape)):  # often the wrong cell
        solved = invert_displacement(table, spacing, targets, start, frames)
        np.testing.assert_allclose(solved + _independent_bilinear(field, spacing, solved, frames), targets,
                                   atol=1e-9)
        np.testing.assert_allclose(solved, canonical, atol=1e-8)


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


def test_camera_views_stay_clear_of_the_horizon():
    """The camera tilts about a fixed canonical point while it pans: unchecked, some views
    reached the plane's horizon and the background they look up was 10^12 texels (Syn-Train
    index 632 with seed 0 could not be generated).  Checked independently: every image corner
    maps (np.linalg.solve) to a finite canonical point within a bounded box."""
    corners = np.array([[-0.5, -0.5, 1], [223.5, -0.5, 1], [-0.5, 127.5, 1], [223.5, 127.5, 1]]).T
    flattened = 0
    for seed in range(150):
        camera = trajectories.camera_homographies(np.random.default_rng(seed), 30, (128, 224))
        seen = np.linalg.solve(camera, np.broadcast_to(corners, (30, 3, 4)))  # (T, 3, 4) homogeneous
        centre = np.linalg.solve(camera, np.broadcast_to([[111.5], [63.5], [1.0]], (30, 3, 1)))
        assert np.all(centre[:, 2] > 0) and np.all(seen[:, 2] >= 0.5 * centre[:, 2] - 1e-9)
        points = seen[:, :2] / seen[:, 2:]
        assert np.all(points.max((0, 2)) - points.min((0, 2)) < 1500)
        flattened += trajectories.view_weight_ratio(camera, (128, 224)) < 0.6  # near the limit
    assert flattened > 0  # some cameras did need flattening


@pytest.mark.parametrize("angle", [0.0, 1.0])
def test_pose_homography_maps_the_centre(angle):
    matrix = pose_homography(70, 30, angle, 2.0, 0.0, 0.0, (5, 5))
    np.testing.assert_allclose(apply_homography(matrix, np.array([[5.0, 5.0]])), [[70, 30]])
    np.testing.assert_allclose(apply_homography(matrix, np.array([[6.0, 5.0]])),
                               [[70 + 2 * np.cos(angle), 30 + 2 * np.sin(angle)]], atol=1e-12)
