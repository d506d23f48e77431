"""Plane geometry shared by the generator: homographies, poses and pixel grids.

Image coordinates are output pixels with pixel centres at integers (OpenCV's convention);
points are `(N, 2)` float64 arrays of `(x, y)`.
"""

from __future__ import annotations

import cv2
import numpy as np

CHUNK = 16384  # points per vectorised pass: float64 temporaries of 128 KiB stay in the L2 cache


def map_in_chunks(function, points: np.ndarray, *per_point: np.ndarray) -> np.ndarray:
    """`function(points, *per_point) -> (N, ...)` evaluated `CHUNK` points at a time: numpy
    expressions over a whole frame of points spill their temporaries out of the cache."""
    if len(points) <= CHUNK:
        return function(points, *per_point)
    out = None
    for begin in range(0, len(points), CHUNK):
        part = slice(begin, begin + CHUNK)
        values = function(points[part], *(array[part] for array in per_point))
        if out is None:
            out = np.empty((len(points),) + values.shape[1:], values.dtype)
        out[part] = values
    return out


def apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`(N, 2)` float64 points mapped by a `(3, 3)` homography (projective divide).

    OpenCV's `perspectiveTransform` computes in double precision without numpy temporaries
    (several times faster on a full frame of points).
    """
    points = np.ascontiguousarray(points, np.float64)
    if not len(points):
        return points.copy()
    return cv2.perspectiveTransform(points[:, None, :], np.asarray(matrix, np.float64))[:, 0, :]


def homography_flow_grid(relative: np.ndarray, pixels: np.ndarray, out: np.ndarray) -> None:
    """Writes `relative(p) - p` for every pixel centre into `out (H, W, 2)`.

    `pixels` is the `(H*W, 2)` float64 grid of pixel centres (x, y) in row-major order.
    """
    moved = apply_homography(relative, pixels)
    np.subtract(moved, pixels, out=moved)
    out[:] = moved.reshape(out.shape)


def translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def pose_homography(x: float, y: float, angle: float, scale: float, tilt_x: float,
                    tilt_y: float, centre: tuple[float, float]) -> np.ndarray:
    """Canonical -> image: tilt (perspective) about `centre`, scale, rotate, move to (x, y).

    `tilt_x`, `tilt_y` are the perspective terms in units of 1/texel about the centre; keep
    `|tilt_x| * half_width + |tilt_y| * half_height < 1` so nothing crosses infinity.
    """
    cos, sin = np.cos(angle), np.sin(angle)
    rotate_scale = np.array([[scale * cos, -scale * sin, 0.0], [scale * sin, scale * cos, 0.0],
                             [0.0, 0.0, 1.0]])
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [tilt_x, tilt_y, 1.0]])
    return translation(x, y) @ rotate_scale @ tilt @ translation(-centre[0], -centre[1])


def pixel_grid_matrix(render_scale: float) -> np.ndarray:
    """Output-pixel coordinates -> render-pixel coordinates (pixel centres stay centres)."""
    s = float(render_scale)
    return np.array([[s, 0.0, (s - 1) / 2], [0.0, s, (s - 1) / 2], [0.0, 0.0, 1.0]])


def frame_runs(frames: np.ndarray) -> list[tuple[int, int, int]]:
    """`(frame, start, stop)` of the runs of equal values in a sorted `(N,)` frame array."""
    if not len(frames):
        return []
    if np.any(frames[1:] < frames[:-1]):
        raise ValueError("frames must be sorted")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(frames)) + 1, [len(frames)]])
    return [(int(frames[start]), int(start), int(stop)) for start, stop in zip(bounds[:-1], bounds[1:])]
