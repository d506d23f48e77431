"""Thin-plate-spline displacement fields on a canonical grid, and their exact inversion.

A spline-deformed sprite moves by `c -> H_t (c + D_t(c))`.  `D_t` is a thin-plate spline
through the control points' displacements, sampled on a regular grid of canonical nodes and
interpolated bilinearly; that interpolated field *is* the motion, so rendering, masks and flow
all use exactly the same map.  `invert_displacement` solves `c + D(c) = q` by Newton's method.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NEWTON_TOLERANCE = 1e-9  # texels; far below the float32 resolution of stored flow.
NEWTON_MAX_STEPS = 12


@dataclasses.dataclass(frozen=True)
class CellTable:
    """Per-cell bilinear coefficients of one grid field per frame.

    Attributes:
      coefficients: `(8, T * cells_h * cells_w)` float32: rows `a_x, a_y, b_x, b_y, c_x, c_y,
        d_x, d_y`
        with `value = a + b fx + c fy + d fx fy` inside a cell (component-major, so that
        gathering one coefficient for many points reads a contiguous row).
      cells_h, cells_w: cells per frame (nodes minus one).
    """

    coefficients: np.ndarray
    cells_h: int
    cells_w: int


def cell_table(field: np.ndarray) -> CellTable:
    """The `CellTable` of `(T, Gh, Gw, 2)` grid fields (or a single `(Gh, Gw, 2)` field).

    Coefficients are stored in float32: they are the definition of the interpolated field,
    used identically by the forward map and its inverse, so exactness does not depend on it.
    """
    field = np.asarray(field, np.float32)
    v00, v10 = field[..., :-1, :-1, :], field[..., :-1, 1:, :]
    v01, v11 = field[..., 1:, :-1, :], field[..., 1:, 1:, :]
    cells_h, cells_w = v00.shape[-3:-1]
    coefficients = np.empty((4, 2) + v00.shape[:-1], np.float32)
    for component in range(2):
        a, b, c = v00[..., component], v10[..., component], v01[..., component]
        coefficients[0, component] = a
        np.subtract(b, a, out=coefficients[1, component])
        np.subtract(c, a, out=coefficients[2, component])
        np.subtract(v11[..., component] - b, c - a, out=coefficients[3, component])
    return CellTable(coefficients.reshape(8, -1), cells_h, cells_w)


def evaluate_cells(table: CellTable, spacing: float, x: np.ndarray, y: np.ndarray,
                   with_gradient: bool = False, frames: np.ndarray | None = None):
    """Bilinear interpolation from a `CellTable`, clamped (constant) beyond the grid.

    Node `(i, j)` of the grid sits at canonical `(x, y) = (j, i) * spacing`; each point reads
    the field of its frame in `frames` (`(N,)` ints; None for a single-field table), so one
    call serves a whole sequence.  Returns the field's x and y components `(N,)`; with
    `with_gradient` also `(dDx/dx, dDx/dy, dDy/dx, dDy/dy)`.  The gradient is the cell's
    (one-sided beyond the grid, where the clamped field is flat): Newton's method only needs
    a good Jacobian, not an exact one.
    """
    cells_h, cells_w = table.cells_h, table.cells_w
    inverse_spacing = 1.0 / spacing
    gx = x * inverse_spacing
    gy = y * inverse_spacing
    np.clip(gx, 0, cells_w, out=gx)
    np.clip(gy, 0, cells_h, out=gy)
    ix = gx.astype(np.int64)
    iy = gy.astype(np.int64)
    np.minimum(ix, cells_w - 1, out=ix)
    np.minimum(iy, cells_h - 1, out=iy)
    fx = gx - ix
    fy = gy - iy
    index = iy * cells_w + ix
    if frames is not None:
        index += frames * (cells_h * cells_w)
    a_x, a_y, b_x, b_y, c_x, c_y, d_x, d_y = (np.take(row, index) for row in table.coefficients)
    slope_xx = b_x + fy * d_x  # dDx/dfx
    slope_yx = b_y + fy * d_y  # dDy/dfx
    value_x = a_x + fx * slope_xx + fy * c_x
    value_y = a_y + fx * slope_yx + fy * c_y
    if not with_gradient:
        return value_x, value_y
    return (value_x, value_y, slope_xx * inverse_spacing, (c_x + fx * d_x) * inverse_spacing,
            slope_yx * inverse_spacing, (c_y + fx * d_y) * inverse_spacing)


def bilinear(field: np.ndarray, spacing: float, points: np.ndarray) -> np.ndarray:
    """Bilinear interpolation `(N, 2)` of a `(Gh, Gw, 2)` grid field at `(N, 2)` points."""
    return np.stack(evaluate_cells(cell_table(field), spacing, points[:, 0], points[:, 1]), 1)


def invert_displacement(table: np.ndarray, spacing: float, targets: np.ndarray,
                        start: np.ndarray | None = None, frames: np.ndarray | None = None) -> np.ndarray:
    """Solves `c + D(c) = q` for every target `q` by Newton's method.

    `D` is the bilinear field of a `cell_table` (per-point `frames` as in `evaluate_cells`);
    it must be fold-free (det(I + dD/dc) > 0), which `thin_plate_field` ensures.  `start` is
    an initial guess (default `q - D(q)`).  Returns `(N, 2)` canonical points.
    """
    qx, qy = targets[:, 0], targets[:, 1]
    if start is None:
        dx, dy = evaluate_cells(table, spacing, qx, qy, frames=frames)
        x, y = qx - dx, qy - dy
    else:
        x, y = start[:, 0].copy(), start[:, 1].copy()
    active = np.arange(len(x))
    cx, cy, tx, ty, cf = x, y, qx, qy, frames
    for _ in range(NEWTON_MAX_STEPS):
        vx, vy, xx, xy, yx, yy = evaluate_cells(table, spacing, cx, cy, True, cf)
        rx, ry = cx + vx - tx, cy + vy - ty
        unsolved = np.maximum(np.abs(rx), np.abs(ry)) > NEWTON_TOLERANCE
        if not unsolved.all():
            active, cx, cy, tx, ty = active[unsolved], cx[unsolved], cy[unsolved], tx[unsolved], ty[unsolved]
            rx, ry, xx, xy, yx, yy = rx[unsolved], ry[unsolved], xx[unsolved], xy[unsolved], yx[unsolved], yy[unsolved]
            cf = None if cf is None else cf[unsolved]
            if not len(active):
                break
        # Jacobian of c -> c + D(c): [[1 + xx, xy], [yx, 1 + yy]].
        a, d = 1 + xx, 1 + yy
        det = a * d - xy * yx
        cx = cx - (d * rx - xy * ry) / det
        cy = cy - (a * ry - yx * rx) / det
        x[active], y[active] = cx, cy
    return np.stack([x, y], 1)


def _tps_kernel(squared_distance: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r^2 (U(0) = 0); a constant factor does not change the interpolant."""
    return squared_distance * np.log(np.maximum(squared_distance, 1e-300))


