"""Layer motions: maps between a layer's canonical (texture) coordinates and the image.

Every layer of a synthetic scene is a texture painted on a surface.  A motion gives, for each
frame `t`, the map `forward(t, c)` from canonical texel coordinates `c` to image coordinates
(output pixels, pixel centres at integers) and its exact inverse `inverse(t, p)`.  The ground
truth flow of a visible pixel `p` at frame `t` is then `forward(t +- 1, inverse(t, p)) - p`:
the same surface point in the neighbouring frame, exact up to float64 rounding.
The homography helpers live in `geometry.py`, the spline fields in `spline.py`.

Motions:
  * `HomographyMotion`: `H_t c` (rotation, scale, perspective, translation).
  * `DeformedHomographyMotion`: `H_t (c + D_t(c))`, where `D_t` is a thin-plate-spline
    displacement sampled on a regular canonical grid and interpolated bilinearly.  That
    interpolated field *is* the motion (so the flow is exact for what is rendered); it is
    inverted by Newton's method.
  * `WaveHomographyMotion`: `H_t S_t(c)` with `S_t` two sinusoidal shears (x by y, then y by
    x): non-rigid, always one-to-one, inverted in closed form.  The procedural stand-in for
    real-video backgrounds.
  * `GluedMotion`: a sticker glued onto another layer (the artificial occluders).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from oclr_jax.data.synth.geometry import apply_homography, frame_runs, map_in_chunks
from oclr_jax.data.synth.spline import cell_table, evaluate_cells, invert_displacement


def _per_frame(matrices: np.ndarray, frames: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Each point mapped by its own frame's homography (one OpenCV call per frame)."""
    order = None
    if len(frames) > 1 and np.any(frames[1:] < frames[:-1]):
        order = np.argsort(frames, kind="stable")
        frames, points = frames[order], points[order]
    out = np.empty_like(points)
    for t, start, stop in frame_runs(frames):
        out[start:stop] = apply_homography(matrices[t], points[start:stop])
    if order is not None:
        unsorted = np.empty_like(out)
        unsorted[order] = out
        out = unsorted
    return out


@dataclasses.dataclass
class HomographyMotion:
    """Canonical -> image homographies `(T, 3, 3)`."""

    homographies: np.ndarray

    def __post_init__(self):
        self.inverses = np.linalg.inv(self.homographies)

    def homography(self, t: int) -> np.ndarray:
        return self.homographies[t]

    def inverse_homography(self, t: int) -> np.ndarray:
        return self.inverses[t]

    def forward(self, t: int, points: np.ndarray) -> np.ndarray:
        return apply_homography(self.homographies[t], points)

    def inverse(self, t: int, points: np.ndarray) -> np.ndarray:
        return apply_homography(self.inverses[t], points)


