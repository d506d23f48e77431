"""Segment moving objects in a video with one command.

    python -m oclr_jax.demo                       # a synthetic clip + the shipped checkpoint
    python -m oclr_jax.demo --video clip.mp4      # your own video (flow by OpenCV DIS)
    python -m oclr_jax.demo --checkpoint OCLR.pth # any oclr-jax checkpoint or official .pth

Writes to --out (default `demo_out/`): `index.html` (open it in a browser), `demo.mp4`,
`demo.gif`, `preview.png`, `summary.json`, modal masks as indexed PNGs in `masks/` and amodal
masks per layer in `amodal/`.  See docs/demo.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Optional

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from oclr_jax.checkpoint import CheckpointError, load_checkpoint
from oclr_jax.compose import compose_modal_front_to_back, front_to_back
from oclr_jax.data.synth import RenderOptions, plan_split, render_sequence
from oclr_jax.data.synth.backgrounds import estimate_flows
from oclr_jax.demo.report import write_report
from oclr_jax.errors import UserError
from oclr_jax.eval.inference import cut_windows, stitch, upsample_layers
from oclr_jax.eval.metrics import iou_matrix, match_layers_to_objects
from oclr_jax.resample import resize_flow

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "assets", "demo_checkpoint")


class DemoError(UserError, RuntimeError):
    """The demo's input cannot be used (unreadable or too short video, missing checkpoint)."""


@dataclasses.dataclass
class Clip:
    """What the demo segments.

    Attributes:
      rgb: (N, H, W, 3) uint8 frames at display size.
      flow: (N, h, w, C) float32 model input (gaps in config order) at the model resolution.
      name: shown in the report.
      gt_amodal: (N, H, W, n) bool ground truth (synthetic clips only).
      gt_modal: (N, H, W, n) bool.
      fps: frames per second of the outputs.
    """

    rgb: np.ndarray
    flow: np.ndarray
    name: str
    gt_amodal: Optional[np.ndarray] = None
    gt_modal: Optional[np.ndarray] = None
    fps: float = 8.0


# ----------------------------------------------------------------------------- inputs

def stack_gaps(flow_fwd: np.ndarray, flow_bwd: np.ndarray, gaps) -> np.ndarray:
    """(N, h, w, 2) forward/backward flows -> (N, h, w, 2*len(gaps)) in gap order."""
    by_gap = {1: flow_fwd, -1: flow_bwd}
    unsupported = [g for g in gaps if g not in by_gap]
    if unsupported:
        raise DemoError(f"the demo computes flow for gaps +1 and -1 only; the checkpoint "
                        f"wants gaps {tuple(gaps)}")
    return np.concatenate([by_gap[g] for g in gaps], axis=-1).astype(np.float32)


def synthetic_clip(config, seed: int, index: int, frames: int) -> Clip:
    """A Syn-Val-style sequence from our generator at the model resolution."""
    spec = plan_split("syn_val", num_sequences=index + 1, seed=seed)[index]
    options = RenderOptions(resolution=tuple(config.data.resolution), frames=frames)
    seq = render_sequence(spec, options)
    flow = stack_gaps(seq.flow_fwd, seq.flow_bwd, config.data.gaps)
    return Clip(seq.rgb, flow, f"synthetic {seq.name}", seq.amodal, seq.modal)


def read_video(path: str, max_frames: int) -> tuple[np.ndarray, float]:
    """RGB frames (N, H, W, 3) uint8 and the frame rate; clear errors for unusable files."""
    if not os.path.isfile(path):
        raise DemoError(f"{path}: video file does not exist")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DemoError(f"{path}: OpenCV cannot open this video (unsupported or corrupt file)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 8.0
    frames = []
    while len(frames) < max_frames:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if len(frames) < 2:
        raise DemoError(f"{path}: {len(frames)} readable frame(s); motion needs at least 2")
    return np.stack(frames), float(fps)


def video_clip(path: str, config, max_frames: int, flow_height: int) -> Clip:
    """Frames of a user video with DIS flow at gaps +1/-1, resized to the model resolution.

    DIS is computed at `flow_height` rows (the aspect kept) and the field is then resized with
    its vectors scaled, as the official loader does with RAFT flow (DESIGN.md §1).
    """
    rgb, fps = read_video(path, max_frames)
    height, width = rgb.shape[1:3]
    scale = min(1.0, flow_height / height)
    size = (max(16, int(round(width * scale))), max(16, int(round(height * scale))))
    small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in rgb])
    flow_fwd, flow_bwd = estimate_flows(small)
    model_h, model_w = config.data.resolution
    fwd = np.stack([resize_flow(f, model_h, model_w) for f in flow_fwd])
    bwd = np.stack([resize_flow(f, model_h, model_w) for f in flow_bwd])
    return Clip(rgb, stack_gaps(fwd, bwd, config.data.gaps), os.path.basename(path), fps=fps)


# ----------------------------------------------------------------------------- prediction