def thin_plate_field(control_points: np.ndarray, displacements: np.ndarray,
                     grid_shape: tuple[int, int], spacing: float, border: float,
                     min_jacobian: float = 0.3) -> np.ndarray:
    """Thin-plate-spline displacement fields sampled on a canonical grid.

    Args:
      control_points: `(K, 2)` canonical points (K >= 3, not collinear).
      displacements: `(T, K, 2)`: where each control point moves in each frame.
      grid_shape: `(Gh, Gw)` nodes at spacing `spacing`.
      border: width (texels) of a band along the grid's edge where the field fades to zero
        with a smoothstep, so the motion is the plain homography beyond the canvas and has
        no kink there (Newton's method would stall on one).  Control points must lie at
        least `border` inside, where the fade is 1.
      min_jacobian: the smallest allowed det(I + dD/dc) over the grid; if a frame's field
        comes closer to folding, the whole sequence's deformation is halved (repeatedly), so
        the surface never folds over itself and the motion stays invertible.
    Returns:
      `(T, Gh, Gw, 2)` float64 fields; they interpolate the displacements exactly at control
      points that lie on grid nodes.
    """
    num_frames, num_points = displacements.shape[:2]
    scale = max(grid_shape) * spacing  # normalised coordinates condition the solve.
    ctrl = control_points / scale
    kernel = _tps_kernel(((ctrl[:, None] - ctrl[None]) ** 2).sum(-1))
    affine = np.concatenate([np.ones((num_points, 1)), ctrl], 1)
    system = np.zeros((num_points + 3, num_points + 3))
    system[:num_points, :num_points] = kernel
    system[:num_points, num_points:] = affine
    system[num_points:, :num_points] = affine.T
    rhs = np.zeros((num_points + 3, num_frames * 2))
    rhs[:num_points] = displacements.transpose(1, 0, 2).reshape(num_points, -1)
    coefficients = np.linalg.solve(system, rhs)  # (K + 3, T * 2)
    ys, xs = np.mgrid[0:grid_shape[0], 0:grid_shape[1]] * spacing
    nodes = np.stack([xs.ravel(), ys.ravel()], 1) / scale
    basis = np.concatenate([_tps_kernel(((nodes[:, None] - ctrl[None]) ** 2).sum(-1)),
                            np.ones((len(nodes), 1)), nodes], 1)
    field = (basis @ coefficients).reshape(grid_shape[0], grid_shape[1], num_frames, 2)
    fade = _edge_fade(grid_shape[0], spacing, border)[:, None] * _edge_fade(grid_shape[1], spacing, border)[None]
    field = np.ascontiguousarray(field.transpose(2, 0, 1, 3) * fade[None, :, :, None])
    for _ in range(8):
        if min_fold_determinant(field, spacing) >= min_jacobian:
            return field
        field = field * 0.5
    return np.zeros_like(field)


def _edge_fade(count: int, spacing: float, border: float) -> np.ndarray:
    """`(count,)` smoothstep from 0 at both ends of a row of nodes to 1 at `border` inside."""
    position = np.arange(count) * spacing
    distance = np.minimum(position, position[-1] - position) / max(border, 1e-9)
    u = np.clip(distance, 0.0, 1.0)
    return u * u * (3 - 2 * u)


def min_fold_determinant(fields: np.ndarray, spacing: float) -> float:
    """Smallest det(I + dD/dc) over all frames and grid cells of `(T, Gh, Gw, 2)` fields."""
    dx = np.diff(fields, axis=2)[:, :-1] / spacing  # (T, Gh-1, Gw-1, 2)
    dy = np.diff(fields, axis=1)[:, :, :-1] / spacing
    det = (1 + dx[..., 0]) * (1 + dy[..., 1]) - dy[..., 0] * dx[..., 1]
    return float(det.min()) if det.size else 1.0
