"""Per-sequence fine-tuning of the last ViT blocks with the InfoNCE loss of eqs. 7-9.

Facts (paper App. C, official `dino/dino_funetuning.py`):
  * only the last two blocks (DINO `blocks.10`, `blocks.11`) are trained; the patch embedding,
    the positional embedding, blocks 0-9 and the final `norm` stay frozen.  The frozen blocks'
    output is computed once per sequence and cached, so each iteration runs two blocks only
    (exact: the model has no dropout or drop-path at test time);
  * one frame pair (t, t + n), n in [1, max_pair_gap], per iteration, pairs visited in a fresh
    random order each epoch (the official loader shuffles); tri-maps from the flow masks;
  * Adam (torch defaults: b1 0.9, b2 0.999, eps 1e-8), learning rate 1e-5 decayed linearly to 0
    over 1000 iterations (paper).  `lr_schedule="warmup_constant"` is the official code's
    schedule instead, as it runs: the optimizer is built with 1e-5 and the warm-up rate is set
    AFTER each step, so the steps use 1e-5, 0, 1e-7, ..., 0.99e-5 (step 100) and 0.99e-5 from
    then on (`official_warmup_schedule`);
  * frozen parameters are masked with `optax.multi_transform(..., set_to_zero())`: no Adam
    state is kept for them and they never move.

Fine-tuning starts from the pretrained weights for every sequence (the paper's per-sequence
adaptation).  The official script re-assigns its model to the fine-tuned copy, so its later
sequences start from the previous sequence's weights; we do not reproduce that.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from oclr_jax.tta.loss import frame_pairs, pair_infonce_loss
from oclr_jax.tta.vit import VisionTransformer

SCHEDULES = ("linear_decay", "warmup_constant")


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """The fields of `config.tta` that fix the fine-tuning (hashable: a static jit argument)."""

    trainable_blocks: int = 2
    learning_rate: float = 1e-5
    num_iterations: int = 1000
    lr_schedule: str = "linear_decay"
    warmup_iterations: int = 100
    max_pair_gap: int = 4
    loss_temperature: float = 0.07
    loss_clip: float = 0.65
    trimap_inner: int = 1
    trimap_outer: int = 5

    @classmethod
    def from_config(cls, tta_config) -> "FinetuneSettings":
        return cls(**{field.name: type(field.default)(tta_config[field.name])
                      for field in dataclasses.fields(cls)})


def official_warmup_schedule(learning_rate: float, warmup_iterations: int) -> optax.Schedule:
    """The official fine-tuning's rates, step by step (`dino_funetuning.py`).

    Adam starts with `lr = learning_rate`; after step `it < warmup` the loop sets
    `lr = learning_rate * it / warmup` for the NEXT step.  So step 0 uses `learning_rate`, step
    n in [1, warmup] uses `learning_rate * (n - 1) / warmup`, and every later step keeps the last
    value set, `learning_rate * (warmup - 1) / warmup`.
    """
    def schedule(count):
        ramp = learning_rate * jnp.minimum(count - 1, warmup_iterations - 1) / warmup_iterations
        return jnp.where(count == 0, learning_rate, ramp)

    return schedule


def learning_rate_schedule(settings: FinetuneSettings) -> optax.Schedule:
    """Learning rate as a function of the iteration (see module docstring)."""
    if settings.lr_schedule == "linear_decay":
        return optax.linear_schedule(settings.learning_rate, 0.0, settings.num_iterations)
    if settings.lr_schedule == "warmup_constant":
        if settings.warmup_iterations < 2:
            raise ValueError(f"tta.warmup_iterations={settings.warmup_iterations}: the official "
                             "warm-up then sets the rate to 0 after the first step for good; use "
                             "at least 2")
        return official_warmup_schedule(settings.learning_rate, settings.warmup_iterations)
    raise ValueError(f"unknown lr_schedule {settings.lr_schedule!r}; expected one of {SCHEDULES}")


def trainable_labels(params: dict, depth: int, trainable_blocks: int) -> dict:
    """Tree of 'trainable' / 'frozen' labels: the last `trainable_blocks` blocks are trainable."""
    if not 0 <= trainable_blocks <= depth:
        raise ValueError(f"trainable_blocks={trainable_blocks} must lie in [0, depth={depth}]")
    trainable = {f"blocks_{index}" for index in range(depth - trainable_blocks, depth)}
    return {name: jax.tree.map(lambda _, n=name: "trainable" if n in trainable else "frozen",
                               subtree)
            for name, subtree in params.items()}


def make_optimizer(params: dict, depth: int,
                   settings: FinetuneSettings) -> optax.GradientTransformation:
    """Adam on the trainable blocks, `set_to_zero` on everything else."""
    return optax.multi_transform(
        {"trainable": optax.adam(learning_rate_schedule(settings)), "frozen": optax.set_to_zero()},
        trainable_labels(params, depth, settings.trainable_blocks))


def l2_normalize(features: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch `F.normalize(x, p=2, dim=-1)`: x / max(||x||, eps)."""
    norm = jnp.linalg.norm(features, axis=-1, keepdims=True)
    return features / jnp.maximum(norm, eps)


