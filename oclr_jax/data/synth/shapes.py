"""Sprite shapes on a square canonical canvas: polygons and silhouettes.

A sprite is an alpha mask on a `C x C` texel canvas plus the thin-plate-spline control
points that deform it: the polygon's vertices (each may move by up to half the distance to
its nearest other vertex), or a uniform grid over a silhouette.  Control points are snapped to
nodes of the displacement grid (spacing `grid_spacing`), so the sampled spline interpolates
them exactly; the canvas corners are added as fixed anchors.  The shape fills the central
`SHAPE_FILL` of the canvas; the band around it is where the displacement fades to zero.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

SHAPE_FILL = 0.75  # the shape's diameter as a fraction of the canvas side.
MIN_VERTEX_SPACING = 0.3  # polygon vertices at least this many radii apart.
_SUBPIXEL_BITS = 4


@dataclasses.dataclass
class Sprite:
    """Attributes:
      alpha: `(C, C)` float32 coverage in [0, 1].
      control_points: `(K, 2)` canonical `(x, y)` texels, on grid nodes; the last 4 are the
        fixed canvas corners.
      max_displacement: `(K,)` how far each control point may move (0 = fixed).
      info: JSON-friendly description for the metadata.
    """

    alpha: np.ndarray
    control_points: np.ndarray
    max_displacement: np.ndarray
    info: dict


def canvas_size(radius: float, grid_spacing: int) -> int:
    """Odd-multiple canvas side `C = m * spacing + 1` with the shape filling `SHAPE_FILL`."""
    steps = int(np.ceil(2 * radius / SHAPE_FILL / grid_spacing))
    return steps * grid_spacing + 1


def deformation_border(size: int) -> float:
    """Width of the canvas band, outside the shape, where the spline displacement fades out."""
    return (1 - SHAPE_FILL) / 2 * (size - 1)


def _snap(points: np.ndarray, grid_spacing: int, size: int) -> np.ndarray:
    return np.clip(np.round(points / grid_spacing) * grid_spacing, 0, size - 1)


def _corners(size: int) -> np.ndarray:
    return np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], np.float64)


def _nearest_distance(points: np.ndarray) -> np.ndarray:
    distance = np.hypot(*(points[:, None] - points[None]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    return distance.min(1)


def _fill(size: int, polygon: np.ndarray) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    fixed = np.round(polygon * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(canvas, [fixed], 255, lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)
    return canvas.astype(np.float32) / 255.0


def random_polygon_vertices(rng: np.random.Generator, radius: float, convex: bool,
                            num_vertices: int, max_tries: int = 500) -> np.ndarray:
    """`(k, 2)` vertices around the origin in angular order (a simple polygon).

    Convex ones lie on a random ellipse; non-convex ones at random radii (star-shaped).
    Every pair of vertices is at least `MIN_VERTEX_SPACING * radius` apart.
    """
    for _ in range(max_tries):
        angles = np.sort(rng.uniform(0, 2 * np.pi, num_vertices))
        if convex:
            aspect = rng.uniform(0.55, 1.0)
            tilt = rng.uniform(0, np.pi)
            local = np.stack([np.cos(angles), aspect * np.sin(angles)], 1) * radius
            rotation = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
            vertices = local @ rotation.T
        else:
            radii = rng.uniform(0.35, 1.0, num_vertices) * radius
            vertices = np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        if _nearest_distance(vertices).min() >= MIN_VERTEX_SPACING * radius:
            return vertices
    raise RuntimeError(f"no {num_vertices}-gon with vertex spacing found in {max_tries} tries")


def polygon_sprite(rng: np.random.Generator, radius: float, grid_spacing: int) -> Sprite:
    """A random polygon with 3-8 vertices, convex or not, textured later."""
    size = canvas_size(radius, grid_spacing)
    centre = (size - 1) / 2.0
    num_vertices = int(rng.integers(3, 9))
    wants_convex = bool(rng.random() < 0.5)
    vertices = random_polygon_vertices(rng, radius, wants_convex, num_vertices)
    vertices = _snap(vertices + centre, grid_spacing, size)
    alpha = _fill(size, vertices)
    # A random non-empty subset of vertices moves, each by at most half its nearest gap.
    moving = rng.random(num_vertices) < 0.7
    moving[int(rng.integers(num_vertices))] = True
    reach = 0.5 * _nearest_distance(vertices) * moving
    convex = bool(cv2.isContourConvex(vertices.astype(np.float32).reshape(-1, 1, 2)))
    info = {"sprite": "polygon", "num_vertices": num_vertices, "convex": convex,
            "source": "procedural"}
    return Sprite(alpha, np.concatenate([vertices, _corners(size)]),
                  np.concatenate([reach, np.zeros(4)]), info)


def procedural_silhouette_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A blob with a wobbly outline and up to three limbs, `(size, size)` uint8 {0, 255}."""
    scale = 4  # drawn larger, then area-resized: smooth anti-aliased edges.
    big = size * scale
    centre = np.array([big / 2, big / 2])
    body = 0.28 * big
    angles = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    wobble = np.ones_like(angles)
    for k in range(2, 7):
        wobble += rng.uniform(0, 0.28 / k) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    outline = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * (body * wobble)[:, None]
    canvas = np.zeros((big, big), np.uint8)
    cv2.fillPoly(canvas, [np.round(outline).astype(np.int32)], 255, lineType=cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.12, 0.2) * big
        width = rng.uniform(0.03, 0.07) * big
        base = centre + np.array([np.cos(angle), np.sin(angle)]) * body * 0.8
        middle = base + np.array([np.cos(angle), np.sin(angle)]) * length / 2
        cv2.ellipse(canvas, (int(middle[0]), int(middle[1])), (int(length / 2), int(width)),
                    float(np.degrees(angle)), 0, 360, 255, -1, lineType=cv2.LINE_AA)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def fit_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Crops a binary mask to its largest component and centres it on a `size` canvas.

    Returns `(size, size)` float32 alpha in [0, 1]; raises ValueError for an empty mask.
    """
    binary = (mask > 127).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count < 2:
        raise ValueError("mask has no foreground pixels")
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = stats[largest, :4]
    crop = (labels[y:y + h, x:x + w] == largest).astype(np.float32)
    target = max(1, int(round(size * SHAPE_FILL)))
    zoom = target / max(h, w)
    new_w, new_h = max(1, int(round(w * zoom))), max(1, int(round(h * zoom)))
    interpolation = cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR
    crop = cv2.resize(crop, (new_w, new_h), interpolation=interpolation)
    alpha = np.zeros((size, size), np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    alpha[top:top + new_h, left:left + new_w] = crop
    return np.clip(alpha, 0, 1)


def silhouette_sprite(rng: np.random.Generator, radius: float, grid_spacing: int,
                      mask: np.ndarray | None = None, source: str = "procedural") -> Sprite:
    """A silhouette sprite from a user mask (or a procedural blob) with a control grid."""
    size = canvas_size(radius, grid_spacing)
    if mask is None:
        mask = procedural_silhouette_mask(rng, size)
    alpha = fit_mask(mask, size)
    ys, xs = np.nonzero(alpha >= 0.5)
    if len(xs) < 16:
        raise ValueError(f"silhouette {source} has fewer than 16 foreground texels after fitting")
    cells = int(rng.integers(3, 6))  # a 3x3 .. 5x5 control grid over the shape's box
    grid_x = np.linspace(xs.min(), xs.max(), cells)
    grid_y = np.linspace(ys.min(), ys.max(), cells)
    points = np.stack(np.meshgrid(grid_x, grid_y), -1).reshape(-1, 2)
    points = np.unique(_snap(points, grid_spacing, size), axis=0)
    if len(points) < 3:
        raise ValueError(f"silhouette {source} is too thin for a control grid")
    reach = 0.5 * _nearest_distance(points)
    info = {"sprite": "silhouette", "control_grid": cells, "source": source}
    corners = _corners(size)
    keep = ~np.any(np.all(points[:, None] == corners[None], -1), 1)  # corners are anchors
    points, reach = points[keep], reach[keep]
    return Sprite(alpha, np.concatenate([points, corners]),
                  np.concatenate([reach, np.zeros(4)]), info)
