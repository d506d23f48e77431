"""The train state and the jitted train / eval steps over a data-parallel mesh.

`make_train_step` returns one `jax.jit` function over the mesh of `sharding.py`: state
replicated and donated, batch sharded on its leading axis.  Per step it runs the model with
dropout, neutralises non-finite outputs, matches predicted layers to the ground truth, computes
the four official losses, and applies clip-by-value + Adam (`optim.py`).  The batch of one step
may be split into `train.grad_accum_steps` sequential microbatches (same optimizer step, less
activation memory).

Randomness: the dropout key of step s is `fold_in(state.rng, s)` (and of microbatch i
`fold_in(that, i)`).  JAX's partitionable threefry generates each device's share of a dropout
mask on that device from its global position, so devices draw different bits and the masks do
not depend on how many devices share the batch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from oclr_jax import compose, losses, matching, sharding
from oclr_jax.model import init_key, new_params
from oclr_jax.train import optim

TRAIN_KEYS = ("flow", "amodal")  # what the train step reads from a batch.
EVAL_KEYS = ("flow", "amodal", "weight")


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (checkpointed whole).

    Attributes:
      step: int32 scalar, optimizer updates applied so far (also the data position).
      params: model parameters (float32).
      opt_state: optax state.
      rng: base PRNG key (uint32 key data) of dropout; per-step keys are folded from it.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def compiler_options_for(config, extra: Optional[Mapping] = None) -> Optional[dict]:
    """XLA options for the jitted steps: the config's CPU choice plus `extra`.

    On CPU, `train.cpu_ynn_fusion=False` (the default) turns off XLA's YNNPACK fusions: with
    them the gradients of the 3x3 convolutions took ~4x longer (0.65 s vs 0.14 s for one
    full-resolution 32->32 convolution at 16x64x112, jax 0.10.2, 2 cores), and the whole
    paper-model step at (2, 8, 64, 112) took 6.0 s instead of 2.5 s.
    """
    options = {}
    if jax.default_backend() == "cpu" and not config.train.get("cpu_ynn_fusion", False):
        options["xla_cpu_experimental_ynn_fusion_type"] = ""
    options.update(extra or {})
    return options or None


def _init_state(model, tx, key: jax.Array, in_channels: int) -> TrainState:
    params_key, dropout_key = jax.random.split(key)
    params = new_params(model.clone(in_channels=in_channels), params_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=dropout_key)


def init_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                     in_channels: int, mesh: Mesh,
                     compiler_options: Optional[dict] = None) -> TrainState:
    """Fresh state, computed by a jitted init that writes it replicated over the mesh.

    Every process runs the same computation from the same key, so multi-host runs need no
    host-to-device copy of parameters.
    """
    init = lambda key: _init_state(model, tx, key, in_channels)
    return jax.jit(init, out_shardings=sharding.replicated(mesh),
                   compiler_options=compiler_options)(rng)


def abstract_train_state(model, tx: optax.GradientTransformation, in_channels: int,
                         mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the state, computing nothing: the
    target a checkpoint is restored into."""
    shapes = jax.eval_shape(lambda key: _init_state(model, tx, key, in_channels),
                            jax.random.PRNGKey(0))
    rep = sharding.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)


def _loss_fn(model, loss_config: Mapping, assigner: Callable, dropout_rng: str = "threefry"):
    """(params, batch, dropout_key) -> (total, terms), for one (micro)batch."""
    if dropout_rng not in ("threefry", "rbg"):
        raise ValueError(f"train.dropout_rng must be 'threefry' or 'rbg'; got {dropout_rng!r}")

    def loss_fn(params, batch, key):
        if dropout_rng == "rbg":
            key = init_key(key)  # same bits source as the initialisers: XLA's RngBitGenerator
        outputs = model.apply({"params": params}, batch["flow"], train=True,
                              rngs={"dropout": key})
        amodal_logits = losses.neutralize_nonfinite(outputs["amodal_logits"])  # (B, T, H, W, K)
        order_logits = losses.neutralize_nonfinite(outputs["order_logits"])  # (B, K)
        amodal_logits, order_logits, _ = matching.match_predictions(
            amodal_logits, order_logits, batch["amodal"], assigner)
        return losses.oclr_losses(amodal_logits, order_logits, batch["amodal"], loss_config)
    return loss_fn


