"""Trains OCLR: `python -m oclr_jax.train --config configs/oclr_paper.py --workdir DIR`.

One process per host; every process runs this same program (see `launch/`).  The trainer:

- builds the 'data' mesh over all devices and the jitted train/eval steps (`step.py`);
- resumes from the newest checkpoint in `DIR/checkpoints` (params, optimizer state, step, rng;
  the data stream restarts at that step) or starts fresh;
- saves every `train.checkpoint_every` steps (orbax, async, keeps `train.keep_checkpoints`),
  and on SIGTERM (preemption) saves and exits cleanly;
- evaluates Syn-Val every `train.eval_every` steps, logs losses, lr, norms and steps/s every
  `train.log_every` steps to TensorBoard (`DIR/tensorboard`) and a tqdm bar with ETA;
- writes `DIR/train_config.json` (the config used) and, at the end, `DIR/model/`, the params +
  config checkpoint that `oclr_jax.eval`, the port and the demo load.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter
from tqdm import tqdm

from oclr_jax import sharding
from oclr_jax.atomic import atomic_write_text
from oclr_jax.checkpoint import save_checkpoint
from oclr_jax.config.loading import load_config, parse_value, split_config_overrides
from oclr_jax.data.official_layout import LayoutError
from oclr_jax.errors import UserError, check_output_dir
from oclr_jax.model import model_from_config
from oclr_jax.train import batches as train_data
from oclr_jax.train import optim
from oclr_jax.train.state_io import (
    CHECKPOINT_DIR,
    checkpoint_manager,
    read_meta,
    restore_latest,
    save_state,
)
from oclr_jax.train.step import (
    EVAL_KEYS,
    TRAIN_KEYS,
    TrainState,
    abstract_train_state,
    compiler_options_for,
    init_train_state,
    make_eval_step,
    make_train_step,
    select_keys,
)

MODEL_DIR = "model"
# Not config.json: `checkpoint.load_checkpoint` takes a folder holding config.json for a model.
CONFIG_FILE = "train_config.json"
TENSORBOARD_DIR = "tensorboard"

BatchesFn = Callable[..., Iterator[dict]]


class _Preemption:
    """Agrees on the step at which to save before a preemption (SIGTERM) kills the job.

    One process: SIGTERM and Ctrl-C (SIGINT) set a flag; the step in flight finishes, is
    saved, and training stops (a second Ctrl-C aborts at once, losing only that step).
    Several: JAX's preemption sync service (started by `jax.distributed.initialize`, which
    watches SIGTERM itself) names one step at which every process saves, so nobody waits in a
    collective for a peer that has left.
    """

    signum: Optional[int] = None  # the signal that stopped the last run (for the exit status)

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}

    def _stop(self, signum, _frame):
        type(self).signum = signum
        self.event.set()
        logging.warning("%s: saving after this step, then stopping (Ctrl-C again aborts "
                        "without saving it)", signal.Signals(signum).name)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._stop)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def reached(self, step: int) -> bool:
        """Call once per step on every process."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.event.is_set()


def release_freed_host_memory() -> None:
    """Hands memory that compilation freed back to the OS (glibc keeps it otherwise: several
    hundred MB on CPU).  A no-op where glibc is absent."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def params_fingerprint(params) -> str:
    """sha256 of this process's own replica of the params (equal on all processes)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(leaf.addressable_data(0)).tobytes())
    return digest.hexdigest()


def write_config_record(config, workdir: str) -> None:
    """`DIR/train_config.json` (atomic).  Refuses to resume a workdir made for another model."""
    path = os.path.join(workdir, CONFIG_FILE)
    record = config.to_dict()
    _check_workdir_model(config, workdir)
    if jax.process_index() == 0:
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=list))


