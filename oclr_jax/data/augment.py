"""TensorFlow ops on one sequence example: temporal window, resize and the augmentations.

An example is a dict with time first: `flow (T, H, W, 2G)` float32 whose channel pairs follow a
tuple of gaps (`[u, v]` per gap), masks `amodal`/`modal (T, H, W, K)` or packed
`amodal_bits (T, H, W)` uint8 (bit k = channel k), optionally `rgb (T, H, W, 3)`; other keys
pass through.  Every op keeps flow, masks and frames consistent:

* horizontal flip: every spatial array is mirrored along W and `u` is negated.
* temporal reversal: frames are reversed and each gap g takes the flow of gap -g (the backward
  flow of old frame i, pointing to old frame i-1, is exactly the forward flow of that frame in
  the reversed sequence: no negation).  A gap whose opposite is not loaded takes its own
  negated flow instead, the official loader's missing-gap approximation.
* temporal crop: a window of `num_frames` consecutive frames at a random start.

Randomness is stateless (`tf.random.stateless_*` with a per-example seed), so an example's
augmentation depends only on the seed and its position in the stream.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

SPATIAL_KEYS = ("flow", "amodal_bits", "amodal", "modal", "rgb")
MASK_KEYS = ("amodal", "modal")


def _spatial(example: dict) -> list[str]:
    return [key for key in SPATIAL_KEYS if key in example]


def temporal_window(example: dict, num_frames: int, start) -> dict:
    """Frames `start .. start+num_frames-1`; past the end the last frame repeats (official)."""
    length = tf.shape(example["flow"], out_type=tf.int64)[0]
    start = tf.cast(start, tf.int64)
    frames = tf.minimum(start + tf.range(num_frames, dtype=tf.int64), length - 1)
    whole = tf.logical_and(tf.equal(start, 0), tf.equal(length, num_frames))
    out = dict(example)
    for key in _spatial(example):
        value = example[key]
        # Skips the copy in the common case (the window is the whole sequence).
        window = tf.cond(whole, lambda v=value: v, lambda v=value: tf.gather(v, frames, axis=0))
        out[key] = tf.ensure_shape(window, [num_frames] + value.shape[1:].as_list())
    return out


def resize_example(example: dict, resolution: Sequence[int]) -> dict:
    """Resizes to `(H, W)`: flow bilinear with u, v scaled to the new grid; masks bilinear then
    > 0.5 (as the official loader); rgb bilinear."""
    height, width = int(resolution[0]), int(resolution[1])
    flow = example["flow"]
    old_h = tf.cast(tf.shape(flow)[1], tf.float32)
    old_w = tf.cast(tf.shape(flow)[2], tf.float32)
    num_gaps = flow.shape[-1] // 2
    scale = tf.tile(tf.stack([width / old_w, height / old_h]), [num_gaps])
    out = dict(example)
    out["flow"] = tf.image.resize(flow, (height, width), method="bilinear") * scale
    for key in MASK_KEYS:
        if key in example:
            resized = tf.image.resize(tf.cast(example[key], tf.float32), (height, width))
            out[key] = tf.cast(resized > 0.5, example[key].dtype)
    if "amodal_bits" in example:
        bits = example["amodal_bits"]
        bit = tf.range(8, dtype=tf.int32)
        shifted = tf.bitwise.right_shift(tf.cast(bits, tf.int32)[..., None], bit)
        planes = tf.bitwise.bitwise_and(shifted, 1)
        resized = tf.image.resize(tf.cast(planes, tf.float32), (height, width)) > 0.5
        packed = tf.reduce_sum(tf.cast(resized, tf.int32) * tf.bitwise.left_shift(1, bit), axis=-1)
        out["amodal_bits"] = tf.cast(packed, bits.dtype)
    if "rgb" in example:
        resized = tf.image.resize(tf.cast(example["rgb"], tf.float32), (height, width))
        out["rgb"] = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return out


def flip_horizontal(example: dict) -> dict:
    """Mirrors along W and negates every `u` channel."""
    out = dict(example)
    for key in _spatial(example):
        out[key] = tf.reverse(example[key], axis=[2])
    num_gaps = example["flow"].shape[-1] // 2
    out["flow"] = out["flow"] * tf.constant([-1.0, 1.0] * num_gaps, tf.float32)
    return out


def reversal_channels(gaps: Sequence[int]) -> tuple[list[int], list[float]]:
    """Source channel and sign of each flow channel after temporal reversal."""
    gaps = [int(g) for g in gaps]
    channels, signs = [], []
    for slot, gap in enumerate(gaps):
        source, sign = (gaps.index(-gap), 1.0) if -gap in gaps else (slot, -1.0)
        channels += [2 * source, 2 * source + 1]
        signs += [sign, sign]
    return channels, signs


def reverse_time(example: dict, gaps: Sequence[int]) -> dict:
    """Plays the sequence backwards; gap g takes gap -g's flow (see the module docstring)."""
    out = dict(example)
    for key in _spatial(example):
        out[key] = tf.reverse(example[key], axis=[0])
    channels, signs = reversal_channels(gaps)
    out["flow"] = tf.gather(out["flow"], channels, axis=-1) * tf.constant(signs, tf.float32)
    return out


def select_gaps(flow, loaded_gaps: Sequence[int], gaps: Sequence[int]):
    """The channels of `gaps` (in that order) from a flow whose channels follow `loaded_gaps`."""
    loaded_gaps = [int(g) for g in loaded_gaps]
    missing = [g for g in gaps if int(g) not in loaded_gaps]
    if missing:
        raise ValueError(f"gaps {missing} are not among the loaded gaps {loaded_gaps}")
    if list(gaps) == loaded_gaps:
        return flow
    slots = [loaded_gaps.index(int(g)) for g in gaps]
    return tf.gather(flow, [c for slot in slots for c in (2 * slot, 2 * slot + 1)], axis=-1)


def augment_example(example: dict, seed, *, gaps: Sequence[int], num_frames: int,
                    temporal_crop: bool = False, flip: bool = False,
                    reverse: bool = False) -> dict:
    """Window (random start if `temporal_crop`, else frame 0), then random flip / reversal.

    Args:
      example: one sequence; `flow` channels follow `gaps`.
      seed: `(2,)` int64 stateless seed of this example.
      num_frames: frames of the returned window.
      temporal_crop, flip, reverse: enable each augmentation; flip and reversal happen with
        probability 1/2 each.
    """
    seed = tf.cast(seed, tf.int64)
    crop_seed, flip_seed, reverse_seed = (
        tf.random.experimental.stateless_fold_in(seed, i) for i in range(3))
    start = tf.constant(0, tf.int64)
    if temporal_crop:
        length = tf.shape(example["flow"], out_type=tf.int64)[0]
        room = tf.maximum(length - num_frames, 0) + 1
        start = tf.random.stateless_uniform([], crop_seed, minval=0, maxval=room, dtype=tf.int64)
    example = temporal_window(example, num_frames, start)
    if flip:
        do_flip = tf.random.stateless_uniform([], flip_seed) < 0.5
        example = tf.cond(do_flip, lambda: flip_horizontal(example), lambda: dict(example))
    if reverse:
        do_reverse = tf.random.stateless_uniform([], reverse_seed) < 0.5
        example = tf.cond(do_reverse, lambda: reverse_time(example, gaps), lambda: dict(example))
    return example
