"""Random smooth trajectories: camera and object homographies, spline and wave motion.

Speeds are per frame and relative to the image size, so a 64x112 test sequence moves like a
128x224 one; the sequence length only sets how far things get.  An object's own time `tau`
(see `object_time`) stands still during its stationary frames, which freezes its pose and its
deformation relative to the background.
"""

from __future__ import annotations

import numpy as np

from oclr_jax.data.synth.geometry import pose_homography, translation

CAMERA_MAX_SPEED = 0.015  # of the image width per frame
CAMERA_MAX_ROTATION = np.radians(0.6)  # per frame
CAMERA_MAX_ZOOM = 0.01  # log-scale per frame
OBJECT_MAX_SPEED = 0.025  # of the image width per frame
OBJECT_MAX_ROTATION = np.radians(2.5)
OBJECT_MAX_ZOOM = 0.012
MAX_TILT = 0.25  # perspective term times the half-size: up to 25 % foreshortening
MIN_VIEW_WEIGHT = 0.5  # camera views stay this far from the horizon (see `view_weight_ratio`)


def object_time(num_frames: int, stationary_transitions: tuple[int, ...]) -> np.ndarray:
    """`(T,)` own time of an object: +1 per frame, +0 across its stationary transitions."""
    steps = np.ones(max(num_frames - 1, 0))
    steps[list(stationary_transitions)] = 0.0
    return np.concatenate([[0.0], np.cumsum(steps)])


def camera_homographies(rng: np.random.Generator, num_frames: int,
                        image_size: tuple[int, int]) -> np.ndarray:
    """`(T, 3, 3)` background canonical -> image, before the canonical origin is fixed.

    A background texel is one output pixel at frame 0.  Motion: translation with
    acceleration, rotation and zoom about the image centre, and a slowly changing tilt.
    """
    height, width = image_size
    t = np.arange(num_frames, dtype=np.float64)
    velocity = rng.uniform(-1, 1, 2) * CAMERA_MAX_SPEED * width
    acceleration = rng.uniform(-1, 1, 2) * CAMERA_MAX_SPEED * width / max(num_frames, 8)
    shift = velocity[None] * t[:, None] + 0.5 * acceleration[None] * t[:, None] ** 2
    angle = rng.uniform(-1, 1) * CAMERA_MAX_ROTATION * t
    zoom = np.exp(rng.uniform(-1, 1) * CAMERA_MAX_ZOOM * t)
    tilt_start = rng.uniform(-1, 1, 2) * 0.5 * MAX_TILT
    tilt_rate = rng.uniform(-1, 1, 2) * MAX_TILT / max(num_frames, 30)
    tilt = (tilt_start[None] + tilt_rate[None] * t[:, None]) / (np.array([width, height]) / 2)
    centre = ((width - 1) / 2, (height - 1) / 2)

    def poses(tilt):
        return np.stack([pose_homography(centre[0] + shift[i, 0], centre[1] + shift[i, 1], angle[i],
                                         zoom[i], tilt[i, 0], tilt[i, 1], centre)
                         for i in range(num_frames)])

    # The tilt pivots about a fixed canonical point while the view pans away from it: a view
    # that comes close to the plane's horizon would look up a nearly infinite background.
    # Such a sequence's tilt is halved until every frame keeps MIN_VIEW_WEIGHT (others are
    # untouched).
    homographies = poses(tilt)
    for _ in range(16):
        if view_weight_ratio(homographies, image_size) >= MIN_VIEW_WEIGHT:
            break
        tilt = tilt * 0.5
        homographies = poses(tilt)
    return homographies


def view_weight_ratio(homographies: np.ndarray, image_size: tuple[int, int]) -> float:
    """The smallest ratio, over frames and image corners, of the projective weight of the
    image -> canonical map at a corner to that at the image centre: 1 without perspective,
    0 where the horizon enters the view (-inf if the centre looks beyond it)."""
    height, width = image_size
    corners = np.array([[-0.5, -0.5, 1.0], [width - 0.5, -0.5, 1.0], [-0.5, height - 0.5, 1.0],
                        [width - 0.5, height - 0.5, 1.0]])
    weights = np.linalg.inv(homographies)[:, 2]  # (T, 3): the projective row of each inverse
    at_centre = weights @ np.array([(width - 1) / 2, (height - 1) / 2, 1.0])
    if np.any(at_centre <= 0):
        return -np.inf
    return float((weights @ corners.T / at_centre[:, None]).min())


