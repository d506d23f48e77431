"""Canonical coordinates of every pixel of a layer's image boxes, fast and exact where it matters.

Inverting a spline-deformed sprite pixel by pixel with Newton's method is the renderer's
most expensive step, so it is done for all frames of a sequence at once, in three stages:

1. the exact inverse on a coarse lattice of each box (every `COARSE_STRIDE` pixels);
2. a guess for every pixel by bilinear interpolation of that lattice;
3. the exact inverse (Newton, started at the guess) only for pixels whose guess lies within
   the bilinear footprint (sqrt 2 texels) plus the interpolation error bound of a covered
   texel.  Every other pixel cannot be covered and keeps its guess.

The error of bilinear interpolation over a lattice cell of side h is at most
`h^2/8 (max|f_xx| + max|f_yy|)`; the lattice's second differences estimate `h^2 f_xx` and
`h^2 f_yy`, and twice their largest sum over the box (plus slack) is the bound used.

So every pixel the sprite covers, and hence every pixel whose flow is written, gets exact
canonical coordinates; the rest only ever sample zero coverage.
"""

from __future__ import annotations

import cv2
import numpy as np

from oclr_jax.data.synth.geometry import apply_homography

COARSE_STRIDE = 4
FOOTPRINT = np.sqrt(2.0) + 0.05  # texels: bilinear sampling reaches this far (plus slack)


def _upsample(lattice: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of `(rows, cols)` lattice values (nodes every `stride` pixels,
    the first at pixel 0) to `(height, width)`.  Plain broadcasting: BLAS matrix products
    of this size stall on a busy machine when OpenBLAS wakes its threads."""
    weights = np.arange(stride) / stride  # (stride,)
    if lattice.shape[0] > 1:
        rows = lattice[:-1, None, :] * (1 - weights)[None, :, None] + lattice[1:, None, :] * weights[None, :, None]
        lattice = np.concatenate([rows.reshape(-1, lattice.shape[1]), lattice[-1:]], 0)
    if lattice.shape[1] > 1:
        cols = lattice[:, :-1, None] * (1 - weights) + lattice[:, 1:, None] * weights
        lattice = np.concatenate([cols.reshape(lattice.shape[0], -1), lattice[:, -1:]], 1)
    return lattice[:height, :width]


def _interpolation_error_bound(coarse: np.ndarray) -> float:
    """Twice the estimated bilinear interpolation error of a `(rows, cols, 2)` lattice."""
    second_x = np.abs(np.diff(coarse, 2, axis=1)).max() if coarse.shape[1] > 2 else 0.0
    second_y = np.abs(np.diff(coarse, 2, axis=0)).max() if coarse.shape[0] > 2 else 0.0
    return 2.0 * (float(second_x) + float(second_y)) / 8.0


def support_distance(alpha: np.ndarray) -> np.ndarray:
    """`(C, C)` float32 distance of every texel to the nearest texel with coverage > 0."""
    empty = (alpha == 0).astype(np.uint8)
    return cv2.distanceTransform(empty, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _lattice(box: tuple[int, int, int, int]) -> tuple[np.ndarray, int, int]:
    top, left, bottom, right = box
    rows = -(-(bottom - top - 1) // COARSE_STRIDE) + 1  # lattice nodes covering the box
    cols = -(-(right - left - 1) // COARSE_STRIDE) + 1
    xs, ys = np.meshgrid(left + COARSE_STRIDE * np.arange(cols), top + COARSE_STRIDE * np.arange(rows))
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64), rows, cols


def deformed_canonical_boxes(motion, distance: np.ndarray, to_image: np.ndarray,
                             boxes: dict[int, tuple[int, int, int, int]]) -> dict[int, np.ndarray]:
    """Canonical coordinates `(h*w, 2)` (row-major) of the pixels of each frame's box.

    Args:
      motion: a `DeformedHomographyMotion`.
      distance: `support_distance` of the sprite's coverage.
      to_image: `(3, 3)` from the boxes' pixel grid to image (output pixel) coordinates.
      boxes: frame -> `(top, left, bottom, right)` on that pixel grid.
    """
    frames = sorted(boxes)
    lattices = [_lattice(boxes[t]) for t in frames]
    points = np.concatenate([lattice for lattice, _, _ in lattices])
    point_frames = np.concatenate([np.full(len(lattice), t) for t, (lattice, _, _) in zip(frames, lattices)])
    coarse_all = motion.inverse_at(point_frames, apply_homography(to_image, points))
    guesses, candidates, offset = {}, [], 0
    for t, (lattice, rows, cols) in zip(frames, lattices):
        top, left, bottom, right = boxes[t]
        height, width = bottom - top, right - left
        coarse = coarse_all[offset:offset + rows * cols].reshape(rows, cols, 2)
        offset += rows * cols
        guess_x = _upsample(coarse[..., 0], COARSE_STRIDE, height, width)  # (h, w)
        guess_y = _upsample(coarse[..., 1], COARSE_STRIDE, height, width)
        gap = cv2.remap(distance, guess_x.astype(np.float32), guess_y.astype(np.float32),
                        cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=1e6)
        guesses[t] = np.stack([guess_x.ravel(), guess_y.ravel()], 1)
        flat = np.flatnonzero(gap.ravel() <= FOOTPRINT + _interpolation_error_bound(coarse))
        ys, xs = np.divmod(flat, width)
        candidates.append((t, flat, np.stack([xs + left, ys + top], 1).astype(np.float64)))
    pixels = np.concatenate([c[2] for c in candidates])
    if len(pixels):
        pixel_frames = np.concatenate([np.full(len(c[1]), c[0]) for c in candidates])
        start = np.concatenate([guesses[t][flat] for t, flat, _ in candidates])
        exact = motion.inverse_at(pixel_frames, apply_homography(to_image, pixels), start)
        offset = 0
        for t, flat, _ in candidates:
            guesses[t][flat] = exact[offset:offset + len(flat)]
            offset += len(flat)
    return guesses
