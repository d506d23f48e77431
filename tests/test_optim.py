"""The learning-rate schedule at its boundaries, and clip-by-value + Adam against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oclr_jax.train import optim

PAPER = dict(learning_rate=5e-5, warmup_steps=40_000, decay_steps=80_000, max_decays=9,
             clip_value=5.0)


@pytest.mark.parametrize("step, expected", [
    (0, 0.0),
    (20_000, 2.5e-5),
    (39_999, 5e-5 * 39_999 / 40_000),
    (40_000, 5e-5),
    (79_999, 5e-5),                  # not halved yet
    (80_000, 2.5e-5),                # first halving at 80k, not at 120k (join_schedules' bug)
    (159_999, 2.5e-5),
    (160_000, 1.25e-5),
    (599_999, 5e-5 / 2 ** 7),
    (720_000, 5e-5 / 2 ** 9),        # ninth and last halving
    (800_000, 5e-5 / 2 ** 9),        # no tenth
    (10_000_000, 5e-5 / 2 ** 9),
])
def test_paper_schedule_boundaries(step, expected):
    schedule = optim.schedule_from_config(PAPER)
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(schedule)(jnp.int32(step)), expected, rtol=1e-6)


def test_schedule_without_warmup_and_with_warmup_longer_than_decay():
    no_warmup = optim.learning_rate_schedule(1.0, 0, 10, 2)
    np.testing.assert_allclose([no_warmup(s) for s in (0, 9, 10, 20, 30)],
                               [1.0, 1.0, 0.5, 0.25, 0.25])
    long_warmup = optim.learning_rate_schedule(1.0, 20, 10, 9)
    np.testing.assert_allclose([long_warmup(s) for s in (5, 10, 20)], [0.25, 0.5 * 0.5, 0.25])
    with pytest.raises(ValueError, match="decay_steps"):
        optim.learning_rate_schedule(1.0, 0, 0, 1)


def test_clip_by_value_then_adam_matches_numpy():
    config = dict(learning_rate=1e-2, warmup_steps=2, decay_steps=3, max_decays=1, clip_value=5.0)
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    grads_seq = [{k: (rng.normal(size=v.shape) * 10).astype(np.float32) for k, v in params.items()}
                 for _ in range(6)]
    tx = optim.make_optimizer(config)
    state = tx.init(params)
    current = params
    np_params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in np_params.items()}
    v = {k: np.zeros_like(x) for k, x in np_params.items()}
    for step, grads in enumerate(grads_seq):
        updates, state = tx.update(grads, state, current)
        current = jax.tree.map(lambda p, u: p + u, current, updates)
        lr = 1e-2 * min(step / 2, 1.0) * 0.5 ** min(step // 3, 1)
        for key in np_params:
            g = np.clip(grads[key].astype(np.float64), -5.0, 5.0)
            m[key] = 0.9 * m[key] + 0.1 * g
            v[key] = 0.999 * v[key] + 0.001 * g * g
            m_hat, v_hat = m[key] / (1 - 0.9 ** (step + 1)), v[key] / (1 - 0.999 ** (step + 1))
            np_params[key] = np_params[key] - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    for key in np_params:
        np.testing.assert_allclose(current[key], np_params[key], rtol=1e-5, atol=1e-6)
