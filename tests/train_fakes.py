"""Small in-memory data and configs for the trainer's tests (no files, no TensorFlow)."""

import numpy as np

from oclr_jax.config import loading as config_lib

# LLVM -O1: the test programs compile ~2x faster and run fast enough.  (-O0 compiles faster
# still, but there the gradient of jnp.max in the ordering head came out NaN: XLA recomputed
# the max's operand with different rounding, so no element equalled the max.)
FAST_COMPILE = {"xla_backend_optimization_level": 1}

SMALL_OVERRIDES = [
    "data.num_frames=2", "data.resolution=(32, 32)", "model.num_layers=1",
    # A tiny constant rate: Adam's first updates are ~lr * sign(grad), and a gradient that is
    # zero up to rounding may change sign with the summation order (8 devices vs 1).
    "train.learning_rate=2e-6", "train.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
    "train.checkpoint_every=100", "train.batch_size=8",
]


def small_config(*overrides):
    """The tiny config shrunk further (T=2, 32x32, one transformer layer, batch 8).

    Tests share these settings so that their programs hit one compilation cache.
    """
    return config_lib.load_config("configs/tiny.py", SMALL_OVERRIDES + list(overrides))


def moving_squares_example(rng, num_frames, height, width, num_layers, num_objects=None):
    """One sequence: squares translating over a translating background.

    Flow channels are [u(+1), v(+1), u(-1), v(-1)] with the backward flow the negated forward
    flow; the flow of a pixel is that of the front-most object covering it (higher channel in
    front), the background's elsewhere.
    """
    num_objects = num_objects or int(rng.integers(1, num_layers + 1))
    amodal = np.zeros((num_frames, height, width, num_layers), np.float32)
    forward = np.zeros((num_frames, height, width, 2), np.float32)
    forward[...] = rng.uniform(-1, 1, 2)  # camera motion
    for k in range(num_objects):
        size = int(rng.integers(height // 4, height // 2))
        y, x = rng.uniform(0, height - size), rng.uniform(0, width - size)
        velocity = rng.uniform(-3, 3, 2) + np.sign(rng.uniform(-1, 1, 2)) * 2
        for t in range(num_frames):
            top = int(np.clip(y + velocity[1] * t, 0, height - size))
            left = int(np.clip(x + velocity[0] * t, 0, width - size))
            amodal[t, top:top + size, left:left + size, k] = 1
            forward[t, top:top + size, left:left + size] = velocity  # later k drawn in front
    flow = np.concatenate([forward, -forward], axis=-1)
    in_front = np.cumsum(amodal[..., ::-1], axis=-1)[..., ::-1] - amodal
    return {"flow": flow, "amodal": amodal, "modal": amodal * (in_front == 0),
            "num_objects": np.int32(num_objects)}


def moving_squares_batches(config, *, process_index, process_count, start_step=0):
    """Per-process batches; batch `s` of process `p` is a pure function of (seed, s, p)."""
    local = config.train.batch_size // process_count
    height, width = config.data.resolution
    step = start_step
    while True:
        rng = np.random.default_rng([config.seed, step, process_index])
        examples = [moving_squares_example(rng, config.data.num_frames, height, width,
                                           config.model.num_queries) for _ in range(local)]
        yield {key: np.stack([e[key] for e in examples]) for key in examples[0]}
        step += 1
