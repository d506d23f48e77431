"""Sampling one layer on a pixel grid: its image box, texture, coverage and coordinates.

A pixel grid is given by `grid`, the `(3, 3)` map from image coordinates (output pixels,
centres at integers) to that grid's pixel coordinates: the identity for the output grid,
`motion.pixel_grid_matrix(s)` for the render grid at scale `s`.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from oclr_jax.data.synth.backgrounds import Layer
from oclr_jax.data.synth.geometry import apply_homography, translation
from oclr_jax.data.synth.inverse import deformed_canonical_boxes, support_distance


@dataclasses.dataclass
class Patch:
    """A layer sampled over a box of a pixel grid.

    Attributes:
      top, left: the box's corner on the grid.
      rgba: `(h, w, 4)` uint8 texture and coverage (`(h, w, 3)` for the opaque background).
      canonical: exact canonical coordinates: of every pixel of the box `(h*w, 2)` (row-major)
        when `exact_pixels` is None, else `(N, 2)` of just those pixels; None for layers drawn
        by a single homography warp.
      exact_pixels: `(N,)` sorted row-major indices of the box pixels that coverage can reach
        (spline-deformed sprites; other pixels have no exact coordinates).
    """

    top: int
    left: int
    rgba: np.ndarray
    canonical: np.ndarray | None
    exact_pixels: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgba.shape[:2]

    def window(self, image: np.ndarray) -> np.ndarray:
        """The view of a full-grid array that this patch covers."""
        h, w = self.shape
        return image[self.top:self.top + h, self.left:self.left + w]


def _border_points(side: float) -> np.ndarray:
    ticks = np.linspace(0, side, max(2, int(side) // 2 + 1))
    zeros, ends = np.zeros_like(ticks), np.full_like(ticks, side)
    return np.concatenate([np.stack(pair, 1) for pair in
                           ((ticks, zeros), (ticks, ends), (zeros, ticks), (ends, ticks))])


def layer_box(layer: Layer, t: int, grid: np.ndarray, size: tuple[int, int]):
    """`(top, left, bottom, right)` of the layer on a pixel grid of `size`, or None."""
    height, width = size
    if layer.opaque:
        return 0, 0, height, width
    motion = layer.motion
    side = layer.rgba.shape[0] - 1
    if motion.homography(t) is not None:  # the image of the canvas square's corners
        square = np.array([[0, 0], [side, 0], [0, side], [side, side]], np.float64)
        corners = apply_homography(grid @ motion.homography(t), square)
    elif hasattr(motion, "max_displacement"):  # deformed: the square grown by the largest |D|
        reach = float(motion.max_displacement[t]) + 1.0
        low, high = -reach, side + reach
        square = np.array([[low, low], [high, low], [low, high], [high, high]], np.float64)
        corners = apply_homography(grid @ motion.homographies[t], square)
    else:  # any one-to-one motion: the image of the canvas border encloses the rest
        corners = apply_homography(grid, motion.forward(t, _border_points(side)))
    left, top = np.floor(corners.min(0)).astype(int) - 1
    right, bottom = np.ceil(corners.max(0)).astype(int) + 2
    top, left = max(int(top), 0), max(int(left), 0)
    bottom, right = min(int(bottom), height), min(int(right), width)
    if top >= bottom or left >= right:
        return None
    return top, left, bottom, right


def _draw(layer: Layer, t: int, grid: np.ndarray, box, coordinates: tuple | None) -> Patch:
    top, left, bottom, right = box
    border = cv2.BORDER_REFLECT if layer.opaque else cv2.BORDER_CONSTANT
    if coordinates is None:  # a pure homography: one perspective warp
        matrix = translation(-left, -top) @ grid @ layer.motion.homography(t)
        rgba = cv2.warpPerspective(layer.rgba, matrix, (right - left, bottom - top),
                                   flags=cv2.INTER_LINEAR, borderMode=border)
        return Patch(top, left, rgba, None)
    maps, canonical, exact_pixels = coordinates
    rgba = cv2.remap(layer.rgba, maps, None, cv2.INTER_LINEAR, borderMode=border)
    return Patch(top, left, rgba, canonical, exact_pixels)


def sample_sequence(layer: Layer, grid: np.ndarray, size: tuple[int, int],
                    num_frames: int) -> list[Patch | None]:
    """The layer's texture and coverage over its box in every frame (None where off-grid).

    Spline-deformed sprites are inverted for all frames at once (`inverse.py`).
    """
    boxes = {t: layer_box(layer, t, grid, size) for t in range(num_frames)}
    boxes = {t: box for t, box in boxes.items() if box is not None}
    to_image = np.linalg.inv(grid)
    motion = layer.motion
    if hasattr(motion, "inverse_at"):
        if not hasattr(layer, "support_distance"):
            layer.support_distance = support_distance(layer.rgba[..., 3])
        coordinates = deformed_canonical_boxes(motion, layer.support_distance, to_image, boxes) if boxes else {}
    else:
        coordinates = {}
        for t, (top, left, bottom, right) in boxes.items():
            if motion.homography(t) is None:
                ys, xs = np.mgrid[top:bottom, left:right]
                pixels = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
                canonical = motion.inverse(t, apply_homography(to_image, pixels))
                maps = canonical.astype(np.float32).reshape(bottom - top, right - left, 2)
                coordinates[t] = (maps, canonical, None)
    return [_draw(layer, t, grid, boxes[t], coordinates.get(t)) if t in boxes else None
            for t in range(num_frames)]


def blend(canvas: np.ndarray, patch: Patch) -> None:
    """Draws a patch over a uint8 canvas in place, weighted by its coverage."""
    weight = patch.rgba[..., 3].astype(np.float32) * np.float32(1 / 255)
    texture = cv2.cvtColor(patch.rgba, cv2.COLOR_RGBA2RGB)  # contiguous copy, in C
    region = patch.window(canvas)  # a strided view: OpenCV writes it in place
    blended = cv2.blendLinear(texture, region, weight, 1 - weight, dst=region)
    if not np.shares_memory(blended, region):  # an OpenCV that returned a copy instead
        region[:] = blended
