"""`adapt_sequence`: RGB test-time adaptation of one sequence's flow masks (paper App. C).

Pipeline (official `dino/eval_adaptation.py`, DESIGN.md §6):
  1. frames -> DINO input size (480 x 832 for DAVIS) -> ViT tokens after the frozen blocks
     (computed once, reused by every later step);
  2. pretrained features -> consistency errors of the flow masks (propagation from frame 0 and
     the 3 previous flow masks) -> mean error (the refinement threshold) and the key frame;
  3. optional per-sequence fine-tuning of the last two blocks on tri-maps of the flow masks;
  4. fine-tuned features -> bi-directional propagation from the key frame (window 7) with dynamic
     refinement -> soft labels on the patch grid -> masks at the flow masks' resolution (the key
     frame keeps its flow mask).

Inputs are one sequence in memory: uint8 RGB frames `(T, H, W, 3)` and the flow model's modal
layer masks `(T, Hm, Wm, K)` (bool; e.g. `compose.hard_modal_masks` upsampled to the annotation
size).  The output has the masks' shape.  All ViT and propagation steps are jitted with shapes
that depend only on the frame size, so sequences of one size share compilations.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from oclr_jax.tta import preprocess
from oclr_jax.tta.finetune import FinetuneSettings, finetune_last_blocks, head_features, l2_normalize
from oclr_jax.tta.keyframe import select_keyframe
from oclr_jax.tta.loss import trimap
from oclr_jax.tta.propagation import consistency_errors, propagate_from_keyframe
from oclr_jax.tta.vit import VisionTransformer, vit_from_config


@dataclasses.dataclass
class TTAResult:
    """What `adapt_sequence_detailed` found for one sequence.

    Attributes:
      masks: refined layer masks `(T, Hm, Wm, K)` bool.
      key_frame: index of the key frame (its flow mask is kept as is).
      consistency_errors: `(T-1,)` errors of frames 1..T-1 with the pretrained features.
      mean_error: their mean, the dynamic-refinement threshold.
      propagation_errors: `(T,)` error of each propagated frame against its flow mask.
      finetune_losses: loss of every fine-tuning iteration (empty without fine-tuning).
    """

    masks: np.ndarray
    key_frame: int
    consistency_errors: np.ndarray
    mean_error: float
    propagation_errors: np.ndarray
    finetune_losses: np.ndarray


@functools.partial(jax.jit, static_argnames=("model", "stop_block"))
def _frozen_tokens(params, images, *, model, stop_block):
    """Embedding and blocks 0 .. stop_block-1: `(B, H, W, 3)` -> `(B, 1 + N, D)`."""
    return model.apply({"params": params}, images,
                       method=lambda module, x: module.run_blocks(module.embed(x), 0, stop_block))


@functools.partial(jax.jit, static_argnames=("model", "start_block"))
def _normalized_features(params, tokens, *, model, start_block):
    """Remaining blocks + norm + l2 normalisation: `(B, 1 + N, D)` -> `(B, N, D)` float32."""
    return l2_normalize(head_features(model, params, tokens, start_block).astype(jnp.float32))


def _batched(fn, inputs: np.ndarray | jax.Array, batch_size: int) -> jax.Array:
    """fn over fixed-size batches of the leading axis (the last batch padded: one compilation)."""
    outputs = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        count = len(batch)
        if count < batch_size:
            batch = jnp.concatenate(
                [jnp.asarray(batch), jnp.zeros((batch_size - count,) + batch.shape[1:],
                                               batch.dtype)])
        outputs.append(fn(jnp.asarray(batch))[:count])
    return jnp.concatenate(outputs)


def frozen_tokens(model: VisionTransformer, params: dict, images: np.ndarray, stop_block: int,
                  batch_size: int) -> jax.Array:
    """Tokens after the first `stop_block` blocks for every frame: `(T, 1 + N, D)`."""
    return _batched(functools.partial(_frozen_tokens, params, model=model, stop_block=stop_block),
                    images, batch_size)


def patch_features(model: VisionTransformer, params: dict, tokens: jax.Array, start_block: int,
                   batch_size: int) -> jax.Array:
    """l2-normalised final patch features `(T, N, D)` from cached tokens."""
    return _batched(functools.partial(_normalized_features, params, model=model,
                                      start_block=start_block), tokens, batch_size)


def _tta_section(config):
    return config.tta if "tta" in config else config


def adapt_sequence_detailed(rgb_frames: np.ndarray, flow_masks: np.ndarray, vit_params: dict,
                            config, *, rng: jax.Array | None = None,
                            progress: bool = False) -> TTAResult:
    """Refines one sequence's flow masks; see the module docstring.

    Args:
      rgb_frames: uint8 RGB `(T, H, W, 3)`.
      flow_masks: modal layer masks `(T, Hm, Wm, K)` (bool or 0/1).
      vit_params: DINO ViT params (`dino_port.load_dino_params`); never modified.
      config: the `config.tta` section (or a whole config that has one).
      rng: key for the order of the fine-tuning pairs (default: `config.tta.seed`).
      progress: show a progress bar over the fine-tuning iterations.
    """
    tta = _tta_section(config)
    preprocess.check_sequence(rgb_frames, flow_masks)
    flow_masks = np.asarray(flow_masks).astype(bool)
    num_frames, mask_hw, num_layers = len(flow_masks), flow_masks.shape[1:3], flow_masks.shape[-1]
    if num_frames == 1:  # nothing to propagate from or to
        return TTAResult(flow_masks.copy(), 0, np.zeros((0,)), 0.0, np.zeros((1,)),
                         np.zeros((0,), np.float32))

    model = vit_from_config(tta)
    settings = FinetuneSettings.from_config(tta)
    vit_params = jax.device_put(vit_params)  # numpy leaves would be re-sent on every call
    size_hw = preprocess.model_input_size(*rgb_frames.shape[1:3], tta.short_side, tta.size_multiple)
    grid_hw = model.grid_shape(size_hw)
    flow_grid = preprocess.grid_one_hot(flow_masks, grid_hw)  # (T, h, w, 1 + K)
    flow_labels = jnp.asarray(flow_grid.reshape(num_frames, -1, num_layers + 1))  # (T, N, 1 + K)

    trainable = settings.trainable_blocks if tta.finetune else 0
    split = model.depth - trainable  # blocks before `split` are frozen: their output is cached
    images = preprocess.normalize_frames(rgb_frames, size_hw, tta.pixel_mean, tta.pixel_std)
    tokens = frozen_tokens(model, vit_params, images, split, tta.feature_batch_size)
    features = patch_features(model, vit_params, tokens, split, tta.feature_batch_size)

    propagation = dict(topk=tta.topk, temperature=tta.propagation_temperature,
                       radius=tta.neighborhood)
    errors = consistency_errors(features, flow_labels, grid_hw, window=tta.consistency_window,
                                **propagation)
    mean_error = float(errors.mean())
    key_frame = select_keyframe(errors, tta.keyframe_rule)

    losses = np.zeros((0,), np.float32)
    if trainable > 0:
        objects = np.moveaxis(flow_grid[..., 1:], -1, 1)  # (T, K, h, w)
        positive, negative = trimap(jnp.asarray(objects), settings.trimap_inner,
                                    settings.trimap_outer)
        rng = jax.random.key(tta.seed) if rng is None else rng
        tuned, losses = finetune_last_blocks(
            model, vit_params, tokens, positive.reshape(num_frames, num_layers, -1),
            negative.reshape(num_frames, num_layers, -1), settings, rng, progress)
        features = patch_features(model, tuned, tokens, split, tta.feature_batch_size)

    soft, propagation_errors = propagate_from_keyframe(
        features, flow_labels, key_frame, mean_error, grid_hw, window=tta.window, **propagation)
    masks = preprocess.soft_labels_to_masks(soft.reshape(num_frames, *grid_hw, -1),
                                            model.patch_size, mask_hw, tta.min_channel_peak)
    masks[key_frame] = flow_masks[key_frame]  # official: the key frame's flow mask, unresampled
    return TTAResult(masks, key_frame, errors, mean_error, propagation_errors, losses)


def adapt_sequence(rgb_frames: np.ndarray, flow_masks: np.ndarray, vit_params: dict, config,
                   *, rng: jax.Array | None = None, progress: bool = False) -> np.ndarray:
    """Refined layer masks `(T, Hm, Wm, K)` bool; see `adapt_sequence_detailed`."""
    return adapt_sequence_detailed(rgb_frames, flow_masks, vit_params, config, rng=rng,
                                   progress=progress).masks
