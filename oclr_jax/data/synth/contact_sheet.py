"""A contact sheet of one sequence: RGB, flow, amodal layers and modal composition.

One row per shown frame; columns: RGB, forward flow, backward flow (colour wheel, one
normaliser for the whole sheet so speeds compare across frames), each amodal layer
(its palette colour over the dimmed RGB) and the modal composition.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from oclr_jax.atomic import atomic_write_bytes
from oclr_jax.data.flow_viz import colour_wheel_legend, flow_to_rgb
from oclr_jax.data.masks_io import davis_palette
from oclr_jax.data.synth.render import SyntheticSequence

HEADER = 22  # pixels of column titles


def _title(tile: np.ndarray, text: str) -> np.ndarray:
    header = np.full((HEADER, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(header, text, (4, HEADER - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return header


def _overlay(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    dimmed = (rgb.astype(np.float32) * 0.35).astype(np.uint8)
    dimmed[mask] = (0.4 * rgb[mask] + 0.6 * colour).astype(np.uint8)
    return dimmed


def contact_sheet(seq: SyntheticSequence, num_frames: int = 6) -> np.ndarray:
    """The sheet as `(H', W', 3)` uint8 RGB."""
    total = seq.rgb.shape[0]
    frames = np.unique(np.linspace(0, total - 1, min(num_frames, total)).round().astype(int))
    palette = davis_palette()
    num_objects = seq.amodal.shape[-1]
    speed = np.sqrt((np.concatenate([seq.flow_fwd[frames], seq.flow_bwd[frames]]) ** 2).sum(-1))
    max_magnitude = max(float(speed.max()), 1e-3)
    titles = ["rgb", f"flow +1 (max {max_magnitude:.1f}px)", "flow -1"]
    titles += [f"amodal {k + 1}" for k in range(num_objects)] + ["modal"]
    rows = []
    for t in frames:
        modal = np.zeros(seq.rgb.shape[1:], np.uint8)
        for k in range(num_objects):
            modal[seq.modal[t, ..., k]] = palette[k + 1]
        tiles = [seq.rgb[t], flow_to_rgb(seq.flow_fwd[t], max_magnitude),
                 flow_to_rgb(seq.flow_bwd[t], max_magnitude)]
        tiles += [_overlay(seq.rgb[t], seq.amodal[t, ..., k], palette[k + 1]) for k in range(num_objects)]
        tiles.append(modal)
        row = np.concatenate([np.pad(tile, ((1, 1), (1, 1), (0, 0)), constant_values=255) for tile in tiles], 1)
        label = np.full((row.shape[0], 40, 3), 255, np.uint8)
        cv2.putText(label, f"t={t}", (2, row.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label, row], 1))
    tile_width = seq.rgb.shape[2] + 2
    header = np.concatenate([np.full((HEADER, 40, 3), 255, np.uint8)]
                            + [_title(np.zeros((1, tile_width, 3), np.uint8), title) for title in titles], 1)
    sheet = np.concatenate([header] + rows, 0)
    legend = colour_wheel_legend(48)
    footer = np.full((legend.shape[0] + 4, sheet.shape[1], 3), 255, np.uint8)
    footer[2:2 + legend.shape[0], 42:42 + legend.shape[1]] = legend
    cv2.putText(footer, f"{seq.name}: colour wheel (direction = hue, speed = saturation)",
                (100, legend.shape[0] // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([sheet, footer], 0)


def save_image(path: str, rgb: np.ndarray) -> None:
    """Writes an RGB image atomically (format from the extension)."""
    extension = os.path.splitext(path)[1] or ".png"
    ok, buffer = cv2.imencode(extension, np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot write {extension} images")
    atomic_write_bytes(path, buffer.tobytes())