def _split_microbatches(batch: Mapping[str, jax.Array], count: int, mesh: Mesh) -> dict:
    """(B, ...) -> (count, B / count, ...) taking rows i, i + count, ... into microbatch i, so
    every device keeps its own rows (no resharding)."""
    def split(x):
        x = x.reshape((x.shape[0] // count, count) + x.shape[1:]).swapaxes(0, 1)
        spec = PartitionSpec(None, sharding.DATA_AXIS)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return {name: split(value) for name, value in batch.items()}


def make_train_step(model, tx: optax.GradientTransformation, config, mesh: Mesh,
                    compiler_options: Optional[dict] = None) -> Callable:
    """`step(state, batch) -> (state, metrics)`, jitted over `mesh` with the state donated.

    batch: {'flow': (B, T, H, W, C), 'amodal': (B, T, H, W, K)} global arrays sharded on B.
    metrics: replicated scalars: total loss, the four unweighted terms, grad/param norms, lr,
    and `nonfinite` (1 when the update was skipped because loss or gradients were not finite).
    compiler_options: XLA options for this jit (e.g. {'xla_backend_optimization_level': 0}
    compiles several times faster on CPU; the tests use it).
    """
    assigner = matching.make_assigner(config.loss.matcher, mesh)
    loss_fn = _loss_fn(model, dict(config.loss), assigner,
                       config.train.get("dropout_rng", "threefry"))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    accum = int(config.train.grad_accum_steps)
    skip_nonfinite = bool(config.train.get("skip_nonfinite_updates", True))
    schedule = optim.schedule_from_config(config.train)

    def train_step(state: TrainState, batch):
        step_key = jax.random.fold_in(state.rng, state.step)
        if accum == 1:
            (loss, terms), grads = grad_fn(state.params, batch, step_key)
        else:
            micro = _split_microbatches(batch, accum, mesh)

            def body(carry, inputs):
                index, microbatch = inputs
                out, grads = grad_fn(state.params, microbatch, jax.random.fold_in(step_key, index))
                return jax.tree.map(jnp.add, carry, (out, grads)), None

            zeros = ((jnp.zeros(()), {k: jnp.zeros(()) for k in losses.TERM_NAMES}),
                     jax.tree.map(jnp.zeros_like, state.params))
            (loss, terms), grads = jax.tree.map(
                lambda x: x / accum,
                jax.lax.scan(body, zeros, (jnp.arange(accum), micro))[0])
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(params, opt_state):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        if skip_nonfinite:  # keep the old params and moments rather than poison them
            # A cond rather than `where(finite, new, old)`: the select kept the old state alive
            # next to the donated buffers, so XLA copied all params and moments every step.
            params, opt_state = jax.lax.cond(finite, apply, lambda *old: old, state.params,
                                             state.opt_state)
        else:
            params, opt_state = apply(state.params, state.opt_state)
        metrics = dict(loss=loss, **terms, grad_norm=grad_norm,
                       param_norm=optax.global_norm(params),
                       nonfinite=1.0 - finite.astype(jnp.float32))
        metrics["learning_rate"] = schedule(state.step)  # the rate this update used
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    rep, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(train_step, in_shardings=(rep, batched), out_shardings=(rep, rep),
                   donate_argnums=(0,), compiler_options=compiler_options)


def make_eval_step(model, config, mesh: Mesh,
                   compiler_options: Optional[dict] = None) -> Callable:
    """`step(params, batch) -> sums` over a batch with per-sample `weight` (0 = padding).

    Returns replicated sums: 'loss' (per-sample total loss, each sample as its own batch),
    'amodal_j' and 'modal_j' (official Syn-Val J: frame-averaged Hungarian IoU of the
    unmatched sigmoid masks / of the hard modal composition), and 'count'.
    """
    assigner = matching.make_assigner(config.loss.matcher, mesh)
    loss_config = dict(config.loss)

    def sample_loss(logits, order, gt):
        matched_logits, matched_order, _ = matching.match_predictions(
            logits[None], order[None], gt[None], assigner)
        return losses.oclr_losses(matched_logits, matched_order, gt[None], loss_config)[0]

    def eval_step(params, batch):
        outputs = model.apply({"params": params}, batch["flow"], train=False)
        amodal_logits = losses.neutralize_nonfinite(outputs["amodal_logits"])
        order_logits = losses.neutralize_nonfinite(outputs["order_logits"])
        gt_amodal = losses.resize_masks_nearest(batch["amodal"], amodal_logits.shape[2:4])
        weight = batch["weight"]  # (B,)
        per_sample_loss = jax.vmap(sample_loss)(amodal_logits, order_logits, batch["amodal"])
        amodal_j, _ = matching.hungarian_iou(jax.nn.sigmoid(amodal_logits), gt_amodal)
        modal_pred = compose.hard_modal_masks(amodal_logits, order_logits).astype(jnp.float32)
        modal_j, _ = matching.hungarian_iou(modal_pred, compose.ground_truth_modal(gt_amodal))
        return {
            "loss": jnp.sum(weight * per_sample_loss),
            "amodal_j": jnp.sum(weight * jnp.mean(amodal_j, axis=1)),
            "modal_j": jnp.sum(weight * jnp.mean(modal_j, axis=1)),
            "count": jnp.sum(weight),
        }

    rep, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(eval_step, in_shardings=(rep, batched), out_shardings=rep,
                   compiler_options=compiler_options)


def select_keys(batch: Mapping[str, Any], keys: Sequence[str]) -> dict:
    """The arrays a step reads, with a clear error for a batch missing one."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; it has {sorted(batch)} (see the input-pipeline "
                       f"contract: flow, amodal, modal, num_objects)")
    return {k: batch[k] for k in keys}
