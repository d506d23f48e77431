"""Optical-flow files: Middlebury `.flo`, `.npy` and 16-bit KITTI-style `.png`.

Every reader returns a float32 array `(H, W, 2)` holding `(u, v)` in pixels and raises
`FlowFileError` naming the file and what was wrong; every writer is atomic (write to a
temporary file in the same folder, then rename), so an interrupted job never leaves a
half-written flow behind.
"""

from __future__ import annotations

import os
from typing import Callable

import cv2
import numpy as np

from oclr_jax.atomic import atomic_write_bytes
from oclr_jax.errors import UserError

FLO_MAGIC = 202021.25
_FLO_MAGIC_BYTES = np.array([FLO_MAGIC], dtype="<f4").tobytes()
# KITTI stores u, v as uint16 with value = flow * 64 + 2**15; a third channel marks valid pixels.
_KITTI_SCALE = 64.0
_KITTI_OFFSET = 2.0**15
FLOW_EXTENSIONS = (".flo", ".npy", ".png")
# The Middlebury `.flo` convention marks unknown flow with |value| >= 1e9 (flow-code's
# UNKNOWN_FLOW_THRESH); no real displacement is that large, and the model needs a flow at
# every pixel, so such a file is refused rather than fed to it as a huge motion.
UNKNOWN_FLOW_THRESHOLD = 1e9


class FlowFileError(UserError, ValueError):
    """A flow file is missing, truncated, corrupt or holds non-finite values."""


def _check_flow_array(flow: np.ndarray, path: str, allow_nonfinite: bool) -> np.ndarray:
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise FlowFileError(f"{path}: expected a flow of shape (H, W, 2), found {flow.shape}")
    if not allow_nonfinite and not np.all(np.isfinite(flow)):
        bad = int(np.size(flow) - np.count_nonzero(np.isfinite(flow)))
        raise FlowFileError(f"{path}: flow holds {bad} NaN/inf values")
    unknown = np.abs(np.nan_to_num(flow)) >= UNKNOWN_FLOW_THRESHOLD
    if unknown.any():
        pixels = int(np.count_nonzero(unknown.any(axis=-1)))
        raise FlowFileError(
            f"{path}: {pixels} pixels hold flow values >= 1e9, the Middlebury marker of unknown "
            "flow; the model needs a flow at every pixel: fill them (e.g. recompute the flow "
            "with RAFT) before using this file")
    return flow


