"""Key-frame selection from the consistency errors of the flow masks (paper App. C).

`errors[i]` is the normalised L1 disagreement between the flow-predicted masks of frame i + 1
and the masks propagated to it from frame 0 and the flow masks of the frames just before it
(`propagation.consistency_errors`).  Frames whose error is below the mean are "consistent"; the
mean itself is the threshold of the dynamic refinement.  Two rules pick the key frame:

  lowest       (paper, DESIGN.md §6): the consistent frame with the lowest error.
  longest_run  (official `eval_adaptation.py`): the middle of the longest run of consecutive
               consistent frames, frame 1 + floor((start + end) / 2), the first run on ties.

Frame 0 is never the key frame (it has no error).  When no frame is strictly below the mean
(all errors equal) every frame counts as consistent; the official code stops with an error there.
"""

from __future__ import annotations

import numpy as np

RULES = ("lowest", "longest_run")


def consistent_frames(errors: np.ndarray) -> np.ndarray:
    """Boolean `(T-1,)`: error strictly below the mean (all True when none is)."""
    errors = np.asarray(errors, np.float64)
    below = errors < errors.mean()
    return below if below.any() else np.ones_like(below)


def longest_run(flags: np.ndarray) -> tuple[int, int]:
    """(start, end) inclusive of the first longest run of True values; flags must have one."""
    best, best_start, start = 0, -1, None
    for index, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            if index - start > best:
                best, best_start = index - start, start
            start = None
    if best_start < 0:
        raise ValueError("no True value in flags")
    return best_start, best_start + best - 1


def select_keyframe(errors: np.ndarray, rule: str = "lowest") -> int:
    """Index (in 1 .. T-1) of the key frame from the consistency errors `(T-1,)`."""
    errors = np.asarray(errors, np.float64)
    if errors.ndim != 1 or errors.size == 0:
        raise ValueError(f"errors must be a non-empty 1-D array, got shape {errors.shape}")
    if not np.isfinite(errors).all():
        raise ValueError(f"consistency errors must be finite, got {errors}")
    candidates = consistent_frames(errors)
    if rule == "lowest":
        masked = np.where(candidates, errors, np.inf)
        return 1 + int(np.argmin(masked))
    if rule == "longest_run":
        start, end = longest_run(candidates)
        return 1 + (start + end) // 2
    raise ValueError(f"unknown key-frame rule {rule!r}; expected one of {RULES}")
