"""Canonical coordinates of every pixel of a layer's image boxes, fast and exact where it matters.

Inverting a spline-deformed sprite pixel by pixel with Newton's method is the renderer's
most expensive step, so it is done for all frames of a sequence at once, in three stages:

1. the exact inverse on a coarse lattice of each box (every `COARSE_STRIDE` pixels);
2. a guess for every pixel by bilinear interpolation of that lattice (float32, OpenCV);
3. the exact inverse (`spline.invert_displacement`, started at the guess) only for pixels
   whose guess lies within the bilinear footprint (sqrt 2 texels) plus the interpolation
   error bound of a covered texel.  Every other pixel cannot be covered and keeps its guess.

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

COARSE_STRIDE = 8
FOOTPRINT = np.sqrt(2.0) + 0.05  # texels: bilinear sampling reaches this far (plus slack)


def _upsample(lattice: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a `(rows, cols, 2)` lattice (nodes every `stride` pixels, the
    first at pixel 0) to `(height, width, 2)` float32.  OpenCV quantises the sampling
    positions to 1/32 pixel, which holds the multiples of 1/stride exactly (stride 8)."""
    to_lattice = np.array([[1.0 / stride, 0.0, 0.0], [0.0, 1.0 / stride, 0.0]])
    return cv2.warpAffine(lattice.astype(np.float32), to_lattice, (width, height),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def _largest_second_difference(before: np.ndarray, middle: np.ndarray, after: np.ndarray) -> float:
    """`max |np.diff(.., 2)|` along the axis that `before/middle/after` step along (no overhead)."""
    return float(np.abs((after - middle) - (middle - before)).max()) if middle.size else 0.0


def _interpolation_error_bound(coarse: np.ndarray) -> float:
    """Twice the estimated bilinear interpolation error of a `(rows, cols, 2)` lattice."""
    second_x = _largest_second_difference(coarse[:, :-2], coarse[:, 1:-1], coarse[:, 2:])
    second_y = _largest_second_difference(coarse[:-2], coarse[1:-1], coarse[2:])
    return 2.0 * (second_x + second_y) / 8.0


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
                             boxes: dict[int, tuple[int, int, int, int]]) -> dict[int, tuple]:
    """Canonical coordinates of the pixels of each frame's box.

    Args:
      motion: a `DeformedHomographyMotion`.
      distance: `support_distance` of the sprite's coverage.
      to_image: `(3, 3)` from the boxes' pixel grid to image (output pixel) coordinates.
      boxes: frame -> `(top, left, bottom, right)` on that pixel grid.
    Returns:
      frame -> `(maps, exact, pixels)`: `(h, w, 2)` float32 sampling maps for `cv2.remap`
      (guesses that cannot reach coverage, except at `pixels`), the `(N, 2)` float64 exact
      canonical coordinates of the `(N,)` sorted row-major box `pixels` that coverage can
      reach (there the maps hold `exact` rounded to float32).
    """
    frames = sorted(boxes)
    lattices = [_lattice(boxes[t]) for t in frames]
    points = np.concatenate([lattice for lattice, _, _ in lattices])
    point_frames = np.concatenate([np.full(len(lattice), t) for t, (lattice, _, _) in zip(frames, lattices)])
    coarse_all = motion.inverse_at(point_frames, apply_homography(to_image, points))
    maps, candidates, offset = {}, [], 0
    for t, (_points, rows, cols) in zip(frames, lattices):
        top, left, bottom, right = boxes[t]
        height, width = bottom - top, right - left
        coarse = coarse_all[offset:offset + rows * cols].reshape(rows, cols, 2)
        offset += rows * cols
        maps[t] = _upsample(coarse, COARSE_STRIDE, height, width)  # (h, w, 2) guesses
        gap = cv2.remap(distance, maps[t], None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=1e6)
        flat = np.flatnonzero(gap.ravel() <= FOOTPRINT + _interpolation_error_bound(coarse))
        candidates.append((t, flat, width, left, top))
    counts = [len(flat) for _, flat, _, _, _ in candidates]
    exact = np.zeros((0, 2))
    if sum(counts):
        pixel_frames = np.repeat([t for t, *_ in candidates], counts)
        flats = np.concatenate([flat for _, flat, _, _, _ in candidates])
        ys, xs = np.divmod(flats, np.repeat([width for _, _, width, _, _ in candidates], counts))
        xs += np.repeat([left for *_, left, _ in candidates], counts)
        ys += np.repeat([top for *_, top in candidates], counts)
        pixels = np.stack([xs, ys], 1).astype(np.float64)
        # (x, y) pairs gathered and scattered as single complex items: much faster than rows.
        start = np.concatenate([_pairs(maps[t])[flat] for t, flat, *_ in candidates]).view(np.float32)
        exact = motion.inverse_at(pixel_frames, apply_homography(to_image, pixels), start.reshape(-1, 2))
    rounded = _pairs(exact.astype(np.float32))
    out, offset = {}, 0
    for t, flat, *_ in candidates:
        _pairs(maps[t])[flat] = rounded[offset:offset + len(flat)]
        out[t] = (maps[t], exact[offset:offset + len(flat)], flat)
        offset += len(flat)
    return out


def _pairs(array: np.ndarray) -> np.ndarray:
    """A flat complex view of a C-contiguous `(..., 2)` float array: one item per point."""
    return array.view(np.complex64 if array.dtype == np.float32 else np.complex128).reshape(-1)
