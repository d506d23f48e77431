"""Forward and backward RAFT flow of a whole clip in memory (the demo's video path).

Same contract as the DIS fallback `oclr_jax.data.synth.backgrounds.estimate_flows`: for frames
(T, H, W, 3) it returns forward flows t -> t+1 and backward flows t -> t-1, each (T, H, W, 2),
the ends (no next / no previous frame) filled with the negated opposite flow as the official
loader does for missing files.  Frames are padded as RAFT's InputPadder pads them and the flow
is cropped back to H x W (the demo resizes it to the model resolution next).
"""

from __future__ import annotations

import numpy as np

from oclr_jax.flow import padding
from oclr_jax.flow.frames import FramesError


def raft_clip_flows(frames: np.ndarray, variables, iters: int = 20, pairs_per_device: int = 4,
                    progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 RGB -> (forward, backward) flows (T, H, W, 2) float32, by RAFT."""
    from oclr_jax.flow.run import RaftEstimator

    num_frames, height, width = frames.shape[:3]
    problem = padding.check_size(height, width)
    if problem:
        raise FramesError(problem)
    top, bottom, left, right = padding.sintel_padding(height, width)
    padded = padding.pad_images(frames, top, bottom, left, right)
    estimator = RaftEstimator(variables, iters=iters, pairs_per_device=pairs_per_device)
    # Pairs (t, t+1) then (t+1, t), in batches.
    firsts = [t for t in range(num_frames - 1)] + [t + 1 for t in range(num_frames - 1)]
    seconds = [t + 1 for t in range(num_frames - 1)] + [t for t in range(num_frames - 1)]
    flows = []
    for start in range(0, len(firsts), estimator.batch_size):
        stop = start + estimator.batch_size
        flows.append(estimator(padded[firsts[start:stop]], padded[seconds[start:stop]]))
        if progress is not None:
            progress.update(len(firsts[start:stop]))
    flows = np.concatenate(flows)[:, top:top + height, left:left + width]
    if not np.isfinite(flows).all():
        raise FramesError("RAFT returned non-finite flow for this clip")
    forward = np.zeros((num_frames, height, width, 2), np.float32)
    backward = np.zeros_like(forward)
    forward[:-1], backward[1:] = flows[:num_frames - 1], flows[num_frames - 1:]
    forward[-1], backward[0] = -backward[-1], -forward[0]
    return forward, backward
