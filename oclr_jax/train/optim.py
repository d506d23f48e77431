"""The official optimiser: gradient clipping by value, Adam, warm-up then step decay (DESIGN.md §3).

Learning rate at optimizer step `s` (0-based count of updates already applied):

    lr(s) = base * min(s / warmup_steps, 1) * 0.5 ** min(s // decay_steps, max_decays)

so the halvings fall at absolute steps decay_steps, 2 decay_steps, ... (80k, 160k, ... in the
paper setting), as in the official loop.  The schedule is one closed-form function of the step
on purpose: `optax.join_schedules` restarts the count of the later schedule at the boundary,
which would move every halving late by the warm-up length.

The official loop has a first-iteration quirk (its very first update uses the full rate, the
next ones start the warm-up from ~0); we start the warm-up at 0 from the first update.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import optax


def learning_rate_schedule(base_learning_rate: float, warmup_steps: int, decay_steps: int,
                           max_decays: int) -> optax.Schedule:
    """Linear warm-up from 0 over `warmup_steps`, then halving every `decay_steps` (absolute
    steps), at most `max_decays` times."""
    if decay_steps <= 0:
        raise ValueError(f"decay_steps must be positive; got {decay_steps}")
    if warmup_steps < 0 or max_decays < 0:
        raise ValueError(f"warmup_steps and max_decays must be >= 0; got {warmup_steps}, "
                         f"{max_decays}")

    def schedule(step):
        step = jnp.asarray(step)
        if warmup_steps > 0:
            warmup = jnp.minimum(step.astype(jnp.float32) / warmup_steps, 1.0)
        else:
            warmup = jnp.ones((), jnp.float32)
        halvings = jnp.minimum(step // decay_steps, max_decays).astype(jnp.float32)
        return base_learning_rate * warmup * jnp.power(0.5, halvings)

    return schedule


def schedule_from_config(train_config: Mapping) -> optax.Schedule:
    """The schedule described by `config.train`."""
    return learning_rate_schedule(train_config["learning_rate"], train_config["warmup_steps"],
                                  train_config["decay_steps"], train_config["max_decays"])


def make_optimizer(train_config: Mapping) -> optax.GradientTransformation:
    """clip-by-value(clip_value) -> Adam(torch defaults: b1 0.9, b2 0.999, eps 1e-8)."""
    transforms = []
    if train_config["clip_value"]:
        transforms.append(optax.clip(train_config["clip_value"]))
    transforms.append(optax.adam(schedule_from_config(train_config), b1=0.9, b2=0.999, eps=1e-8))
    return optax.chain(*transforms)
