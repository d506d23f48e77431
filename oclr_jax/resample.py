"""Every resampling rule of the package, each named after the reference it reproduces.

Resizing is where a port silently drifts from the official numbers: three libraries round the
same "nearest" or "bilinear" differently, and the official code uses all three.  Each rule
below reproduces one reference exactly and is tested against it on awkward sizes
(`tests/test_resample.py`):

- `torch_nearest_indices`: torch `F.interpolate(mode="nearest")`.  GT masks to the logits'
  size in the losses and the matcher; `eval.upsample="nearest"`.
- `pil_nearest_indices`: PIL `Image.resize(..., Image.NEAREST)`.  Test-time adaptation: masks
  to the patch grid and back (the official DINO code uses PIL).
- `bilinear`: OpenCV `cv2.resize(..., interpolation=cv2.INTER_LINEAR)`.  Flow (`resize_flow`),
  predicted masks (`eval.upsample="bilinear"`), official-layout masks and RGB frames.
- `resize_flow`: `bilinear` with the vectors scaled to the new grid; every flow read at
  another size than it was stored.
- `opencv_nearest`: OpenCV `INTER_NEAREST`.  Label maps (official-layout `Annotations/`,
  evaluation overlays).
- `upsample_linear`: torch bilinear, `align_corners=False`, on device.  TTA: soft labels from
  the patch grid to pixels.

Display-only resizes that change no score (demo thumbnails and video frames, `INTER_AREA`)
stay where they are drawn.  The tf.data input pipeline resizes with `tf.image.resize(method="bilinear")`, which follows
the same half-pixel-centre formula as `bilinear` (tested equal on float32).
"""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import jax
import numpy as np

IndexRule = Callable[[int, int], np.ndarray]


def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index under torch's `F.interpolate(mode="nearest")`.

    torch computes `floor(i * (in / out))` with the scale in float32 and clamps to the last
    index.  Returns `(out_size,)` int64.
    """
    if in_size == out_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)


def pil_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index under PIL's `Image.resize(..., Image.NEAREST)`.

    PIL (`ImagingScaleAffine`) starts at the first output pixel's centre, `0.5 * in / out`,
    and ADDS the step `in / out` once per output pixel in double precision, truncating each
    position.  The accumulated rounding puts some exact half-way positions just below the
    integer: 832 -> 854 maps output column 640 to source 623, where the closed form
    `floor((i + 0.5) * in / out)` gives 624.  Returns `(out_size,)` int64.
    """
    step = in_size / out_size
    positions = np.add.accumulate(np.concatenate([[0.5 * step], np.full(out_size - 1, step)]))
    return np.minimum(positions.astype(np.int64), in_size - 1)


def resize_nearest(array: np.ndarray, size: Sequence[int], rule: IndexRule,
                   axes: Sequence[int] = (0, 1)) -> np.ndarray:
    """Nearest-neighbour resample of two axes of `array` (rows, cols) to `size` (H, W)."""
    rows = rule(array.shape[axes[0]], int(size[0]))
    cols = rule(array.shape[axes[1]], int(size[1]))
    return np.take(np.take(array, rows, axis=axes[0]), cols, axis=axes[1])


def bilinear(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """OpenCV's `INTER_LINEAR` resize of an `(H, W)` or `(H, W, C)` array to `size` (H, W).

    Half-pixel centres (`x_src = (x + 0.5) * in / out - 0.5`), edge pixels replicated, no
    antialiasing when shrinking.  The dtype is kept, with OpenCV's own arithmetic for it
    (uint8 frames and 0/255 masks are rounded as the official loaders round them).
    """
    image = np.asarray(image)
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return image
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape((height, width) + image.shape[2:])  # cv2 drops a last axis of 1


def opencv_nearest(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """OpenCV's `INTER_NEAREST` resize (source index `floor(i * in / out)` in double precision)
    of an `(H, W)` or `(H, W, C)` array: label maps, where no value may be blended."""
    image = np.asarray(image)
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return image
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.reshape((height, width) + image.shape[2:])


def upsample_linear(images: jax.Array, size: Sequence[int]) -> jax.Array:
    """torch's bilinear `F.interpolate(align_corners=False)` upsampling of `(B, h, w, C)` to
    `(B, H, W, C)`, on device.

    `jax.image.resize(method="linear")` uses the same half-pixel-centre weights when it grows
    an image; when it shrinks one it antialiases and torch does not, so shrinking is refused.
    """
    batch, height, width, channels = images.shape
    if size[0] < height or size[1] < width:
        raise ValueError(f"upsample_linear only grows images; got {(height, width)} -> "
                         f"{tuple(size)}")
    return jax.image.resize(images, (batch, int(size[0]), int(size[1]), channels),
                            method="linear")


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an `(H, W, 2)` flow with the vectors scaled to the new grid.

    Flow is measured in pixels of the grid it lives on, so `u` is multiplied by
    `W_new / W_old` and `v` by `H_new / H_old`.
    """
    old_h, old_w = flow.shape[:2]
    if (old_h, old_w) == (height, width):
        return np.asarray(flow, np.float32)
    scale = np.array([width / old_w, height / old_h], np.float32)
    return (bilinear(np.asarray(flow, np.float32), (height, width)) * scale).astype(np.float32)
