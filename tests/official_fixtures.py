"""Tiny official-layout synthetic folders written by the tests (moving squares, exact flow).

Each object is a square of constant velocity; the background is still.  The flow of a pixel is
the velocity of the front-most object covering it (the higher channel is in front), 0 elsewhere,
so forward/backward flows, amodal and modal masks are all known exactly.  As in the official
data, the last frame has no `Flows_gap1` file and the first frame no `Flows_gap-1` file.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from oclr_jax.compose import ground_truth_modal
from oclr_jax.data import flow_io


def moving_squares(num_frames: int, height: int, width: int, num_objects: int, seed: int):
    """Ground truth of one sequence.  Returns dict of numpy arrays (time first)."""
    rng = np.random.default_rng(seed)
    side = max(4, min(height, width) // 3)
    starts = rng.integers(0, [height - side, width - side], size=(num_objects, 2))
    velocity = rng.integers(-2, 3, size=(num_objects, 2))  # (dy, dx) px per frame.
    amodal = np.zeros((num_frames, height, width, num_objects), bool)
    for t in range(num_frames):
        for k in range(num_objects):
            y, x = starts[k] + velocity[k] * t
            amodal[t, max(y, 0):max(y + side, 0), max(x, 0):max(x + side, 0), k] = True
    modal = ground_truth_modal(amodal)  # the higher channel in front
    forward = np.zeros((num_frames, height, width, 2), np.float32)
    for k in range(num_objects):
        forward[modal[..., k]] = (velocity[k, 1], velocity[k, 0])  # (u, v) = (dx, dy).
    backward = -forward
    rgb = rng.integers(0, 255, size=(num_frames, height, width, 3), dtype=np.uint8)
    return dict(flow_fwd=forward, flow_bwd=backward, amodal=amodal, modal=modal, rgb=rgb,
                velocity=velocity)


def write_sequence(root: str, name: str, truth: dict, drop_edge_gaps: bool = True) -> None:
    """Writes one sequence in the official layout (flows, masks 0/255, JPEG frames)."""
    num_frames = truth["amodal"].shape[0]
    for t in range(num_frames):
        frame = f"{t:05d}"
        image_dir = os.path.join(root, "JPEGImages", name)
        os.makedirs(image_dir, exist_ok=True)
        cv2.imwrite(os.path.join(image_dir, frame + ".jpg"), truth["rgb"][t][..., ::-1])
        if not (drop_edge_gaps and t == num_frames - 1):
            flow_io.write_flo(os.path.join(root, "Flows_gap1", name, frame + ".flo"),
                              truth["flow_fwd"][t])
        if not (drop_edge_gaps and t == 0):
            flow_io.write_flo(os.path.join(root, "Flows_gap-1", name, frame + ".flo"),
                              truth["flow_bwd"][t])
        mask_dir = os.path.join(root, "AmodalAnnotations", name)
        os.makedirs(mask_dir, exist_ok=True)
        for k in range(truth["amodal"].shape[-1]):
            mask = truth["amodal"][t, ..., k].astype(np.uint8) * 255
            cv2.imwrite(os.path.join(mask_dir, f"{k + 1}_{frame}.png"), mask)


def expected_flows(truth: dict, drop_edge_gaps: bool = True) -> dict[int, np.ndarray]:
    """What a reader with the official missing-gap fallback must return for gaps +1 and -1."""
    forward, backward = truth["flow_fwd"].copy(), truth["flow_bwd"].copy()
    if drop_edge_gaps:
        forward[-1] = -truth["flow_bwd"][-1]
        backward[0] = -truth["flow_fwd"][0]
    return {1: forward, -1: backward}


def write_split(root: str, num_sequences: int, num_frames: int = 4, height: int = 32,
                width: int = 48, seed: int = 0) -> dict[str, dict]:
    """Writes `num_sequences` sequences with 1..3 objects; returns name -> ground truth."""
    truths = {}
    for i in range(num_sequences):
        num_objects = 1 + i % 3
        name = f"{num_objects}_{i:06d}"
        truth = moving_squares(num_frames, height, width, num_objects, seed * 1000 + i)
        write_sequence(root, name, truth)
        truths[name] = truth
    return truths
