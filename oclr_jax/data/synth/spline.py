"""Thin-plate-spline displacement fields on a canonical grid, and their exact inversion.

A spline-deformed sprite moves by `c -> H_t (c + D_t(c))`.  `D_t` is a thin-plate spline
through the control points' displacements, sampled on a regular grid of canonical nodes and
interpolated bilinearly; that interpolated field *is* the motion, so rendering, masks and flow
all use exactly the same map.  `invert_displacement` solves `c + D(c) = q` exactly: in closed
form inside the cell that holds the solution (a quadratic), by Newton's method where that fails.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from oclr_jax.data.synth.geometry import CHUNK

NEWTON_TOLERANCE = 1e-9  # texels; far below the float32 resolution of stored flow.
NEWTON_MAX_STEPS = 12
CELL_WALK_STEPS = 3  # closed-form attempts per point before Newton's method takes over
CELL_SLACK = 1e-9  # cell fractions this far outside [0, 1]: the neighbour's piece agrees to ~1e-9


@dataclasses.dataclass(frozen=True)
class CellTable:
    """Per-cell bilinear coefficients of one grid field per frame.

    Attributes:
      rows: `(T * cells_h * cells_w, 8)` float32, one row per cell (frame-major, then
        row-major cells): `a_x, a_y, b_x, b_y, c_x, c_y, d_x, d_y` with
        `value = a + b fx + c fy + d fx fy` inside the cell.
      rows64: the same in float64.  Points gather whole rows (one cache line): several times
        faster than gathering 8 separate coefficients.
      cells_h, cells_w: cells per frame (nodes minus one).
      zero_border: whether the field is 0 on the grid's edge nodes, hence (clamped) 0 on and
        beyond the grid's edge.
    """

    rows: np.ndarray
    rows64: np.ndarray
    cells_h: int
    cells_w: int
    zero_border: bool = False


def cell_table(field: np.ndarray) -> CellTable:
    """The `CellTable` of `(T, Gh, Gw, 2)` grid fields (or a single `(Gh, Gw, 2)` field).

    Coefficients are stored in float32: they are the definition of the interpolated field,
    used identically by the forward map and its inverse, so exactness does not depend on it.
    """
    field = np.ascontiguousarray(field, np.float32)
    pairs = field.view(np.complex64)[..., 0]  # (x, y) as one complex item: no tiny last axis
    v00, v10 = pairs[..., :-1, :-1], pairs[..., :-1, 1:]
    v01, v11 = pairs[..., 1:, :-1], pairs[..., 1:, 1:]
    cells_h, cells_w = v00.shape[-2:]
    rows = np.empty(v00.shape + (4,), np.complex64)  # (..., cells_h, cells_w, [a b c d])
    rows[..., 0] = v00
    np.subtract(v10, v00, out=rows[..., 1])
    np.subtract(v01, v00, out=rows[..., 2])
    np.subtract(v11 - v10, v01 - v00, out=rows[..., 3])
    rows = rows.view(np.float32).reshape(-1, 8)
    edges = (field[..., 0, :, :], field[..., -1, :, :], field[..., :, 0, :], field[..., :, -1, :])
    zero_border = all(not np.any(edge) for edge in edges)
    return CellTable(rows, rows.astype(np.float64), cells_h, cells_w, zero_border)


def _gather(table: CellTable, index: np.ndarray) -> np.ndarray:
    """`(8, N)` coefficients of cells `index (N,)`: whole rows gathered (one cache line per
    point), then transposed by OpenCV so that every coefficient is a contiguous array."""
    rows = np.take(table.rows64, index, axis=0)
    return cv2.transpose(rows) if len(rows) else rows.T


def cell_positions(table: CellTable, spacing: float, x: np.ndarray, y: np.ndarray):
    """Clamped cell `(N,)` (row-major within a frame) and fractions `fx, fy` of points."""
    cells_h, cells_w = table.cells_h, table.cells_w
    gx = x * (1.0 / spacing)
    gy = y * (1.0 / spacing)
    np.clip(gx, 0, cells_w, out=gx)
    np.clip(gy, 0, cells_h, out=gy)
    ix = gx.astype(np.int64)
    iy = gy.astype(np.int64)
    np.minimum(ix, cells_w - 1, out=ix)
    np.minimum(iy, cells_h - 1, out=iy)
    fx = np.subtract(gx, ix, out=gx)
    fy = np.subtract(gy, iy, out=gy)
    index = iy * cells_w
    index += ix
    return index, fx, fy


def interpolate_cells(table: CellTable, spacing: float, cells: np.ndarray, fx: np.ndarray, fy: np.ndarray,
                      frames: np.ndarray | None = None, with_gradient: bool = False):
    """The field at `cell_positions` of a frame per point (see `evaluate_cells`)."""
    index = cells if frames is None else cells + frames * (table.cells_h * table.cells_w)
    a_x, a_y, b_x, b_y, c_x, c_y, d_x, d_y = _gather(table, index)
    slope_xx = b_x + fy * d_x  # dDx/dfx
    slope_yx = b_y + fy * d_y  # dDy/dfx
    value_x = a_x + fx * slope_xx + fy * c_x
    value_y = a_y + fx * slope_yx + fy * c_y
    if not with_gradient:
        return value_x, value_y
    inverse_spacing = 1.0 / spacing
    return (value_x, value_y, slope_xx * inverse_spacing, (c_x + fx * d_x) * inverse_spacing,
            slope_yx * inverse_spacing, (c_y + fx * d_y) * inverse_spacing)


def evaluate_cells(table: CellTable, spacing: float, x: np.ndarray, y: np.ndarray,
                   with_gradient: bool = False, frames: np.ndarray | None = None):
    """Bilinear interpolation from a `CellTable`, clamped (constant) beyond the grid.

    Node `(i, j)` of the grid sits at canonical `(x, y) = (j, i) * spacing`; each point reads
    the field of its frame in `frames` (`(N,)` ints; None for a single-field table), so one
    call serves a whole sequence.  Returns the field's x and y components `(N,)`; with
    `with_gradient` also `(dDx/dx, dDx/dy, dDy/dx, dDy/dy)`: the cell's, and zero along an
    axis beyond whose end of the grid the clamped field is flat (Newton's method then
    converges there as fast as inside).
    """
    cells, fx, fy = cell_positions(table, spacing, x, y)
    values = interpolate_cells(table, spacing, cells, fx, fy, frames, with_gradient)
    if with_gradient:
        _, _, xx, xy, yx, yy = values
        flat_x = (x < 0) | (x > table.cells_w * spacing)
        flat_y = (y < 0) | (y > table.cells_h * spacing)
        xx[flat_x] = yx[flat_x] = 0.0
        xy[flat_y] = yy[flat_y] = 0.0
    return values


def bilinear(field: np.ndarray, spacing: float, points: np.ndarray) -> np.ndarray:
    """Bilinear interpolation `(N, 2)` of a `(Gh, Gw, 2)` grid field at `(N, 2)` points."""
    return np.stack(evaluate_cells(cell_table(field), spacing, points[:, 0], points[:, 1]), 1)


def _solve_in_cells(table: CellTable, spacing: float, qx: np.ndarray, qy: np.ndarray,
                    ix: np.ndarray, iy: np.ndarray, frames: np.ndarray | None):
    """Solves `c + D(c) = q` in closed form with the bilinear piece of cell `(ix, iy)`.

    Inside a cell the map is `node + a + B fx + C fy + d fx fy` (`B = b + (s, 0)`,
    `C = c + (0, s)`, cell fractions `f`); crossing it with `C + d fx` (or `B + d fy`) leaves
    one quadratic per fraction.  The root taken is the stable form of the one near the
    linear (d = 0) solution: on a fold-free cell the other lies far outside.  Returns the
    canonical points `(x, y)` and whether each is exact: its fractions lie in the cell and
    the cell's polynomial maps it to `q` within `NEWTON_TOLERANCE`.
    """
    cells_h, cells_w = table.cells_h, table.cells_w
    index = iy * cells_w + ix
    if frames is not None:
        index += frames * (cells_h * cells_w)
    a_x, a_y, b_x, b_y, c_x, c_y, d_x, d_y = _gather(table, index)
    big_b_x, big_c_y = b_x + spacing, c_y + spacing  # B = (big_b_x, b_y), C = (c_x, big_c_y)
    b_cross_c = big_b_x * big_c_y - b_y * c_x
    node_x, node_y = ix * spacing, iy * spacing
    e_x, e_y = qx - node_x - a_x, qy - node_y - a_y
    e_cross_d = e_x * d_y - e_y * d_x
    e_cross_c = e_x * big_c_y - e_y * c_x
    e_cross_b = e_x * b_y - e_y * big_b_x
    with np.errstate(invalid="ignore", divide="ignore"):  # failures come out NaN: not exact
        beta = b_cross_c - e_cross_d
        fx = 2 * e_cross_c / (beta + np.sqrt(beta * beta + 4 * (big_b_x * d_y - b_y * d_x) * e_cross_c))
        beta = b_cross_c + e_cross_d
        fy = -2 * e_cross_b / (beta + np.sqrt(beta * beta - 4 * (d_x * big_c_y - d_y * c_x) * e_cross_b))
        fxy = fx * fy
        residual = np.maximum(np.abs(fx * big_b_x + fy * c_x + fxy * d_x - e_x),
                              np.abs(fx * b_y + fy * big_c_y + fxy * d_y - e_y))
        exact = ((fx >= -CELL_SLACK) & (fx <= 1 + CELL_SLACK) & (fy >= -CELL_SLACK) & (fy <= 1 + CELL_SLACK)
                 & (residual <= NEWTON_TOLERANCE))
    return node_x + fx * spacing, node_y + fy * spacing, exact


def _cell_of(table: CellTable, spacing: float, x: np.ndarray, y: np.ndarray):
    """The (clamped) cell indices of canonical points."""
    ix = np.floor(x * (1.0 / spacing))
    iy = np.floor(y * (1.0 / spacing))
    np.clip(ix, 0, table.cells_w - 1, out=ix)
    np.clip(iy, 0, table.cells_h - 1, out=iy)
    return ix.astype(np.int64), iy.astype(np.int64)


def invert_displacement(table: CellTable, spacing: float, targets: np.ndarray,
                        start: np.ndarray | None = None, frames: np.ndarray | None = None) -> np.ndarray:
    """Solves `c + D(c) = q` for every target `q` (exact to `NEWTON_TOLERANCE`).

    `D` is the bilinear field of a `cell_table` (per-point `frames` as in `evaluate_cells`);
    it must be fold-free (det(I + dD/dc) > 0), which `thin_plate_field` ensures.  `start` is
    an initial guess (default `q - D(q)`).  Each point is solved in closed form in the cell
    of its guess; one whose solution lies outside that cell moves to the cell it points to
    (`CELL_WALK_STEPS` times); the few left (e.g. beyond the grid, where the field is
    clamped) go through Newton's method.  Works through `CHUNK` points at a time, so that
    the temporaries stay in cache.  Returns `(N, 2)` canonical points.
    """
    solved = np.empty((len(targets), 2))
    for begin in range(0, len(targets), CHUNK):
        part = slice(begin, begin + CHUNK)
        guess = (None, None) if start is None else (start[part, 0].astype(np.float64),
                                                    start[part, 1].astype(np.float64))
        solved[part, 0], solved[part, 1] = _invert_chunk(table, spacing, targets[part, 0].copy(),
                                                         targets[part, 1].copy(), *guess,
                                                         None if frames is None else frames[part])
    return solved


def _invert_chunk(table: CellTable, spacing: float, qx: np.ndarray, qy: np.ndarray, start_x: np.ndarray | None,
                  start_y: np.ndarray | None, frames: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """`invert_displacement` of targets `(qx, qy)` from an optional guess; returns `(x, y)`."""
    if table.zero_border:  # D = 0 on and beyond the grid's edge, so there c = q exactly
        inside = (qx > 0) & (qx < table.cells_w * spacing) & (qy > 0) & (qy < table.cells_h * spacing)
        if not inside.all():
            x, y = qx.copy(), qy.copy()
            x[inside], y[inside] = _invert_chunk(
                table, spacing, qx[inside], qy[inside], None if start_x is None else start_x[inside],
                None if start_y is None else start_y[inside], None if frames is None else frames[inside])
            return x, y
    if start_x is None:
        dx, dy = evaluate_cells(table, spacing, qx, qy, frames=frames)
        start_x, start_y = qx - dx, qy - dy
    x, y = start_x, start_y
    solved_x, solved_y = np.empty_like(qx), np.empty_like(qy)
    pending = None  # indices still unsolved (None: all)
    for _ in range(CELL_WALK_STEPS):
        ix, iy = _cell_of(table, spacing, x, y)
        x, y, exact = _solve_in_cells(table, spacing, qx, qy, ix, iy, frames)
        if pending is None and exact.all():
            return x, y
        done = np.arange(len(qx)) if pending is None else pending
        solved_x[done[exact]], solved_y[done[exact]] = x[exact], y[exact]
        left = ~exact
        if not left.any():
            return solved_x, solved_y
        pending, qx, qy, start_x, start_y = done[left], qx[left], qy[left], start_x[left], start_y[left]
        frames = None if frames is None else frames[left]
        # Next cell: the one the solution points to (a NaN one keeps its cell and fails again).
        x, y = np.where(np.isnan(x[left]), start_x, x[left]), np.where(np.isnan(y[left]), start_y, y[left])
    # Newton from the original guess: a solution extrapolated beyond the grid is a poor start.
    solved = _newton(table, spacing, qx, qy, start_x, start_y, frames)
    solved_x[pending], solved_y[pending] = solved[:, 0], solved[:, 1]
    return solved_x, solved_y


def _newton(table: CellTable, spacing: float, qx: np.ndarray, qy: np.ndarray, x: np.ndarray,
            y: np.ndarray, frames: np.ndarray | None) -> np.ndarray:
    """Newton's method for `c + D(c) = q` from `(x, y)`; returns `(N, 2)`."""
    x, y = x.copy(), y.copy()
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


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`(len(a), len(b))` squared distances between `(N, 2)` point sets."""
    dx = a[:, 0, None] - b[None, :, 0]
    dy = a[:, 1, None] - b[None, :, 1]
    return dx * dx + dy * dy


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
    kernel = _tps_kernel(_squared_distances(ctrl, ctrl))
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
    basis = np.concatenate([_tps_kernel(_squared_distances(nodes, ctrl)),
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
