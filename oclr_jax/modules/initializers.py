"""PyTorch's default initialisations, so a model trained from scratch starts from the same
distribution as the official code (optimiser settings were tuned for it).

torch's `nn.Linear`/`nn.Conv2d`/`nn.ConvTranspose2d` draw weights and biases from
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)); `nn.Embedding` from N(0, 1);
the official attention's packed input projection is xavier-uniform with a zero bias.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def uniform_fan_in(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for any shape: torch's default weight and bias init."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def xavier_uniform(fan_in: int, fan_out: int):
    """torch.nn.init.xavier_uniform_ for a weight of the given fans."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
