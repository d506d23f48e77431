"""RAFT's correlation lookup: a 4-level pyramid sampled in a (2r+1)^2 window around each pixel.

Two ways to the same numbers (equal in exact arithmetic, ~1e-6 apart in float32):

* `all_pairs`: the official `CorrBlock`.  The full volume `C[n, k, l] = <f1(i, j), f2(k, l)> /
  sqrt(D)` with n = (b, i, j), average-pooled 2x2 three times over (k, l).  Built once per pair
  (h*w x h*w floats: 165 MB at 480x856 input), then every iteration only gathers.
* `on_the_fly`: average-pool the *features* of frame 2 instead (pooling is linear, so
  `pool(<f1, f2>) = <f1, pool(f2)>`) and take the dot products only inside each window, every
  iteration.  Memory per pair O(h*w*D) instead of O((h*w)^2); more arithmetic per iteration.

The lookup is `grid_sample(align_corners=True, padding_mode='zeros')` at (x + dx, y + dy).  All
(2r+1)^2 points of a window share the fractional part of (x, y), so we gather one integer
(2r+2)^2 block per pixel and blend its four shifted copies: the same bilinear weights as
`grid_sample`, with a corner outside the volume contributing zero.  Output channels follow
the official order `level * (2r+1)^2 + ix * (2r+1) + iy`, where `ix` indexes the x offset: the
official window is `meshgrid(dy, dx)` stacked and added to (x, y), which transposes it.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

CORR_IMPLS = ("all_pairs", "on_the_fly")


def avg_pool_2x2(x: jnp.ndarray, axes: tuple[int, int]) -> jnp.ndarray:
    """torch `avg_pool2d(x, 2, stride=2)` over two adjacent axes; odd sizes drop the last row/col."""
    a, b = axes
    size_a, size_b = x.shape[a] // 2, x.shape[b] // 2
    x = jax.lax.slice_in_dim(jax.lax.slice_in_dim(x, 0, 2 * size_a, axis=a), 0, 2 * size_b, axis=b)
    shape = x.shape[:a] + (size_a, 2, size_b, 2) + x.shape[b + 1:]
    return x.reshape(shape).mean(axis=(a + 1, a + 3))


def all_pairs_pyramid(fmap1: jnp.ndarray, fmap2: jnp.ndarray, num_levels: int) -> list:
    """(B, h, w, D) features -> `num_levels` volumes `(B*h*w, h_l, w_l)`, float32."""
    b, h, w, d = fmap1.shape
    corr = jnp.einsum("bijd,bkld->bijkl", fmap1.astype(jnp.float32), fmap2.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
    corr = (corr / jnp.sqrt(jnp.float32(d))).reshape(b * h * w, h, w)
    pyramid = [corr]
    for _ in range(num_levels - 1):
        pyramid.append(avg_pool_2x2(pyramid[-1], (1, 2)))
    return pyramid


def feature_pyramid(fmap2: jnp.ndarray, num_levels: int) -> list:
    """(B, h, w, D) features of frame 2 -> `num_levels` average-pooled copies (B, h_l, w_l, D)."""
    pyramid = [fmap2.astype(jnp.float32)]
    for _ in range(num_levels - 1):
        pyramid.append(avg_pool_2x2(pyramid[-1], (1, 2)))
    return pyramid


def _window_indices(coords: jnp.ndarray, radius: int, height: int, width: int):
    """Integer block origin, fractions and validity of the (2r+2)^2 block around `coords`.

    coords: (..., 2) as (x, y) -> ys (..., 2r+2), xs (..., 2r+2), fx, fy (...), valid y/x masks.
    """
    x, y = coords[..., 0], coords[..., 1]
    x0, y0 = jnp.floor(x), jnp.floor(y)
    steps = jnp.arange(-radius, radius + 2, dtype=jnp.float32)
    xs = (x0[..., None] + steps).astype(jnp.int32)
    ys = (y0[..., None] + steps).astype(jnp.int32)
    valid_x = (xs >= 0) & (xs < width)
    valid_y = (ys >= 0) & (ys < height)
    return (jnp.clip(ys, 0, height - 1), jnp.clip(xs, 0, width - 1), x - x0, y - y0,
            valid_y, valid_x)


def _blend(block: jnp.ndarray, fx: jnp.ndarray, fy: jnp.ndarray, radius: int) -> jnp.ndarray:
    """(N, 2r+2 (y), 2r+2 (x)) integer block -> (N, (2r+1)^2) bilinear samples, x-offset major."""
    k = 2 * radius + 1
    fx, fy = fx[:, None, None], fy[:, None, None]
    top = (1 - fx) * block[:, :k, :k] + fx * block[:, :k, 1:]
    bottom = (1 - fx) * block[:, 1:, :k] + fx * block[:, 1:, 1:]
    samples = (1 - fy) * top + fy * bottom  # (N, y offset, x offset)
    return jnp.swapaxes(samples, 1, 2).reshape(samples.shape[0], k * k)


def lookup_all_pairs(pyramid: Sequence[jnp.ndarray], coords: jnp.ndarray, radius: int) -> jnp.ndarray:
    """Samples every level around `coords` (B, h, w, 2) -> (B, h, w, levels * (2r+1)^2)."""
    b, h, w, _ = coords.shape
    flat_coords = coords.reshape(b * h * w, 2)
    out = []
    for level, volume in enumerate(pyramid):
        n, height, width = volume.shape
        ys, xs, fx, fy, valid_y, valid_x = _window_indices(flat_coords / 2 ** level, radius, height, width)
        index = ys[:, :, None] * width + xs[:, None, :]  # (N, 2r+2, 2r+2)
        block = jnp.take_along_axis(volume.reshape(n, height * width), index.reshape(n, -1), axis=1)
        block = block.reshape(index.shape) * (valid_y[:, :, None] & valid_x[:, None, :])
        out.append(_blend(block, fx, fy, radius))
    return jnp.concatenate(out, axis=-1).reshape(b, h, w, -1)


def lookup_on_the_fly(fmap1: jnp.ndarray, pyramid2: Sequence[jnp.ndarray], coords: jnp.ndarray,
                      radius: int) -> jnp.ndarray:
    """Window correlations computed from features: fmap1 (B, h, w, D), pooled frame-2 features,
    coords (B, h, w, 2) -> (B, h, w, levels * (2r+1)^2).  One block row at a time, so the gathered
    features are (B, h, w, 2r+2, D) at most."""
    b, h, w, d = fmap1.shape
    f1 = fmap1.astype(jnp.float32).reshape(b, h * w, d)
    scale = 1.0 / jnp.sqrt(jnp.float32(d))
    out = []
    for level, f2 in enumerate(pyramid2):
        _, height, width, _ = f2.shape
        flat_coords = coords.reshape(b, h * w, 2) / 2 ** level
        ys, xs, fx, fy, valid_y, valid_x = _window_indices(flat_coords, radius, height, width)
        f2_flat = f2.reshape(b, height * width, d)

        # Called right away by lax.map, inside this iteration: the loop variables are current.
        def block_row(row):  # noqa: B023 - one y of the block: (B, h*w, 2r+2) correlations
            y_row, y_ok = row  # (B, h*w), (B, h*w)
            index = y_row[..., None] * width + xs  # noqa: B023 - (B, h*w, 2r+2)
            feats = jax.vmap(lambda f, i: f[i])(f2_flat, index)  # noqa: B023 - (B, h*w, 2r+2, D)
            dots = jnp.einsum("bnd,bnkd->bnk", f1, feats, precision=jax.lax.Precision.HIGHEST) * scale
            return dots * (y_ok[..., None] & valid_x)  # noqa: B023

        rows = jax.lax.map(block_row, (jnp.moveaxis(ys, -1, 0), jnp.moveaxis(valid_y, -1, 0)))
        block = jnp.moveaxis(rows, 0, 2).reshape(b * h * w, ys.shape[-1], xs.shape[-1])
        out.append(_blend(block, fx.reshape(-1), fy.reshape(-1), radius))
    return jnp.concatenate(out, axis=-1).reshape(b, h, w, -1)