def read_flo(path: str, allow_nonfinite: bool = False) -> np.ndarray:
    """Reads a Middlebury `.flo` file.  Returns `(H, W, 2)` float32."""
    try:
        with open(path, "rb") as f:
            header = f.read(12)
            payload = f.read()
    except OSError as e:
        raise FlowFileError(f"{path}: cannot read flow file ({e.strerror or e})") from e
    if len(header) < 12:
        raise FlowFileError(f"{path}: truncated .flo header ({len(header)} of 12 bytes)")
    if header[:4] != _FLO_MAGIC_BYTES:
        magic = np.frombuffer(header[:4], "<f4")[0]
        raise FlowFileError(f"{path}: not a .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    width, height = (int(x) for x in np.frombuffer(header[4:12], "<i4"))
    if width <= 0 or height <= 0 or width * height > 1 << 28:
        raise FlowFileError(f"{path}: implausible .flo size {width}x{height}")
    expected = width * height * 2 * 4
    if len(payload) != expected:
        raise FlowFileError(
            f"{path}: .flo of {width}x{height} needs {expected} data bytes, found {len(payload)}")
    flow = np.frombuffer(payload, "<f4").reshape(height, width, 2).astype(np.float32)
    return _check_flow_array(flow, path, allow_nonfinite)


def read_npy_flow(path: str, allow_nonfinite: bool = False) -> np.ndarray:
    """Reads a `.npy` flow stored as `(H, W, 2)` (or `(2, H, W)`, transposed here)."""
    try:
        flow = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FlowFileError(f"{path}: cannot read .npy flow ({e})") from e
    if flow.ndim == 3 and flow.shape[0] == 2 and flow.shape[-1] != 2:
        flow = np.transpose(flow, (1, 2, 0))
    return _check_flow_array(np.asarray(flow, np.float32), path, allow_nonfinite)


def read_kitti_png_flow(path: str, allow_nonfinite: bool = False) -> np.ndarray:
    """Reads a 16-bit KITTI-style flow PNG; invalid pixels (third channel 0) become 0 flow."""
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FlowFileError(f"{path}: cannot decode PNG flow")
    if raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[-1] != 3:
        raise FlowFileError(
            f"{path}: KITTI flow PNG must be 16-bit with 3 channels, found {raw.dtype} {raw.shape}")
    bgr = raw.astype(np.float32)
    valid = bgr[..., 0] > 0  # OpenCV reads BGR: channel 0 is the validity mask (KITTI's B).
    uv = (bgr[..., [2, 1]] - _KITTI_OFFSET) / _KITTI_SCALE
    uv[~valid] = 0.0
    return _check_flow_array(uv, path, allow_nonfinite)


_READERS: dict[str, Callable[..., np.ndarray]] = {
    ".flo": read_flo,
    ".npy": read_npy_flow,
    ".png": read_kitti_png_flow,
}


def read_flow(path: str, allow_nonfinite: bool = False) -> np.ndarray:
    """Reads any supported flow file by its extension.  Returns `(H, W, 2)` float32."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _READERS:
        raise FlowFileError(f"{path}: unknown flow extension {ext!r}; expected one of {FLOW_EXTENSIONS}")
    if not os.path.exists(path):
        raise FlowFileError(f"{path}: flow file does not exist")
    return _READERS[ext](path, allow_nonfinite=allow_nonfinite)


def encode_flo(flow: np.ndarray) -> bytes:
    """The bytes of a `.flo` file for a `(H, W, 2)` flow."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"expected a flow of shape (H, W, 2), found {flow.shape}")
    height, width = flow.shape[:2]
    header = _FLO_MAGIC_BYTES + np.array([width, height], "<i4").tobytes()
    return header + np.ascontiguousarray(flow, dtype="<f4").tobytes()


def write_flo(path: str, flow: np.ndarray) -> None:
    """Writes a Middlebury `.flo` file atomically."""
    atomic_write_bytes(path, encode_flo(flow))


def write_kitti_png_flow(path: str, flow: np.ndarray) -> None:
    """Writes a 16-bit KITTI-style flow PNG atomically (precision 1/64 px, range ±512 px)."""
    flow = np.asarray(flow, np.float32)
    encoded = np.clip(np.round(flow * _KITTI_SCALE + _KITTI_OFFSET), 0, 65535).astype(np.uint16)
    bgr = np.stack([np.ones(flow.shape[:2], np.uint16), encoded[..., 1], encoded[..., 0]], -1)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the flow PNG")
    atomic_write_bytes(path, buf.tobytes())


def check_flow_size(flow_size, image_size, path: str) -> None:
    """Raises unless a flow of `flow_size` (h, w) can belong to frames of `image_size` (H, W).

    Allowed: the same size; RAFT's padding to a multiple of 8 (up to 7 extra rows/columns);
    or the same aspect (flow computed on resized frames: its vectors are in its own pixels and
    `resize_flow` scales them).  Anything else (a transposed field, another sequence's flow)
    would be resized into a wrong motion without a word.
    """
    h, w = (int(v) for v in flow_size)
    height, width = (int(v) for v in image_size)
    if (h, w) == (height, width) or (0 <= h - height < 8 and 0 <= w - width < 8):
        return
    # Same aspect up to the rounding of a resize (one pixel either way).
    if abs(h * width - w * height) <= max(h, w, height, width):
        return
    raise FlowFileError(
        f"{path}: flow of {h}x{w} (HxW) contradicts the frames of {height}x{width}: neither "
        "the same size, RAFT's padding to a multiple of 8, nor the same aspect; is it the flow "
        "of another sequence or stored transposed?")
