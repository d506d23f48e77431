"""The demo's visual report: per-frame panels, MP4, GIF, masks, summary and index.html.

A panel row shows the video with the modal masks overlaid, the flow in the standard colour
wheel, and one tile per object layer with its amodal mask (the visible part solid, the occluded
part lighter) and its depth rank.  Synthetic clips get a second row with the ground truth.
The whole folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import html
import json
import os

import cv2
import numpy as np
from PIL import Image

from oclr_jax.atomic import staged_directory
from oclr_jax.data.flow_viz import flow_to_rgb
from oclr_jax.data.masks_io import write_binary_png, write_indexed_png

LAYER_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
                          [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]],
                         np.uint8)
TILE_WIDTH = 256  # tiles are scaled (up or down) to this width
MAX_GIF_WIDTH = 1000


def colour(index: int) -> np.ndarray:
    return LAYER_COLOURS[index % len(LAYER_COLOURS)].astype(np.float32)


def resize(image: np.ndarray, size, nearest: bool = False) -> np.ndarray:
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    mode = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=mode)


def label(tile: np.ndarray, text: str) -> np.ndarray:
    """Writes `text` at the top-left with a dark outline so it reads on any background."""
    tile = np.ascontiguousarray(tile)
    for thickness, ink in ((3, (0, 0, 0)), (1, (255, 255, 255))):
        cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, ink, thickness,
                    cv2.LINE_AA)
    return tile


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
        cv2.putText(tile, text, (4, 14 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255),
                    1, cv2.LINE_AA)
    return tile


def panel(rgb, flow_rgb, amodal, modal, front_to_back, gt=None, scores=None) -> np.ndarray:
    """One frame's panel.  rgb (H, W, 3); amodal/modal (H, W, K); gt (amodal, modal) or None."""
    height, width = rgb.shape[:2]
    scale = TILE_WIDTH / width
    size = (int(round(height * scale)) // 2 * 2, int(round(width * scale)) // 2 * 2)
    small = resize(rgb, size)
    shrink = lambda m: resize(m.astype(np.uint8), size, nearest=True).reshape(*size, -1) > 0
    amodal, modal = shrink(amodal), shrink(modal)
    depth_of_layer = np.argsort(front_to_back)
    row = [label(overlay_modal(small, modal), "prediction (modal)"),
           label(resize(flow_rgb, size), "flow (gap +1)")]
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


def write_mp4(path: str, frames: list, fps: float) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot open an MP4 writer")
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
            f"<tr><td>{o['object']}</td><td>{o['layer'] + 1 if o['layer'] >= 0 else '-'}</td>"
            f"<td>{o['modal_J']:.3f}</td><td>{o['amodal_J']:.3f}</td></tr>"
            for o in scores["objects"])
        rows = ("<h2>Ground truth</h2><table><tr><th>object</th><th>layer</th><th>modal J</th>"
                f"<th>amodal J</th></tr>{rows}<tr><td>mean</td><td></td>"
                f"<td>{scores['modal_J']:.3f}</td><td>{scores['amodal_J']:.3f}</td></tr></table>")
    order = ", ".join(f"layer {k + 1}" for k in summary["front_to_back_first_window"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>OCLR demo: {html.escape(summary['clip'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 10px;text-align:right}}</style>
</head><body>
<h1>OCLR: {html.escape(summary['clip'])}</h1>
<p>{summary['frames']} frames; checkpoint <code>{html.escape(summary['checkpoint'])}</code>.
Top row: video with the modal masks, flow (colour wheel), each layer's amodal mask (solid:
visible, light: occluded) with its depth (1 = nearest).</p>
<p>Layer order of the first window, front to back: {order}.</p>
<img src="demo.gif" alt="demo animation"><p><a href="demo.mp4">demo.mp4</a> &middot;
<a href="summary.json">summary.json</a> &middot; masks in <code>masks/</code> (indexed PNG,
DAVIS palette) and <code>amodal/</code></p>
{rows}
<h2>Middle frame</h2><img src="preview.png" alt="middle frame">
</body></html>
"""


def write_report(out_dir: str, clip, prediction, scores, checkpoint: str) -> dict:
    """Writes every output of the demo to `out_dir` (replaced atomically).  Returns the summary."""
    out_dir = os.path.abspath(out_dir)
    with staged_directory(out_dir) as staging:
        num_frames = len(clip.rgb)
        max_magnitude = float(np.percentile(np.linalg.norm(clip.flow[..., :2], axis=-1), 99)) or 1.0
        gt = (clip.gt_amodal, clip.gt_modal) if clip.gt_modal is not None else None
        panels = []
        for t in range(num_frames):
            flow_rgb = flow_to_rgb(clip.flow[t, ..., :2], max_magnitude)
            panels.append(panel(clip.rgb[t], flow_rgb, prediction.amodal[t], prediction.modal[t],
                                prediction.front_to_back[t],
                                None if gt is None else (gt[0][t], gt[1][t]), scores))
            labels = np.max(np.where(prediction.modal[t], np.arange(1, prediction.modal.shape[-1] + 1), 0),
                            axis=-1).astype(np.uint8)
            write_indexed_png(os.path.join(staging, "masks", f"{t:05d}.png"), labels)
            for k in range(prediction.amodal.shape[-1]):
                write_binary_png(os.path.join(staging, "amodal", f"{k + 1}_{t:05d}.png"),
                                 prediction.amodal[t, ..., k])
        write_mp4(os.path.join(staging, "demo.mp4"), panels, clip.fps)
        write_gif(os.path.join(staging, "demo.gif"), panels, clip.fps)
        Image.fromarray(panels[num_frames // 2]).save(os.path.join(staging, "preview.png"))
        summary = {"out": out_dir, "clip": clip.name, "frames": num_frames,
                   "checkpoint": checkpoint, "scores": scores,
                   "front_to_back_first_window": [int(k) for k in prediction.front_to_back[0]],
                   "order_logits_first_window": [float(v) for v in prediction.order_logits[0]]}
        with open(os.path.join(staging, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(staging, "index.html"), "w") as f:
            f.write(index_html(summary))
    return summary