def object_poses(rng: np.random.Generator, tau: np.ndarray, image_size: tuple[int, int],
                 canvas: int, scale: float) -> np.ndarray:
    """`(T, 3, 3)` canonical sprite -> image homographies along the object's own time `tau`.

    `scale` is output pixels per texel at frame 0.  The object's centre travels from a random
    start to a random end inside the central 70 % of the image (closer together if that would
    exceed the top speed), along a gently bowed path, so it stays in view.
    """
    height, width = image_size
    duration = max(float(tau[-1]) if len(tau) else 0.0, 1.0)
    low, high = np.array([0.15 * width, 0.15 * height]), np.array([0.85 * width, 0.85 * height])
    start, end = rng.uniform(low, high), rng.uniform(low, high)
    top_speed = rng.uniform(0.2, 1.0) * OBJECT_MAX_SPEED * width
    distance = np.hypot(*(end - start))
    if distance > top_speed * duration:
        end = start + (end - start) * (top_speed * duration / distance)
    bow = rng.uniform(-1, 1, 2) * 0.1 * min(height, width)
    angle0 = rng.uniform(0, 2 * np.pi)
    spin = rng.uniform(-1, 1) * OBJECT_MAX_ROTATION
    zoom_rate = rng.uniform(-1, 1) * OBJECT_MAX_ZOOM
    half = (canvas - 1) / 2.0
    tilt_start = rng.uniform(-1, 1, 2) * 0.6 * MAX_TILT / half
    tilt_rate = rng.uniform(-1, 1, 2) * MAX_TILT / half / 30.0
    poses = []
    for s in tau:
        progress = s / duration
        position = start + (end - start) * progress + bow * 4 * progress * (1 - progress)
        tilt = np.clip(tilt_start + tilt_rate * s, -MAX_TILT / half, MAX_TILT / half)
        poses.append(pose_homography(position[0], position[1], angle0 + spin * s,
                                     scale * np.exp(zoom_rate * s), tilt[0], tilt[1], (half, half)))
    return np.stack(poses)


def spline_displacements(rng: np.random.Generator, tau: np.ndarray,
                         max_displacement: np.ndarray) -> np.ndarray:
    """`(T, K, 2)` control-point displacements, each within its `max_displacement` radius.

    Each point oscillates along a random ellipse inside its disk, with its own frequency and
    phase, so the deformation changes smoothly from frame to frame.
    """
    num_points = len(max_displacement)
    radius = np.sqrt(rng.random(num_points))  # uniform in the unit disk
    direction = rng.uniform(0, 2 * np.pi, num_points)
    amplitude = np.stack([radius * np.cos(direction), radius * np.sin(direction)], 1)
    frequency = rng.uniform(0.08, 0.35, (num_points, 2))
    phase = rng.uniform(0, 2 * np.pi, (num_points, 2))
    wave = np.sin(frequency[None] * tau[:, None, None] + phase[None])  # (T, K, 2)
    return wave * amplitude[None] * max_displacement[None, :, None]


def wave_parameters(rng: np.random.Generator, num_frames: int, image_size: tuple[int, int]) -> np.ndarray:
    """`(T, 6)` parameters of `WaveHomographyMotion`: non-rigid background ripples whose
    amplitudes swell and fade and whose crests travel."""
    height, width = image_size
    t = np.arange(num_frames, dtype=np.float64)
    rows = []
    for extent in (height, width):
        amplitude = rng.uniform(0.01, 0.03) * extent
        wavelength = rng.uniform(0.4, 1.2) * extent
        swell = amplitude * np.sin(rng.uniform(0.05, 0.2) * t + rng.uniform(0, 2 * np.pi))
        travel = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.15, 0.15) * t
        rows += [swell, np.full_like(t, 2 * np.pi / wavelength), travel]
    return np.stack(rows, 1)


def covering_box(inverse_maps, num_frames: int, image_size: tuple[int, int],
                 margin: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The canonical box that every frame sees: `(shift (3, 3), (height, width))`.

    `inverse_maps(t, points)` takes image points to canonical ones; the image border of each
    frame is sampled densely, so the box covers what any pixel can look up.  `shift` moves
    that box's corner to canonical (0, 0).
    """
    height, width = image_size
    xs = np.linspace(-0.5, width - 0.5, 33)
    ys = np.linspace(-0.5, height - 0.5, 33)
    border = np.concatenate([np.stack([xs, np.full_like(xs, -0.5)], 1),
                             np.stack([xs, np.full_like(xs, height - 0.5)], 1),
                             np.stack([np.full_like(ys, -0.5), ys], 1),
                             np.stack([np.full_like(ys, width - 0.5), ys], 1)])
    seen = np.concatenate([inverse_maps(t, border) for t in range(num_frames)])
    low = np.floor(seen.min(0) - margin)
    high = np.ceil(seen.max(0) + margin)
    size = (int(high[1] - low[1]) + 1, int(high[0] - low[0]) + 1)
    return translation(-low[0], -low[1]), size