@dataclasses.dataclass
class Prediction:
    """Model outputs per frame at the display size.

    Attributes:
      amodal: (N, H, W, K) bool amodal masks.
      modal: (N, H, W, K) bool modal masks (eq. 2 with each window's order).
      front_to_back: (N, K) int layer indices nearest first, from each frame's window.
      order_logits: (N, K) float32.
    """

    amodal: np.ndarray
    modal: np.ndarray
    front_to_back: np.ndarray
    order_logits: np.ndarray


def predict_clip(model, params, flow: np.ndarray, window: int, size, progress=None) -> Prediction:
    """Runs the model on windows of `window` frames (the official cutting rule) and upsamples
    the sigmoid masks to `size` (H, W) before thresholding, as the evaluation does."""
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    windows = cut_windows(len(flow), window)
    probs, orders = [], []
    for indices in windows:
        out = apply(params, jnp.asarray(flow[indices][None]))
        probs.append(np.asarray(jax.nn.sigmoid(out["amodal_logits"][0])))  # (T, h, w, K)
        orders.append(np.repeat(np.asarray(out["order_logits"]), len(indices), axis=0))
        if progress is not None:
            progress.update(1)
    probs = stitch(windows, probs, len(flow))
    order_logits = stitch(windows, orders, len(flow))
    amodal = upsample_layers(probs, size)  # (N, H, W, K) bool
    layers_front_to_back = np.asarray(front_to_back(jnp.asarray(order_logits)))
    # Each frame with its own window's order: frames as the batch axis, T = 1.
    modal = np.asarray(compose_modal_front_to_back(amodal[:, None], layers_front_to_back))[:, 0]
    return Prediction(amodal, modal, layers_front_to_back, order_logits)


def score_against_gt(prediction: Prediction, clip: Clip) -> dict:
    """J per ground-truth object for modal and amodal masks, layers matched by modal IoU."""
    to_tk = lambda m: np.moveaxis(m, -1, 1)  # (N, H, W, K) -> (N, K, H, W)
    object_of_layer = match_layers_to_objects(to_tk(prediction.modal), to_tk(clip.gt_modal))
    modal_iou = iou_matrix(to_tk(prediction.modal), to_tk(clip.gt_modal)).mean(0)  # (O, K)
    amodal_iou = iou_matrix(to_tk(prediction.amodal), to_tk(clip.gt_amodal)).mean(0)
    objects = []
    for obj in range(clip.gt_modal.shape[-1]):
        layers = np.flatnonzero(object_of_layer == obj)
        layer = int(layers[0]) if len(layers) else -1
        objects.append({"object": obj + 1, "layer": layer,
                        "modal_J": float(modal_iou[obj, layer]) if layer >= 0 else 0.0,
                        "amodal_J": float(amodal_iou[obj, layer]) if layer >= 0 else 0.0})
    mean = lambda key: float(np.mean([o[key] for o in objects])) if objects else float("nan")
    return {"objects": objects, "modal_J": mean("modal_J"), "amodal_J": mean("amodal_J")}


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m oclr_jax.demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", help="a video file (anything OpenCV reads); default: a "
                        "synthetic clip from our generator")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help="oclr-jax checkpoint folder, training workdir or official .pth "
                        "(default: the checkpoint shipped in oclr_jax/assets)")
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic clip: generator seed")
    parser.add_argument("--index", type=int, default=3, help="synthetic clip: Syn-Val index (default 3)")
    parser.add_argument("--frames", type=int, default=None,
                        help="synthetic clip length (default: 3 windows of the model's T)")
    parser.add_argument("--max-frames", type=int, default=150, help="video: frames to read")
    parser.add_argument("--flow-height", type=int, default=480,
                        help="video: rows at which DIS flow is computed (default 480)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.exists(args.checkpoint):
        raise DemoError(f"{args.checkpoint}: checkpoint not found")
    try:
        model, params, config = load_checkpoint(args.checkpoint)
    except CheckpointError as e:
        raise DemoError(str(e)) from e
    window = int(config.data.num_frames)
    with tqdm(total=4, desc="demo", unit="step") as bar:
        bar.set_postfix_str("reading clip")
        if args.video:
            clip = video_clip(args.video, config, args.max_frames, args.flow_height)
        else:
            clip = synthetic_clip(config, args.seed, args.index, args.frames or 3 * window)
        bar.update(1)
        bar.set_postfix_str("segmenting")
        prediction = predict_clip(model, params, clip.flow, window, clip.rgb.shape[1:3])
        bar.update(1)
        scores = score_against_gt(prediction, clip) if clip.gt_modal is not None else None
        bar.update(1)
        bar.set_postfix_str("writing report")
        summary = write_report(args.out, clip, prediction, scores, checkpoint=args.checkpoint)
        bar.update(1)
    print(json.dumps({k: summary[k] for k in ("out", "frames", "scores") if k in summary}))
    print(f"open {os.path.join(os.path.abspath(args.out), 'index.html')}")
    return 0