@dataclasses.dataclass
class DeformedHomographyMotion:
    """`H_t (c + D_t(c))`: homographies `(T, 3, 3)` after grid displacements `(T, Gh, Gw, 2)`."""

    homographies: np.ndarray
    displacements: np.ndarray
    spacing: float

    def __post_init__(self):
        self.inverses = np.linalg.inv(self.homographies)
        self.tables = cell_table(self.displacements)
        squared = self.displacements[..., 0] ** 2 + self.displacements[..., 1] ** 2  # no tiny-axis sum
        self.max_displacement = np.sqrt(squared.max(axis=(1, 2)))  # (T,)

    def homography(self, t: int) -> None:
        return None  # Not a pure homography: rendered through `inverse`.

    def inverse_homography(self, t: int) -> None:
        return None

    def forward(self, t: int, points: np.ndarray) -> np.ndarray:
        return self.forward_at(np.full(len(points), t), points)

    def undo_homography(self, t: int, points: np.ndarray) -> np.ndarray:
        """Image points -> deformed canonical points `q = c + D_t(c)`."""
        return apply_homography(self.inverses[t], points)

    def inverse(self, t: int, points: np.ndarray) -> np.ndarray:
        return self.inverse_at(np.full(len(points), t), points)

    def forward_at(self, frames: np.ndarray, points: np.ndarray) -> np.ndarray:
        """`forward` with a frame per point `(N,)`, in one pass over the sequence."""
        return _per_frame(self.homographies, frames, map_in_chunks(self._deform, points, frames))

    def _deform(self, points: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """`c + D_t(c)` per point."""
        deformed = np.empty_like(points)
        deformed[:, 0], deformed[:, 1] = evaluate_cells(self.tables, self.spacing, points[:, 0], points[:, 1],
                                                        frames=frames)
        deformed += points
        return deformed

    def undo_homography_at(self, frames: np.ndarray, points: np.ndarray) -> np.ndarray:
        return _per_frame(self.inverses, frames, points)

    def inverse_at(self, frames: np.ndarray, points: np.ndarray,
                   start: np.ndarray | None = None) -> np.ndarray:
        """`inverse` with a frame per point; `start` is an optional initial guess."""
        deformed = self.undo_homography_at(frames, points)
        return invert_displacement(self.tables, self.spacing, deformed, start, frames)


def _sin32(angle: np.ndarray) -> np.ndarray:
    """sin of a float64 angle (overwritten), reduced to [0, 2 pi) in float64 and evaluated
    in float32; returned in float32."""
    turns = np.multiply(angle, 0.5 / np.pi)
    np.floor(turns, out=turns)
    turns *= 2 * np.pi
    reduced = np.subtract(angle, turns, out=angle).astype(np.float32)
    return np.sin(reduced, out=reduced)


def _add_wave(base: np.ndarray, amplitude: float, angle: np.ndarray) -> np.ndarray:
    """`base + amplitude * sin(angle)` (float64; `angle` is overwritten)."""
    wave = np.multiply(_sin32(angle), amplitude, dtype=np.float64)
    return np.add(base, wave, out=wave)


@dataclasses.dataclass
class WaveHomographyMotion:
    """`H_t S_t(c)`; `waves (T, 6)` rows `(a, kx, phase_a, b, ky, phase_b)`:
    `x1 = x + a sin(kx y + phase_a)`, then `y1 = y + b sin(ky x1 + phase_b)`.

    The sines are taken in float32 after reducing the argument to one period (float64 sines
    cost ten times more and this is a full-frame layer): forward and inverse agree to ~1e-5
    texel, below the float32 resolution of stored flow of a few pixels.
    """

    homographies: np.ndarray
    waves: np.ndarray

    def __post_init__(self):
        self.inverses = np.linalg.inv(self.homographies)

    def homography(self, t: int) -> None:
        return None

    def inverse_homography(self, t: int) -> None:
        return None

    def forward(self, t: int, points: np.ndarray) -> np.ndarray:
        return map_in_chunks(lambda part: self._forward(t, part), points)

    def inverse(self, t: int, points: np.ndarray) -> np.ndarray:
        return map_in_chunks(lambda part: self._inverse(t, part), points)

    def _forward(self, t: int, points: np.ndarray) -> np.ndarray:
        a, kx, pa, b, ky, pb = self.waves[t].tolist()
        sheared = np.empty_like(points)
        sheared[:, 0] = _add_wave(points[:, 0], a, kx * points[:, 1] + pa)
        sheared[:, 1] = _add_wave(points[:, 1], b, ky * sheared[:, 0] + pb)
        return apply_homography(self.homographies[t], sheared)

    def _inverse(self, t: int, points: np.ndarray) -> np.ndarray:
        a, kx, pa, b, ky, pb = self.waves[t].tolist()
        sheared = apply_homography(self.inverses[t], points)
        sheared[:, 1] = _add_wave(sheared[:, 1], -b, ky * sheared[:, 0] + pb)
        sheared[:, 0] = _add_wave(sheared[:, 0], -a, kx * sheared[:, 1] + pa)
        return sheared


@dataclasses.dataclass
class GluedMotion:
    """A layer placed on `base`'s surface by `placement` (own canonical -> base canonical),
    so it moves exactly as the base does."""

    base: object
    placement: np.ndarray

    def __post_init__(self):
        self.placement_inverse = np.linalg.inv(self.placement)

    def homography(self, t: int):
        base = self.base.homography(t)
        return None if base is None else base @ self.placement

    def inverse_homography(self, t: int):
        base = self.base.inverse_homography(t)
        return None if base is None else self.placement_inverse @ base

    def forward(self, t: int, points: np.ndarray) -> np.ndarray:
        return self.base.forward(t, apply_homography(self.placement, points))

    def inverse(self, t: int, points: np.ndarray) -> np.ndarray:
        return apply_homography(self.placement_inverse, self.base.inverse(t, points))
