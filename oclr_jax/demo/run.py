"""Segment moving objects in a video with one command.

    python -m oclr_jax.demo                       # a synthetic clip + the shipped checkpoint
    python -m oclr_jax.demo --video clip.mp4      # your own video (flow by OpenCV DIS)
    python -m oclr_jax.demo --video clip.mp4 --raft-checkpoint raft-things.pth  # flow by RAFT
    python -m oclr_jax.demo --checkpoint OCLR.pth # any oclr-jax checkpoint or official .pth

Writes to --out (default `demo_out/`; a new folder, or the demo's own earlier output, which is
replaced): `index.html` (open it in a browser), `demo.webm` (VP9), `demo.gif`, `preview.png`,
`summary.json`, modal masks as indexed PNGs in `masks/` and amodal masks per layer in
`amodal/`.  See docs/demo.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Optional

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from oclr_jax.checkpoint import CheckpointError, load_checkpoint
from oclr_jax.compose import front_to_back, hard_modal_masks
from oclr_jax.data.synth import RenderOptions, plan_split, render_sequence
from oclr_jax.data.synth.backgrounds import estimate_flows
from oclr_jax.demo.report import MARKER, write_report
from oclr_jax.errors import UserError, check_output_dir
from oclr_jax.eval.inference import cut_windows, stitch, upsample_layers
from oclr_jax.eval.metrics import iou_matrix, match_layers_to_objects
from oclr_jax.resample import resize_flow

# The default clip, chosen by rule and not by score: the first Syn-Val sequence (seed 0) with
# three objects whose amodal masks overlap (so the page shows layers, occlusion and an order);
# tests/test_demo.py checks the rule still picks it.
DEFAULT_INDEX = 1
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
    """RGB frames (N, H, W, 3) uint8 and the frame rate; clear errors for unusable files.
    At most `max_frames` frames (0: all), with a note when the clip is longer."""
    if not os.path.isfile(path):
        raise DemoError(f"{path}: video file does not exist")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DemoError(f"{path}: OpenCV cannot open this video (unsupported or corrupt file)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 8.0
    frames = []
    while not max_frames or len(frames) < max_frames:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    more = bool(max_frames) and len(frames) == max_frames and capture.read()[0]
    capture.release()
    if more:
        print(f"note: {path}: using the first {max_frames} frames (--max-frames; 0 for the "
              "whole clip)", file=sys.stderr)
    if len(frames) < 2:
        raise DemoError(f"{path}: {len(frames)} readable frame(s); motion needs at least 2")
    return np.stack(frames), float(fps)


def video_clip(path: str, config, max_frames: int, flow_height: int,
               raft_checkpoint: Optional[str] = None, raft_iters: int = 20,
               progress=None) -> Clip:
    """Frames of a user video with flow at gaps +1/-1, resized to the model resolution.

    The flow is RAFT's when `raft_checkpoint` (raft-things.pth or its .npz) is given, else
    OpenCV DIS.  It is computed at `flow_height` rows (the aspect kept) and the field is then
    resized with its vectors scaled, as the official loader does with RAFT flow (DESIGN.md §1).
    """
    rgb, fps = read_video(path, max_frames)
    height, width = rgb.shape[1:3]
    scale = min(1.0, flow_height / height)
    size = (max(16, int(round(width * scale))), max(16, int(round(height * scale))))
    small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in rgb])
    if raft_checkpoint:
        from oclr_jax.flow.frames import FramesError
        from oclr_jax.flow.video import raft_clip_flows
        from oclr_jax.flow.weights import load_raft_variables

        variables, _ = load_raft_variables(raft_checkpoint)
        if progress is not None:
            progress.reset(total=2 * (len(small) - 1))
            progress.set_description("flow (RAFT)")
        try:
            flow_fwd, flow_bwd = raft_clip_flows(small, variables, iters=raft_iters, progress=progress)
        except FramesError as error:
            raise DemoError(f"{path}: {error} (or raise --flow-height)") from error
    else:
        print("flow: OpenCV DIS, since no --raft-checkpoint was given; RAFT flow (raft-things.pth, "
              "what the paper used) is much cleaner on real footage, see docs/flow.md", file=sys.stderr)
        if progress is not None:
            progress.reset(total=len(small) - 1)
            progress.set_description("flow (DIS)")
        flow_fwd, flow_bwd = estimate_flows(
            small, progress=None if progress is None else lambda: progress.update(1))
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


def predict_clip(model, params, flow: np.ndarray, window: int, size, progress=None,
                 threshold: float = 0.5, upsample: str = "bilinear") -> Prediction:
    """Runs the model on windows of `window` frames (the official cutting rule), as the
    evaluation does: modal masks are composed at the model resolution (threshold, then the
    window's order, eq. 2) and then upsampled to `size` (H, W); amodal probabilities are
    upsampled and thresholded.  Each frame comes from the first window that holds it."""
    @jax.jit
    def apply(p, x):
        out = model.apply({"params": p}, x, train=False)
        modal = hard_modal_masks(out["amodal_logits"], out["order_logits"], threshold)
        return jax.nn.sigmoid(out["amodal_logits"][0]), modal[0], out["order_logits"]

    windows = cut_windows(len(flow), window)
    probs, modals, orders = [], [], []
    for indices in windows:
        prob, modal, order = apply(params, jnp.asarray(flow[indices][None]))
        probs.append(np.asarray(prob))  # (T, h, w, K)
        modals.append(np.asarray(modal))  # (T, h, w, K) bool, at the model resolution
        orders.append(np.repeat(np.asarray(order), len(indices), axis=0))
        if progress is not None:
            progress.update(1)
    probs = stitch(windows, probs, len(flow))
    modal = stitch(windows, modals, len(flow))
    order_logits = stitch(windows, orders, len(flow))
    amodal = upsample_layers(probs, size, upsample)  # as eval resizes amodal probabilities
    modal = upsample_layers(modal.astype(np.float32), size, upsample)
    layers_front_to_back = np.asarray(front_to_back(jnp.asarray(order_logits)))
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


def describe_checkpoint(path: str, params, config) -> str:
    """What the page says about the model: its size and input, and the checkpoint's own
    `about.txt` (how it was trained, its held-out scores) where the folder has one."""
    import jax

    count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params))
    height, width = (int(v) for v in config.data.resolution)
    text = (f"{count / 1e6:.2f}M parameters, input {height}x{width}, "
            f"{int(config.data.num_frames)} frames per window, {int(config.model.num_queries)} "
            "layers")
    about = os.path.join(path, "about.txt") if os.path.isdir(path) else ""
    if about and os.path.isfile(about):
        with open(about) as f:
            text += "; " + " ".join(f.read().split())
    return text


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
    parser.add_argument("--index", type=int, default=DEFAULT_INDEX,
                        help=f"synthetic clip: Syn-Val index (default {DEFAULT_INDEX})")
    parser.add_argument("--frames", type=int, default=None,
                        help="synthetic clip length (default: 3 windows of the model's T)")
    parser.add_argument("--max-frames", type=int, default=150,
                        help="video: use at most this many frames from the start (default 150, "
                             "about 5 s at 30 fps; 0: the whole clip)")
    parser.add_argument("--flow-height", type=int, default=480,
                        help="video: rows at which flow is computed (default 480)")
    parser.add_argument("--raft-checkpoint", help="video: RAFT weights (raft-things.pth or its .npz) "
                        "to compute the flow with RAFT instead of OpenCV DIS")
    parser.add_argument("--raft-iters", type=int, default=20, help="video: RAFT iterations (default 20)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    minimums = (("--frames", args.frames, 2), ("--max-frames", args.max_frames, 0),
                ("--flow-height", args.flow_height, 16), ("--index", args.index, 0),
                ("--raft-iters", args.raft_iters, 1))
    for flag, value, minimum in minimums:
        if value is not None and value < minimum:
            raise DemoError(f"must be at least {minimum}, got {value}", flag)
    if args.max_frames == 1:
        raise DemoError("motion needs at least 2 frames; 0 reads the whole clip", "--max-frames")
    if args.raft_checkpoint and not args.video:
        raise DemoError("--raft-checkpoint is for --video (the synthetic clip has exact flow)")
    # Before any work: never replace a folder the demo did not write (`--out .` included).
    check_output_dir(args.out, "--out", MARKER)
    if not os.path.exists(args.checkpoint):
        raise DemoError(f"{args.checkpoint}: checkpoint not found")
    try:
        model, params, config = load_checkpoint(args.checkpoint)
    except CheckpointError as e:
        raise DemoError(str(e)) from e
    # The evaluation's settings, so the demo shows what eval scores.
    eval_config = config.get("eval", {})
    window = int(eval_config.get("window", config.data.num_frames))
    threshold = float(eval_config.get("threshold", 0.5))
    upsample = str(eval_config.get("upsample", "bilinear"))
    with tqdm(total=1, desc="reading clip", unit="step") as bar:
        if args.video:
            clip = video_clip(args.video, config, args.max_frames, args.flow_height,
                              args.raft_checkpoint, args.raft_iters, progress=bar)
        else:
            clip = synthetic_clip(config, args.seed, args.index, args.frames or 3 * window)
            bar.update(1)
    from oclr_jax.eval.inference import cut_windows

    with tqdm(total=len(cut_windows(len(clip.flow), window)), desc="segmenting",
              unit="window") as bar:
        prediction = predict_clip(model, params, clip.flow, window, clip.rgb.shape[1:3], bar,
                                  threshold=threshold, upsample=upsample)
    scores = score_against_gt(prediction, clip) if clip.gt_modal is not None else None
    print("writing the report", file=sys.stderr)
    summary = write_report(args.out, clip, prediction, scores, checkpoint=args.checkpoint,
                           checkpoint_description=describe_checkpoint(args.checkpoint, params,
                                                                      config))
    print(json.dumps({k: summary[k] for k in ("out", "frames", "scores") if k in summary}))
    print(f"open {os.path.join(os.path.abspath(args.out), 'index.html')}")
    return 0

