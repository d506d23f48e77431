"""The demo's visual report: per-frame panels, MP4, GIF, masks, summary and index.html.

A panel row shows the video with the modal masks overlaid, the flow in the standard colour
wheel (with its key), and one tile per object layer with its amodal mask (the visible part
solid, the occluded part lighter) and its depth rank.  Synthetic clips get a second row with
the ground truth.  Tiles follow the input size (between MIN_TILE_WIDTH and MAX_TILE_WIDTH
wide).  Layers are numbered 1..K everywhere: tile labels, the page, `summary.json`, label k
in `masks/` and `amodal/<k>_<frame>.png`.

The video is VP9 in WebM (`demo.webm`), which OpenCV's bundled FFmpeg encodes and browsers
play; OpenCV's MP4 writer only has MPEG-4 part 2 (`mp4v`), which Chromium refuses.
The whole folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import sys

import cv2
import numpy as np
from PIL import Image

from oclr_jax.atomic import staged_directory
from oclr_jax.data.flow_viz import colour_wheel_legend, flow_to_rgb
from oclr_jax.data.masks_io import write_binary_png, write_indexed_png

LAYER_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
                          [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]],
                         np.uint8)
MIN_TILE_WIDTH = 256  # small clips are scaled up so the labels stay legible
MAX_TILE_WIDTH = 640  # large clips are scaled down so a row of tiles fits a screen
MAX_GIF_WIDTH = 1000
VIDEO_FILE = "demo.webm"
MARKER = ".oclr_demo_output"  # marks a folder as the demo's own output (see oclr_jax.errors)


def colour(index: int) -> np.ndarray:
    return LAYER_COLOURS[index % len(LAYER_COLOURS)].astype(np.float32)


def resize(image: np.ndarray, size, nearest: bool = False) -> np.ndarray:
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    mode = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=mode)


def text_scale(tile_width: int) -> float:
    """Font scale of the labels: 0.4 on a 256-px tile, growing with the tile."""
    return 0.4 * tile_width / MIN_TILE_WIDTH


def label(tile: np.ndarray, text: str, line: int = 0, bottom: bool = False) -> np.ndarray:
    """Writes `text` (top-left, or bottom-left) in white with a black outline.

    The outline is the same thin text stamped at the 8 neighbouring offsets: a thicker stroke
    would advance each glyph further than the white text and garble the label.
    """
    tile = np.ascontiguousarray(tile)
    scale = text_scale(tile.shape[1])
    thickness = max(1, int(round(scale * 1.5)))
    line_height = int(round(36 * scale))
    x = int(round(10 * scale))
    y = (tile.shape[0] - int(round(10 * scale)) - line * line_height if bottom
         else int(round(35 * scale)) + line * line_height)
    offset = max(1, thickness)
    for dx in (-offset, 0, offset):
        for dy in (-offset, 0, offset):
            if dx or dy:
                cv2.putText(tile, text, (x + dx, y + dy), cv2.FONT_HERSHEY_SIMPLEX, scale,
                            (0, 0, 0), thickness, cv2.LINE_AA)
    cv2.putText(tile, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
    return tile


def with_flow_key(flow_tile: np.ndarray, rim_pixels: float) -> np.ndarray:
    """The flow tile with the colour wheel in its bottom-right corner: a vector's direction is
    its hue and its length the saturation, full at the rim (`rim_pixels` per frame)."""
    tile = np.ascontiguousarray(flow_tile).copy()
    size = max(24, tile.shape[0] // 4) // 2 * 2 + 1
    wheel = colour_wheel_legend(size)
    coords = np.arange(size) - (size - 1) / 2.0
    disk = (coords[None] ** 2 + coords[:, None] ** 2) <= ((size - 1) / 2.0) ** 2
    margin = max(2, size // 8)
    y0, x0 = tile.shape[0] - size - margin, tile.shape[1] - size - margin
    region = tile[y0:y0 + size, x0:x0 + size]
    region[disk] = wheel[disk]
    return label(tile, f"key: rim {rim_pixels:.1f} px/frame", bottom=True)


def overlay_modal(rgb: np.ndarray, modal: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGB (H, W, 3) with each layer's visible pixels tinted.  modal (H, W, K) bool."""
    out = rgb.astype(np.float32)
    for k in range(modal.shape[-1]):
        out[modal[..., k]] = (1 - alpha) * out[modal[..., k]] + alpha * colour(k)
    return out.astype(np.uint8)


def amodal_tile(rgb: np.ndarray, amodal: np.ndarray, modal: np.ndarray, k: int) -> np.ndarray:
    """One layer: the dimmed frame, the visible part solid, the occluded part half-tinted."""
    out = rgb.astype(np.float32) * 0.3
    hidden = amodal & ~modal
    out[hidden] = 0.5 * out[hidden] + 0.5 * colour(k) * 0.7
    out[modal] = colour(k)
    return out.astype(np.uint8)