def _mean_metrics(history: list[dict]) -> dict:
    stacked = jax.device_get(history)
    return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def evaluate(eval_step, params, batches: Iterable[dict], mesh) -> dict:
    """Syn-Val: weighted means of the per-sample loss and modal / amodal J."""
    totals = None
    for batch in batches:
        sums = eval_step(params, sharding.global_batch(select_keys(batch, EVAL_KEYS), mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        return {}
    totals = jax.device_get(totals)
    count = max(float(totals.pop("count")), 1.0)
    return {name: float(value) / count for name, value in totals.items()}


def _write(writer, prefix: str, values: dict, step: int) -> None:
    if writer:
        for name, value in values.items():
            writer.add_scalar(f"{prefix}/{name}", value, step)


def _train_loop(config, state, batches, train_step, eval_step, val_batches, manager, writer,
                mesh, last_step: int, cpu_seconds_before: float = 0.0):
    """Steps `state` to `last_step` (or a preemption).  Returns (state, preempted).

    `cpu_seconds_before`: the CPU time of the run before this process (from the resumed
    checkpoint); checkpoints and summaries carry the total, `cpu_hours`.
    """
    train = config.train
    cpu_start = time.process_time()
    cpu_seconds = lambda: cpu_seconds_before + time.process_time() - cpu_start  # noqa: E731
    start_step, num_steps = int(jax.device_get(state.step)), int(train.num_steps)
    rows = sharding.process_batch_size(train.batch_size)
    progress = tqdm(total=num_steps, initial=start_step, desc="train", dynamic_ncols=True,
                    disable=jax.process_index() != 0)
    history, tick, tick_step, preempted = [], time.perf_counter(), start_step, False
    with _Preemption() as preemption, progress:
        for step in range(start_step + 1, last_step + 1):  # `step` = updates done after it
            local = next(batches)
            if local["flow"].shape[0] != rows:
                raise ValueError(f"the data source gave {local['flow'].shape[0]} rows; expected "
                                 f"train.batch_size / processes = {rows}")
            state, metrics = train_step(state, sharding.global_batch(
                select_keys(local, TRAIN_KEYS), mesh))
            history.append(metrics)
            progress.update(1)
            if step == start_step + 1:
                release_freed_host_memory()  # the first call compiled the step
            if step % int(train.log_every) == 0 or step == last_step:
                summary = _mean_metrics(history)  # waits for the steps so far
                now = time.perf_counter()
                summary["steps_per_sec"] = (step - tick_step) / (now - tick)
                summary["cpu_hours"] = cpu_seconds() / 3600.0
                history, tick, tick_step = [], now, step
                progress.set_postfix(loss=f"{summary['loss']:.4f}",
                                     lr=f"{summary['learning_rate']:.2e}")
                _write(writer, "train", summary, step)
            preempted = preemption.reached(step)
            # Saved before Syn-Val runs, so a failing evaluation loses no training.
            if step % int(train.checkpoint_every) == 0 or step == last_step or preempted:
                save_state(manager, state, cpu_seconds())
            if preempted:
                logging.warning("stopped by a signal: saved step %d; rerun the same command "
                                "to continue", step)
                break
            if eval_step and (step % int(train.eval_every) == 0 or step == num_steps):
                results = evaluate(eval_step, state.params, val_batches(
                    config, process_index=jax.process_index(),
                    process_count=jax.process_count()), mesh)
                logging.info("step %d Syn-Val %s", step, results)
                _write(writer, "val", results, step)
    return state, preempted


def train_and_evaluate(config, workdir: str, *, train_batches: Optional[BatchesFn] = None,
                       val_batches: Optional[BatchesFn] = None, devices=None,
                       stop_at_step: Optional[int] = None,
                       compiler_options: Optional[dict] = None) -> TrainState:
    """Trains to `config.train.num_steps` (resuming from `workdir`); returns the final state.

    Args:
      config: the full ConfigDict.
      workdir: checkpoints, summaries, config record and the exported model go here.
      train_batches: `(config, *, process_index, process_count, start_step) -> iterator` of
        per-process numpy batches; default `train_data.make_train_batches`.
      val_batches: `(config, *, process_index, process_count) -> iterable` of per-process
        batches with a `weight` row mask; default `train_data.make_val_batches`.
      devices: devices of the mesh (default all).
      stop_at_step: save and return at this step as if preempted (tests, time-boxed jobs).
      compiler_options: XLA options for the jitted init/train/eval functions, on top of
        `train_step.compiler_options_for(config)`.
    """
    compiler_options = compiler_options_for(config, compiler_options)
    train_batches = train_batches or train_data.make_train_batches
    val_batches = val_batches or train_data.make_val_batches
    if config.train.eval_every and val_batches is train_data.make_val_batches:
        train_data.check_val_source(config)  # fail now, not at the first evaluation
    os.makedirs(workdir, exist_ok=True)
    write_config_record(config, workdir)
    mesh = sharding.make_data_mesh(devices)
    sharding.check_batch_size(int(config.train.batch_size), mesh,
                              int(config.train.grad_accum_steps))
    in_channels = 2 * len(config.data.gaps)
    model = model_from_config(config.model, in_channels=in_channels)
    tx = optim.make_optimizer(config.train)
    manager = checkpoint_manager(workdir, config)
    state = restore_latest(manager, abstract_train_state(model, tx, in_channels, mesh))
    if state is None:
        state = init_train_state(model, tx, jax.random.PRNGKey(int(config.seed)), in_channels,
                                 mesh, compiler_options)
        if config.train.get("init_params_from"):
            state = warm_start_params(state, config, str(config.train.init_params_from), mesh)
    start_step = int(jax.device_get(state.step))
    num_steps = int(config.train.num_steps)
    last_step = num_steps if stop_at_step is None else min(num_steps, int(stop_at_step))
    train_step = make_train_step(model, tx, config, mesh, compiler_options)
    eval_step = (make_eval_step(model, config, mesh, compiler_options)
                 if config.train.eval_every else None)
    writer = None
    if jax.process_index() == 0:
        writer = SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD_DIR))
    logging.info("training steps %d -> %d on %d devices (%d processes)", start_step, last_step,
                 mesh.size, jax.process_count())
    batches = train_batches(config, process_index=jax.process_index(),
                            process_count=jax.process_count(), start_step=start_step)
    try:
        # A state at step > 0 was restored from the newest checkpoint: continue its count.
        cpu_before = float(read_meta(workdir, start_step).get("cpu_seconds", 0.0)) if (
            start_step) else 0.0
        state, preempted = _train_loop(config, state, batches, train_step, eval_step,
                                       val_batches, manager, writer, mesh, last_step,
                                       cpu_before)
    finally:
        manager.wait_until_finished()  # async saves complete even when a step raised
        manager.close()
        if writer:
            writer.close()
    logging.info("process %d/%d: step %d, params sha256 %s", jax.process_index(),
                 jax.process_count(), int(jax.device_get(state.step)),
                 params_fingerprint(state.params))
    if int(jax.device_get(state.step)) == num_steps and not preempted:
        export_model(state.params, config, workdir)
    return state


