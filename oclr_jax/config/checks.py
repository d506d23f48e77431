"""Range and enum checks of a config's values, run by every command before any work.

`apply_override` already refuses unknown keys and wrong types; these checks refuse values of
the right type that cannot mean anything (a threshold of 2.0, a batch of 0 sequences, a
checkpoint every 0 steps) and name the key, what was found and what is allowed.  Only the
sections a command uses are checked (eval does not care about `train`).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

from oclr_jax.config.loading import ConfigError
from oclr_jax.errors import UserError


class ConfigValueError(ConfigError, UserError):
    """A config value outside its meaningful range; `where` is the key."""

    def __init__(self, key: str, found, allowed: str):
        UserError.__init__(self, f"value {found!r} is out of range", f"config.{key}",
                           f"use {allowed}")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _non_negative_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rule(check: Callable[[object], bool], allowed: str):
    return check, allowed


POSITIVE_INT = _rule(_positive_int, "an integer >= 1")
NON_NEGATIVE_INT = _rule(_non_negative_int, "an integer >= 0")
POSITIVE = _rule(lambda v: _number(v) and v > 0, "a number > 0")
NON_NEGATIVE = _rule(lambda v: _number(v) and v >= 0, "a number >= 0")
OPEN_UNIT = _rule(lambda v: _number(v) and 0 < v < 1, "a number strictly between 0 and 1")
DROPOUT = _rule(lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")


def one_of(*choices) -> tuple:
    return _rule(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def _size(value) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(_positive_int(v) for v in value))


def _gaps(value) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) >= 1
            and all(isinstance(g, int) and not isinstance(g, bool) and g != 0 for g in value)
            and len(set(value)) == len(value))


RULES: dict[str, dict[str, tuple]] = {
    "model": {
        "num_queries": POSITIVE_INT, "unet_features": POSITIVE_INT, "num_layers": POSITIVE_INT,
        "num_heads": POSITIVE_INT, "ff_dim": POSITIVE_INT, "dropout_rate": DROPOUT,
        "dtype": one_of("float32", "bfloat16"),
    },
    "data": {
        "gaps": _rule(_gaps, "distinct non-zero integer gaps, e.g. (1, -1)"),
        "num_frames": POSITIVE_INT,
        "resolution": _rule(_size, "(H, W) with positive integers, e.g. (128, 224)"),
        "shuffle_buffer": NON_NEGATIVE_INT,
    },
    "loss": {
        "amodal_weight": NON_NEGATIVE, "boundary_weight": NON_NEGATIVE,
        "order_weight": NON_NEGATIVE, "modal_weight": NON_NEGATIVE,
        "boundary_width": NON_NEGATIVE_INT, "matcher": one_of("permutations", "scipy"),
    },
    "train": {
        "batch_size": POSITIVE_INT, "num_steps": POSITIVE_INT, "learning_rate": POSITIVE,
        "warmup_steps": NON_NEGATIVE_INT, "decay_steps": POSITIVE_INT,
        "max_decays": NON_NEGATIVE_INT, "clip_value": POSITIVE,
        "grad_accum_steps": POSITIVE_INT, "dropout_rng": one_of("threefry", "rbg"),
        "log_every": POSITIVE_INT, "checkpoint_every": POSITIVE_INT,
        "keep_checkpoints": POSITIVE_INT,
        "eval_every": _rule(_non_negative_int, "an integer >= 0 (0: no Syn-Val evaluation)"),
        "eval_num_sequences": POSITIVE_INT,
    },
    "eval": {
        "window": POSITIVE_INT, "batch_size": POSITIVE_INT, "threshold": OPEN_UNIT,
        "upsample": one_of("bilinear", "nearest"),
    },
}


def check_config(config, sections: Iterable[str] = ("model", "data", "loss", "train", "eval")
                 ) -> None:
    """Raises ConfigValueError for the first value outside its range (keys a config lacks
    are skipped: older checkpoints predate some fields)."""
    for section in sections:
        if section not in config:
            continue
        for key, (check, allowed) in RULES.get(section, {}).items():
            if key in config[section] and not check(config[section][key]):
                raise ConfigValueError(f"{section}.{key}", config[section][key], allowed)
    if "model" in config and all(k in config.model for k in ("unet_features", "num_heads")):
        width = 16 * int(config.model.unet_features)
        if width % int(config.model.num_heads):
            raise ConfigValueError("model.num_heads", config.model.num_heads,
                                   f"a divisor of the transformer width 16 * unet_features = "
                                   f"{width}")
