"""Optical flow -> RGB with the Middlebury colour wheel (Baker et al., ICCV 2007).

The wheel has 55 hues in six segments (red-yellow 15, yellow-green 6, green-cyan 4,
cyan-blue 11, blue-magenta 13, magenta-red 6).  A vector's direction picks the hue: the
angle is `atan2(-v, -u)`, so flow to the right is red and flow to the left is cyan-blue.
Its length, divided by the normaliser, picks the saturation: zero flow is white, a vector
of the normaliser's length is the fully saturated hue, and longer vectors (possible only
when `max_magnitude` is given) are the hue darkened to 75 %.  This is the convention of the
Middlebury code and of RAFT's `flow_viz`, so our images match the figures of most papers.
"""

from __future__ import annotations

import numpy as np

# Lengths of the six wheel segments, in the order `_colour_wheel` builds them.
_SEGMENT_LENGTHS = (15, 6, 4, 11, 13, 6)  # RY, YG, GC, CB, BM, MR
_EPS = 1e-5  # keeps the normalisation finite for an all-zero flow.


def _colour_wheel() -> np.ndarray:
    """The 55 wheel colours `(55, 3)` float64 in [0, 255], red first, going anticlockwise."""
    ry, yg, gc, cb, bm, mr = _SEGMENT_LENGTHS
    rows = []

    def ramp(n):
        return np.floor(255.0 * np.arange(n) / n)

    full = lambda n: np.full(n, 255.0)  # noqa: E731 (tiny local helper)
    zero = lambda n: np.zeros(n)  # noqa: E731
    rows.append(np.stack([full(ry), ramp(ry), zero(ry)], 1))  # red -> yellow
    rows.append(np.stack([255 - ramp(yg), full(yg), zero(yg)], 1))  # yellow -> green
    rows.append(np.stack([zero(gc), full(gc), ramp(gc)], 1))  # green -> cyan
    rows.append(np.stack([zero(cb), 255 - ramp(cb), full(cb)], 1))  # cyan -> blue
    rows.append(np.stack([ramp(bm), zero(bm), full(bm)], 1))  # blue -> magenta
    rows.append(np.stack([full(mr), zero(mr), 255 - ramp(mr)], 1))  # magenta -> red
    return np.concatenate(rows, 0)


COLOUR_WHEEL = _colour_wheel()


def uv_to_rgb(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colours of already normalised flow components (length 1 = full saturation).

    Args:
      u, v: `(H, W)` arrays; must be finite.
    Returns:
      `(H, W, 3)` uint8 RGB.
    """
    num_colours = COLOUR_WHEEL.shape[0]
    radius = np.sqrt(u * u + v * v)
    angle = np.arctan2(-v, -u) / np.pi  # [-1, 1]
    position = (angle + 1.0) / 2.0 * (num_colours - 1)  # [0, 54]
    k0 = np.floor(position).astype(np.int64)
    k1 = (k0 + 1) % num_colours
    frac = (position - k0)[..., None]
    colour = ((1 - frac) * COLOUR_WHEEL[k0] + frac * COLOUR_WHEEL[k1]) / 255.0  # (H, W, 3)
    inside = (radius <= 1.0)[..., None]
    # Inside the unit circle: blend towards white by (1 - radius); outside: darken.
    colour = np.where(inside, 1.0 - radius[..., None] * (1.0 - colour), colour * 0.75)
    return np.floor(255.0 * colour).astype(np.uint8)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-codes a flow field.

    Args:
      flow: `(H, W, 2)` array of `(u, v)` in pixels.
      max_magnitude: the vector length drawn at full saturation.  `None` uses the largest
        finite length in `flow` (as RAFT's `flow_to_image`), so every image uses the whole
        wheel; give a fixed value to compare the speed of several fields.
    Returns:
      `(H, W, 3)` uint8 RGB.  Non-finite vectors (NaN/inf) are drawn black.
    """
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow_to_rgb expects a flow of shape (H, W, 2), got {flow.shape}")
    finite = np.all(np.isfinite(flow), axis=-1)
    flow = np.where(finite[..., None], flow, 0.0)
    if max_magnitude is None:
        max_magnitude = float(np.sqrt((flow**2).sum(-1)).max()) if flow.size else 0.0
    elif not max_magnitude > 0:
        raise ValueError(f"max_magnitude must be positive, got {max_magnitude}")
    scale = 1.0 / (max_magnitude + _EPS)
    rgb = uv_to_rgb(flow[..., 0] * scale, flow[..., 1] * scale)
    rgb[~finite] = 0
    return rgb


def colour_wheel_legend(size: int = 64) -> np.ndarray:
    """A `(size, size, 3)` uint8 disk showing the colour of every direction and length."""
    coords = (np.arange(size) - (size - 1) / 2.0) / ((size - 1) / 2.0)
    u, v = np.meshgrid(coords, coords)
    rgb = uv_to_rgb(u, v)
    rgb[u * u + v * v > 1.0] = 255
    return rgb