def score_tile(size, scores) -> np.ndarray:
    """A dark tile listing J per ground-truth object (or nothing without scores)."""
    tile = np.zeros((*size, 3), np.uint8)
    if scores is None:
        return tile
    lines = ["J per object (modal / amodal)"] + [
        f"object {o['object']}: {o['modal_J']:.2f} / {o['amodal_J']:.2f}" for o in scores["objects"]]
    for i, text in enumerate(lines):
        tile = label(tile, text, line=i)
    return tile


def tile_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) of a tile for frames of `height` x `width`: the input size, kept within
    MIN_TILE_WIDTH..MAX_TILE_WIDTH wide (aspect kept, even sizes for the video encoder)."""
    tile_width = min(max(width, MIN_TILE_WIDTH), MAX_TILE_WIDTH)
    scale = tile_width / width
    return max(2, int(round(height * scale)) // 2 * 2), max(2, int(round(width * scale)) // 2 * 2)


def panel(rgb, flow_rgb, amodal, modal, front_to_back, gt=None, scores=None,
          flow_rim_pixels: float = 1.0) -> np.ndarray:
    """One frame's panel.  rgb (H, W, 3); amodal/modal (H, W, K); gt (amodal, modal) or None;
    `flow_rim_pixels`: the flow length (frame pixels) drawn at full colour."""
    height, width = rgb.shape[:2]
    size = tile_size(height, width)
    small = resize(rgb, size)
    shrink = lambda m: resize(m.astype(np.uint8), size, nearest=True).reshape(*size, -1) > 0
    amodal, modal = shrink(amodal), shrink(modal)
    depth_of_layer = np.argsort(front_to_back)
    row = [label(overlay_modal(small, modal), "prediction (modal)"),
           label(with_flow_key(resize(flow_rgb, size), flow_rim_pixels), "flow (gap +1)")]
    row += [label(amodal_tile(small, amodal[..., k], modal[..., k], k),
                  f"layer {k + 1} amodal, depth {depth_of_layer[k] + 1}")
            for k in range(amodal.shape[-1])]
    rows = [np.concatenate(row, axis=1)]
    if gt is not None:
        gt_amodal, gt_modal = shrink(gt[0]), shrink(gt[1])
        text = "ground truth"
        if scores is not None:
            text += f", mean J {scores['modal_J']:.2f}"
        gt_row = [label(overlay_modal(small, gt_modal), text), score_tile(size, scores)]
        gt_row += [label(amodal_tile(small, gt_amodal[..., n], gt_modal[..., n], n),
                         f"object {n + 1} amodal")
                   for n in range(gt_amodal.shape[-1])]
        gt_row = np.concatenate(gt_row, axis=1)
        pad = rows[0].shape[1] - gt_row.shape[1]
        if pad > 0:
            gt_row = np.pad(gt_row, ((0, 0), (0, pad), (0, 0)))
        rows.append(gt_row[:, :rows[0].shape[1]])
    return np.concatenate(rows, axis=0)


@contextlib.contextmanager
def _stderr_silenced():
    """Discards what C code writes to file descriptor 2 inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def write_webm(path: str, frames: list, fps: float) -> None:
    """VP9 in WebM: what Chromium and Firefox play and OpenCV's bundled FFmpeg can write."""
    height, width = frames[0].shape[:2]
    with _stderr_silenced():  # FFmpeg's note that WebM stores no fourcc tag: not for users
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"VP90"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot open a VP9/WebM writer")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def write_gif(path: str, frames: list, fps: float) -> None:
    width = frames[0].shape[1]
    scale = min(1.0, MAX_GIF_WIDTH / width)
    size = (int(frames[0].shape[0] * scale), int(width * scale))
    images = [Image.fromarray(resize(f, size)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=int(round(1000 / max(fps, 1e-3))), optimize=False)


def index_html(summary: dict) -> str:
    scores = summary.get("scores")
    rows = ""
    if scores:
        rows = "".join(
            f"<tr><td>{o['object']}</td><td>{o['layer'] if o['layer'] else '-'}</td>"
            f"<td>{o['modal_J']:.3f}</td><td>{o['amodal_J']:.3f}</td></tr>"
            for o in scores["objects"])
        rows = ("<h2>Ground truth</h2><table><tr><th>object</th><th>layer</th><th>modal J</th>"
                f"<th>amodal J</th></tr>{rows}<tr><td>mean</td><td></td>"
                f"<td>{scores['modal_J']:.3f}</td><td>{scores['amodal_J']:.3f}</td></tr></table>")
    order = ", ".join(f"layer {k}" for k in summary["front_to_back_first_window"])
    about = (f" ({html.escape(summary['checkpoint_description'])})"
             if summary.get("checkpoint_description") else "")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>OCLR demo: {html.escape(summary['clip'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 10px;text-align:right}}</style>
</head><body>
<h1>OCLR: {html.escape(summary['clip'])}</h1>
<p>{summary['frames']} frames; checkpoint <code>{html.escape(summary['checkpoint'])}</code>{about}.
Top row: video with the modal masks, flow (colour wheel; the key in its corner: hue is the
direction, saturation the length), each layer's amodal mask (solid: visible, light: occluded)
with its depth (1 = nearest).  Layers are numbered 1..{summary['layers']} here, in
<code>summary.json</code>, in <code>masks/</code> (label k) and <code>amodal/&lt;k&gt;_&lt;frame&gt;.png</code>.</p>
<p>Layer order of the first window, front to back: {order}.</p>
<video id="demo" src="{VIDEO_FILE}" controls autoplay loop muted playsinline></video>
<p><a href="{VIDEO_FILE}">{VIDEO_FILE}</a> (VP9) &middot; <a href="demo.gif">demo.gif</a> &middot;
<a href="summary.json">summary.json</a> &middot; masks in <code>masks/</code> (indexed PNG,
DAVIS palette) and <code>amodal/</code></p>
{rows}
<h2>Middle frame</h2><img src="preview.png" alt="middle frame">
</body></html>
"""


def write_report(out_dir: str, clip, prediction, scores, checkpoint: str,
                 checkpoint_description: str = "") -> dict:
    """Writes every output of the demo to `out_dir` (replaced atomically).  Returns the summary.

    `scores` objects carry 0-based `layer` indices (-1: none) as `score_against_gt` returns
    them; the summary numbers layers 1..K (None: none), as the page and the file names do.
    The caller checks `out_dir` first (`errors.check_output_dir`): it is replaced.
    """
    out_dir = os.path.abspath(out_dir)
    with staged_directory(out_dir) as staging:
        num_frames = len(clip.rgb)
        max_magnitude = float(np.percentile(np.linalg.norm(clip.flow[..., :2], axis=-1), 99)) or 1.0
        # The rim of the key in frame pixels (the flow is at the model resolution).
        rim_pixels = max_magnitude * clip.rgb.shape[2] / clip.flow.shape[2]
        gt = (clip.gt_amodal, clip.gt_modal) if clip.gt_modal is not None else None
        panels = []
        for t in range(num_frames):
            flow_rgb = flow_to_rgb(clip.flow[t, ..., :2], max_magnitude)
            panels.append(panel(clip.rgb[t], flow_rgb, prediction.amodal[t], prediction.modal[t],
                                prediction.front_to_back[t],
                                None if gt is None else (gt[0][t], gt[1][t]), scores,
                                flow_rim_pixels=rim_pixels))
            labels = np.max(np.where(prediction.modal[t], np.arange(1, prediction.modal.shape[-1] + 1), 0),
                            axis=-1).astype(np.uint8)
            write_indexed_png(os.path.join(staging, "masks", f"{t:05d}.png"), labels)
            for k in range(prediction.amodal.shape[-1]):
                write_binary_png(os.path.join(staging, "amodal", f"{k + 1}_{t:05d}.png"),
                                 prediction.amodal[t, ..., k])
        write_webm(os.path.join(staging, VIDEO_FILE), panels, clip.fps)
        write_gif(os.path.join(staging, "demo.gif"), panels, clip.fps)
        Image.fromarray(panels[num_frames // 2]).save(os.path.join(staging, "preview.png"))
        if scores is not None:
            scores = dict(scores, objects=[
                dict(o, layer=int(o["layer"]) + 1 if o["layer"] >= 0 else None)
                for o in scores["objects"]])
        summary = {"out": out_dir, "clip": clip.name, "frames": num_frames,
                   "checkpoint": checkpoint, "checkpoint_description": checkpoint_description,
                   "layers": int(prediction.amodal.shape[-1]),
                   "layer_numbering": "1..K as on the page, label k in masks/, "
                                      "amodal/<k>_<frame>.png",
                   "scores": scores,
                   "front_to_back_first_window": [int(k) + 1 for k in prediction.front_to_back[0]],
                   "order_logits_first_window": [float(v) for v in prediction.order_logits[0]]}
        with open(os.path.join(staging, MARKER), "w") as f:
            f.write("written by python -m oclr_jax.demo; --out may replace this folder\n")
        with open(os.path.join(staging, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(staging, "index.html"), "w") as f:
            f.write(index_html(summary))
    return summary
