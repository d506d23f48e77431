"""Padding frames for RAFT exactly as the official scripts do (RAFT's `InputPadder`, 'sintel' mode).

Height and width are padded up to the next multiple of 8 by replicating the edge pixels, the
padding split as evenly as possible with the smaller half on the top/left.  The official flow
scripts save the flow at this padded size and never crop it back, and the published numbers
were computed from such files, so we do the same.
"""

from __future__ import annotations

import numpy as np

MULTIPLE = 8
# With a padded side under 128 px the coarsest correlation level is at most 1 px wide and the
# official bilinear sampler divides by (size - 1) = 0: every flow value is NaN (below 64 the
# pooling fails outright).  We refuse such frames instead of writing NaN.
MIN_PADDED_SIDE = 128


def sintel_padding(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixels added to reach multiples of 8."""
    pad_h = (-height) % MULTIPLE
    pad_w = (-width) % MULTIPLE
    return pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2


def padded_size(height: int, width: int) -> tuple[int, int]:
    top, bottom, left, right = sintel_padding(height, width)
    return height + top + bottom, width + left + right


def pad_images(images: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Replicate padding of (..., H, W, C) images."""
    images = np.asarray(images)
    pads = [(0, 0)] * (images.ndim - 3) + [(top, bottom), (left, right), (0, 0)]
    return np.pad(images, pads, mode="edge")


def check_size(height: int, width: int) -> str | None:
    """None when RAFT can run on (height, width) frames; otherwise why not, in words."""
    padded_h, padded_w = padded_size(height, width)
    if min(padded_h, padded_w) < MIN_PADDED_SIDE:
        return (f"frames of {height}x{width} pad to {padded_h}x{padded_w}; RAFT needs each padded side "
                f">= {MIN_PADDED_SIDE} px (smaller frames give NaN flow in the official RAFT). Upscale "
                f"the frames, or use --method dis")
    return None
