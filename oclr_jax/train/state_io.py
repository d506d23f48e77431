"""The trainer's resumable state on disk: orbax checkpoints of a `TrainState` in `DIR/checkpoints`.

Each checkpoint holds the params, the optimizer state, the step and the dropout key, plus a
JSON record of the data position (the input stream is a pure function of the step, so resuming
at a step replays exactly the batches that follow it).  The exported model folder that eval,
the port and the demo read is a different format: `oclr_jax.checkpoint`.
"""

from __future__ import annotations

import os
from typing import Optional

import flax
import jax
import orbax.checkpoint as ocp

from oclr_jax.train.step import TrainState

CHECKPOINT_DIR = "checkpoints"


def checkpoint_manager(workdir: str, config):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(config.train.keep_checkpoints), create=True,
        enable_async_checkpointing=bool(config.train.get("async_checkpointing", True)))
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                                 options=options)


META_ITEM = "meta"


def save_state(manager, state: TrainState, cpu_seconds: Optional[float] = None) -> None:
    """Saves `state`; `cpu_seconds` (the run's CPU time so far, over every resumption) goes
    into the JSON record beside it, for learning curves against compute."""
    step = int(jax.device_get(state.step))
    meta = {"step": step, "data_position": step}
    if cpu_seconds is not None:
        meta["cpu_seconds"] = round(float(cpu_seconds), 1)
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        meta=ocp.args.JsonSave(meta)), force=True)


def restore_latest(manager, abstract_state: TrainState) -> Optional[TrainState]:
    """The newest checkpoint restored into the abstract state's shardings, or None."""
    step = manager.latest_step()
    if step is None:
        return None
    target = flax.serialization.to_state_dict(abstract_state)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    state = flax.serialization.from_state_dict(abstract_state, restored["state"])
    if int(restored["meta"]["data_position"]) != int(jax.device_get(state.step)):
        raise ValueError(f"checkpoint {step} in {manager.directory}: data position "
                         f"{restored['meta']['data_position']} != step {state.step}")
    return state


def read_meta(workdir: str, step: int) -> dict:
    """The JSON record saved with checkpoint `step` ({} if it has none or is unreadable)."""
    import json

    path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR, str(step), META_ITEM, "metadata")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