def head_features(model: VisionTransformer, params: dict, tokens: jax.Array,
                  start_block: int) -> jax.Array:
    """Blocks `start_block..` + final norm on cached tokens `(B, L, D)` -> `(B, L-1, D)`."""
    return model.apply({"params": params}, tokens,
                       method=lambda module, x: module.patch_features(
                           module.run_blocks(x, start_block)))


@functools.partial(jax.jit, donate_argnums=(0, 1), static_argnames=("model", "settings"))
def train_step(params, opt_state, pair_tokens, positive, negative, *, model, settings):
    """One Adam step on one frame pair.

    Args:
      params: full ViT params (donated).
      opt_state: state of `make_optimizer` (donated).
      pair_tokens: `(2, 1 + N, D)` output of the frozen blocks for the two frames.
      positive, negative: `(2, K, N)` tri-map regions of the two frames.

    Returns:
      (params, opt_state, loss).
    """
    start_block = model.depth - settings.trainable_blocks

    def loss_fn(p):
        features = l2_normalize(head_features(model, p, pair_tokens, start_block)
                                .astype(jnp.float32))  # (2, N, D)
        return pair_infonce_loss(features[0], features[1], positive[0], negative[0],
                                 positive[1], negative[1], settings.loss_temperature,
                                 settings.loss_clip)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    optimizer = make_optimizer(params, model.depth, settings)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def pair_schedule(rng: jax.Array, num_pairs: int, num_iterations: int) -> np.ndarray:
    """Pair index of every iteration: consecutive epochs of random permutations."""
    epochs = -(-num_iterations // num_pairs)
    order = [np.asarray(jax.random.permutation(jax.random.fold_in(rng, epoch), num_pairs))
             for epoch in range(epochs)]
    return np.concatenate(order)[:num_iterations]


def finetune_last_blocks(model: VisionTransformer, params: dict, frozen_tokens: jax.Array,
                         positive: jax.Array, negative: jax.Array, settings: FinetuneSettings,
                         rng: jax.Array, progress: bool = False) -> tuple[dict, np.ndarray]:
    """Fine-tunes a copy of `params` on one sequence.

    Args:
      frozen_tokens: `(T, 1 + N, D)` tokens after the frozen blocks.
      positive, negative: `(T, K, N)` tri-map regions of every frame.

    Returns:
      (fine-tuned params, loss of every iteration).  The caller's `params` stay valid.
    """
    pairs = frame_pairs(len(frozen_tokens), settings.max_pair_gap)
    if len(pairs) == 0 or settings.num_iterations <= 0:
        return params, np.zeros((0,), np.float32)
    params = jax.tree.map(jnp.copy, params)  # train_step donates its input
    opt_state = make_optimizer(params, model.depth, settings).init(params)
    losses = []
    schedule = pair_schedule(rng, len(pairs), settings.num_iterations)
    for pair_index in tqdm(schedule, desc="fine-tune DINO", leave=False, disable=not progress):
        frames = jnp.asarray(pairs[pair_index])
        params, opt_state, loss = train_step(params, opt_state, frozen_tokens[frames],
                                             positive[frames], negative[frames], model=model,
                                             settings=settings)
        losses.append(loss)
    return params, np.asarray(jnp.stack(losses))
