"""Compact, fast-to-decode storage of flow sequences (used by the `oclr_synthetic` tfds data).

A flow sequence `(T, H, W, C)` is stored as

1. 16-bit codes with a per-sequence, per-channel range (as Kubric MOVi stores flow):
   `q = round((flow - lo) / step)`, `step = (hi - lo) / 65535`, so the error is at most
   `step / 2` (about 8e-4 px for a 100 px range, far below any flow estimator's error);
2. predicted from the left and upper neighbours of the same channel: the stored residual is
   `r = q[y, x] - q[y, x-1] - q[y-1, x] + q[y-1, x-1]` modulo 2^16 (zero outside the image),
   same `(T, H, W, C)` layout, so that smooth flow becomes runs of small numbers;
3. left to the record's general-purpose compression (ArrayRecord's zstd).

Measured on generated 30-frame 128x224 sequences: 1.6 MB per sequence against 13.8 MB of
float32 (zstd alone on the codes: 6.8 MB; 16-bit PNGs: 4.2 MB), and decoding is two cumulative
sums and a multiply-add in numpy (less than half the CPU of decoding the PNGs with TensorFlow).
"""

from __future__ import annotations

import numpy as np

QUANT_LEVELS = 65535.0


def quantize(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(T, H, W, C)` float flow -> (uint16 codes, `(2, C)` float32 rows lo, hi)."""
    flow = np.asarray(flow, np.float64)
    lo = flow.min(axis=(0, 1, 2)).astype(np.float32)
    hi = flow.max(axis=(0, 1, 2)).astype(np.float32)
    step = (hi.astype(np.float64) - lo) / QUANT_LEVELS
    codes = np.round((flow - lo) / np.where(step > 0, step, 1.0))
    return np.clip(codes, 0, QUANT_LEVELS).astype(np.uint16), np.stack([lo, hi])


def dequantize(codes: np.ndarray, flow_range: np.ndarray) -> np.ndarray:
    """Inverse of `quantize`: `lo + q * (hi - lo) / 65535` in float32."""
    lo, hi = np.asarray(flow_range, np.float32)
    t, h, w, c = codes.shape
    # Scale and offset tiled along W: broadcasting a length-C last axis makes numpy's inner
    # loop C elements long (4x slower here).
    flow = codes.reshape(t, h, w * c).astype(np.float32)
    flow *= np.tile((hi - lo) / np.float32(QUANT_LEVELS), w)
    flow += np.tile(lo, w)
    return flow.reshape(t, h, w, c)


def encode(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(T, H, W, C)` flow -> (residuals `(T, H, W, C)` uint16, `(2, C)` range)."""
    codes, flow_range = quantize(flow)
    zero = np.uint16(0)
    residuals = np.diff(np.diff(codes, axis=2, prepend=zero), axis=1, prepend=zero)
    return np.ascontiguousarray(residuals), flow_range


def integrate(residuals: np.ndarray) -> np.ndarray:
    """Residuals -> the 16-bit codes: cumulative sums along H and W, modulo 2^16."""
    residuals = np.asarray(residuals, np.uint16)
    t, h, w, c = residuals.shape
    # Rows (W * C contiguous values) added one after another, then numpy's cumsum along W:
    # 1.5x faster than two cumsums here (numpy accumulates a middle axis slowly).
    codes = residuals.reshape(t, h, w * c).copy()
    for y in range(1, h):
        np.add(codes[:, y], codes[:, y - 1], out=codes[:, y])
    codes = codes.reshape(t, h, w, c)
    return np.cumsum(codes, axis=2, dtype=np.uint16, out=codes)


def decode(residuals: np.ndarray, flow_range: np.ndarray) -> np.ndarray:
    """Inverse of `encode`.  Returns `(T, H, W, C)` float32."""
    return dequantize(integrate(residuals), flow_range)