def warm_start_params(state: TrainState, config, path: str, mesh) -> TrainState:
    """A fresh state whose params are read from a model checkpoint (`train.init_params_from`).

    Only the params: the optimizer state, step (0, so the warm-up runs again from a zero rate)
    and dropout key stay fresh.  Used once, when the workdir has no train-state checkpoint; a
    resumed run ignores it.  The checkpoint must describe the same model (`config.model`).
    """
    from oclr_jax.checkpoint import load_checkpoint

    _, params, source_config = load_checkpoint(path, model_source="flax")
    theirs, ours = source_config.model.to_dict(), config.model.to_dict()
    shape_keys = ("num_queries", "unet_features", "num_layers", "num_heads", "ff_dim")
    different = [k for k in shape_keys if theirs.get(k) != ours.get(k)]
    if different or list(source_config.data.gaps) != list(config.data.gaps):
        raise ValueError(f"train.init_params_from={path}: its model differs from this config's "
                         f"({', '.join(f'{k} {theirs.get(k)} != {ours.get(k)}' for k in different) or 'data.gaps'}); "
                         f"warm-start from a checkpoint of the same model")
    params = jax.tree.map(lambda x, ref: jax.device_put(np.asarray(x, np.float32), ref.sharding),
                          params, state.params)
    logging.info("warm start: params from %s, fresh optimizer state", path)
    return state.replace(params=params)


def export_model(params, config, workdir: str) -> str:
    """`DIR/model/`: params + config for eval, the port and the demo (process 0 writes, from
    its own replica; `save_checkpoint` waits for no other process)."""
    path = os.path.join(os.path.abspath(workdir), MODEL_DIR)
    if jax.process_index() == 0:
        host_params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
        save_checkpoint(path, host_params, config, overwrite=True)
    return path


def _parse_args(argv):
    overrides, rest = split_config_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="python -m oclr_jax.train", description=__doc__.split("\n\n")[0],
        epilog="Any config field can be overridden: --config.train.learning_rate=1e-4.")
    parser.add_argument("--config", required=True, help="config file, e.g. configs/oclr_paper.py")
    parser.add_argument("--workdir", required=True, help="output folder; reruns resume here")
    sharding.add_distributed_flags(parser, "data-parallel over every process's devices")
    parser.add_argument("--xla_option", action="append", default=[], metavar="KEY=VALUE",
                        help="XLA compiler option for the jitted steps, repeatable, e.g. "
                             "xla_backend_optimization_level=1 (faster CPU compiles)")
    parser.add_argument("--stop_at_step", type=int, default=None,
                        help="save and stop at this step (time-boxed jobs; rerun to continue)")
    return parser.parse_args(rest), overrides


def _check_workdir_model(config, workdir: str) -> None:
    """Raises ValueError if `workdir` trained another model (or its record is unreadable).

    `main` calls it before any work; `write_config_record` again before it writes."""
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable ({e}); use a new --workdir") from None
        if json.loads(json.dumps(previous.get("model"))) != json.loads(
                json.dumps(config.to_dict()["model"])):
            raise ValueError(f"{path}: this workdir trained a different model "
                             f"({previous.get('model')}); use a new --workdir")


WORKDIR_MARKERS = (CONFIG_FILE, CHECKPOINT_DIR)  # a folder holding either is a workdir of ours


def check_inputs(config, workdir: str) -> None:
    """Everything a user can get wrong, checked before any work; raises UserError naming it."""
    from oclr_jax.config.checks import check_config

    check_config(config)
    data = config.data
    if data.get("source", "pipeline") in ("", "pipeline"):
        if not data.get("tfds_name"):
            if not data.get("train_dir"):
                raise UserError("no training data", "config.data.train_dir",
                                "set --config.data.train_dir=FOLDER (an official-layout folder, "
                                "e.g. from python -m oclr_jax.data.synth generate) or "
                                "--config.data.tfds_name")
            if not os.path.isdir(data.train_dir):
                raise UserError("training data folder does not exist",
                                f"config.data.train_dir={data.train_dir}")
    init = config.train.get("init_params_from")
    if init:  # warm start: a model checkpoint of the same architecture
        from oclr_jax.checkpoint import CheckpointError, read_checkpoint_config, resolve_checkpoint_dir

        where = f"config.train.init_params_from={init}"
        if not os.path.exists(init):
            raise UserError("checkpoint does not exist", where)
        try:
            theirs = read_checkpoint_config(
                os.path.join(resolve_checkpoint_dir(init), "config.json"))
        except CheckpointError as e:
            raise UserError(str(e), where) from None
        keys = ("num_queries", "unet_features", "num_layers", "num_heads", "ff_dim")
        different = [f"model.{k} {theirs.model.get(k)} != {config.model.get(k)}" for k in keys
                     if theirs.model.get(k) != config.model.get(k)]
        if list(theirs.data.gaps) != list(config.data.gaps):
            different.append(f"data.gaps {tuple(theirs.data.gaps)} != {tuple(config.data.gaps)}")
        if different:
            raise UserError(f"the checkpoint's model differs from this config's: "
                            f"{', '.join(different)}", where,
                            "warm-start from a checkpoint of the same model")
    # A workdir is added to and resumed, never replaced as a whole: `--workdir .` is fine.
    check_output_dir(workdir, "--workdir", f"{CONFIG_FILE} or {CHECKPOINT_DIR}/", replaces=False,
                     owned=lambda folder: any(os.path.exists(os.path.join(folder, marker))
                                              for marker in WORKDIR_MARKERS))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = _parse_args(argv)
    # force: importing orbax (absl) has already given the root logger a WARNING handler.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    config = load_config(args.config, overrides)  # ConfigError is a UserError
    if args.stop_at_step is not None and args.stop_at_step < 1:
        raise UserError(f"must be at least 1, got {args.stop_at_step}", "--stop_at_step")
    check_inputs(config, args.workdir)
    compiler_options = {}
    for option in args.xla_option:
        key, _, value = option.partition("=")
        compiler_options[key] = parse_value(value)
    sharding.initialize_distributed(args)
    try:  # the checks train_and_evaluate makes first, as user errors (they raise ValueError)
        sharding.check_batch_size(int(config.train.batch_size), sharding.make_data_mesh(None),
                                  int(config.train.grad_accum_steps))
        if config.train.eval_every:
            train_data.check_val_source(config)
        _check_workdir_model(config, args.workdir)
    except ValueError as e:
        raise UserError(str(e)) from None
    _Preemption.signum = None
    try:
        state = train_and_evaluate(config, args.workdir, stop_at_step=args.stop_at_step,
                                   compiler_options=compiler_options or None)
    except LayoutError as e:  # a bad file met during training
        raise UserError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - tf.data wraps a bad file in a TF OpError
        pipeline = sys.modules.get("oclr_jax.data.input_pipeline")  # loaded if TF reads data
        if pipeline is not None:
            try:
                pipeline.raise_recorded_read_error(e)
            except pipeline.DataReadError as data_error:
                raise UserError(str(data_error)) from None
        raise
    if _Preemption.signum is not None and int(jax.device_get(state.step)) < int(
            config.train.num_steps):
        print(f"interrupted ({signal.Signals(_Preemption.signum).name}): saved step "
              f"{int(jax.device_get(state.step))} in {args.workdir}; rerun the same command to "
              "continue", file=sys.stderr)
        return 128 + int(_Preemption.signum)
    return 0

