"""Compile the real train / eval steps for TPU topologies on a machine without a TPU.

With libtpu installed (`pip install "jax[tpu]==0.10.2"`, or the `tpu` extra),
`jax.experimental.topologies` gives compile-only devices of a named TPU slice (e.g. v5e:16x16 =
256 chips).  This tool builds the mesh the trainer builds over them, the exact jitted functions
the trainer and `python -m oclr_jax.eval` run (`oclr_jax.train.step.make_train_step`,
`make_eval_step`, `oclr_jax.eval.inference.make_window_step`) with their shardings, and compiles
them for the slice.  Nothing executes.  Per configuration it prints one JSON line: per-chip HBM
(arguments, temporaries, outputs) against the chip's capacity, XLA's FLOPs and bytes accessed
per chip, and the compile time; a program that does not fit HBM fails with RESOURCE_EXHAUSTED
and is reported as `"fits": false`.  `--search` finds the largest per-chip batch that fits
(doubling, then bisection).

Usage (from the repository root):
  python tools/aot_tpu.py --topology v5e:2x2 --dtype bfloat16 --per-chip-batch 8
  python tools/aot_tpu.py --topology v5e:2x2 --dtype bfloat16 --search --max-batch 32
  python tools/aot_tpu.py --tiny --topology v5e:2x2            # seconds-to-minutes, for tests
  python tools/aot_tpu.py --platform cpu --per-chip-batch 1     # the same on this CPU's devices
  Any config field: --set model.attention=chunked --set model.remat=true

Figures are compile-only: XLA's estimates for the program, not measurements of a run.  XLA's
cost analysis counts a while-loop body once, so FLOPs and bytes of programs with loops
(model.attention=chunked, train.grad_accum_steps > 1) are underestimates (flagged in `note`);
memory figures are not affected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# HBM per chip in bytes (public TPU specifications); the compiler decides what fits.
HBM_BYTES = {"v4": 32 * 2**30, "v5e": 16 * 2**30, "v5litepod": 16 * 2**30,
             "v5p": 95 * 2**30, "v6e": 32 * 2**30}
DEFAULT_TOPOLOGIES = ("v5e:2x2", "v5e:4x4", "v5e:16x16", "v4:2x2x2", "v5p:4x4x4")
STEPS = ("train", "eval", "predict")  # trainer step, trainer Syn-Val step, eval CLI windows
GB = 1e9
# libtpu takes /tmp/libtpu_lockfile for the first process that loads it (any JAX program run
# without JAX_PLATFORMS=cpu once libtpu is installed); compile-only use needs no exclusive chip.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def libtpu_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("libtpu") is not None


def topology_devices(name: str):
    """Compile-only devices of the TPU slice `name` (e.g. 'v5e:2x2')."""
    from jax.experimental import topologies
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)


def topology_chips(topology: str) -> int:
    """Chips in a slice name: the product of its dimensions ('v4:2x2x2' -> 8)."""
    dims = topology.split(":", 1)[1] if ":" in topology else ""
    try:
        chips = 1
        for dim in dims.lower().split("x"):
            chips *= int(dim)
        return chips
    except ValueError:
        return 0


def devices_per_chip(topology: str, num_devices: int) -> int:
    """1, or 2 where the compile-only devices are TensorCores (v4:2x2x2 gives 16 devices for
    8 chips, each with half the chip's HBM: the compiler reports 15.25 GiB available)."""
    chips = topology_chips(topology)
    return num_devices // chips if chips and num_devices % chips == 0 and num_devices > chips else 1


def hbm_capacity(topology: str, per_chip: int = 1):
    """HBM bytes per device (a chip, or a TensorCore when `per_chip` devices share a chip)."""
    capacity = HBM_BYTES.get(topology.split(":")[0].lower())
    return capacity // per_chip if capacity else None


def load_config(tiny: bool, overrides):
    from oclr_jax.config import loading
    name = "tiny.py" if tiny else "oclr_paper.py"
    return loading.load_config(os.path.join(REPO, "configs", name), list(overrides))


def _abstract_batch(config, global_batch: int, mesh, step: str) -> dict:
    import jax
    import jax.numpy as jnp

    from oclr_jax import sharding
    frames = int(config.data.num_frames)
    height, width = (int(v) for v in config.data.resolution)
    channels, layers = 2 * len(config.data.gaps), int(config.model.num_queries)
    spec = sharding.batch_sharded(mesh)
    batch = {"flow": jax.ShapeDtypeStruct((global_batch, frames, height, width, channels),
                                          jnp.float32, sharding=spec)}
    if step in ("train", "eval"):
        batch["amodal"] = jax.ShapeDtypeStruct((global_batch, frames, height, width, layers),
                                               jnp.float32, sharding=spec)
    if step == "eval":
        batch["weight"] = jax.ShapeDtypeStruct((global_batch,), jnp.float32, sharding=spec)
    return batch


def lower_step(config, devices, per_chip_batch: int, step: str = "train",
               compiler_options=None):
    """`jax.stages.Lowered` of the named step for a 1-D data mesh over `devices` with
    `per_chip_batch` sequences per device (the trainer's mesh and shardings)."""
    from oclr_jax import sharding
    from oclr_jax.eval import inference
    from oclr_jax.model import model_from_config
    from oclr_jax.train import optim
    from oclr_jax.train import step as train_step

    mesh = sharding.make_data_mesh(devices)
    in_channels = 2 * len(config.data.gaps)
    model = model_from_config(config.model, in_channels=in_channels)
    tx = optim.make_optimizer(config.train)
    state = train_step.abstract_train_state(model, tx, in_channels, mesh)
    global_batch = per_chip_batch * mesh.size
    sharding.check_batch_size(global_batch, mesh, int(config.train.grad_accum_steps))
    batch = _abstract_batch(config, global_batch, mesh, step)
    if step == "train":
        fn = train_step.make_train_step(model, tx, config, mesh, compiler_options)
        return fn.lower(state, batch)
    if step == "eval":
        fn = train_step.make_eval_step(model, config, mesh, compiler_options)
        return fn.lower(state.params, batch)
    if step == "predict":
        fn = inference.make_window_step(inference.model_predict_fn(model), mesh,
                                        float(config.eval.threshold))
        return fn.lower(state.params, batch["flow"])
    raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")


def compile_report(config, devices, per_chip_batch: int, step: str = "train",
                   compiler_options=None) -> dict:
    """Compiles and returns per-device memory/cost figures; `fits` False on
    RESOURCE_EXHAUSTED (other compile errors propagate)."""
    start = time.perf_counter()
    lowered = lower_step(config, devices, per_chip_batch, step, compiler_options)
    try:
        compiled = lowered.compile()
    except Exception as error:  # XlaRuntimeError: the only expected failure is HBM
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        message = str(error).splitlines()[0][:300]
        return {"fits": False, "compile_s": round(time.perf_counter() - start, 1),
                "error": message}
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    args, temps = memory.argument_size_in_bytes, memory.temp_size_in_bytes
    outputs, aliased = memory.output_size_in_bytes, memory.alias_size_in_bytes
    return {
        "fits": True,
        "compile_s": round(seconds, 1),
        "argument_gb": round(args / GB, 3),
        "temp_gb": round(temps / GB, 3),
        "output_gb": round(outputs / GB, 3),
        "alias_gb": round(aliased / GB, 3),
        # Donated state aliases the outputs: live = args + temps + outputs - aliased.
        "hbm_gb": round((args + temps + outputs - aliased) / GB, 3),
        "tflop_per_chip": round(float(cost.get("flops", 0.0)) / 1e12, 3),
        "gb_accessed_per_chip": round(float(cost.get("bytes accessed", 0.0)) / GB, 2),
        "gb_accessed_per_sequence": round(
            float(cost.get("bytes accessed", 0.0)) / GB / per_chip_batch, 2),
    }


def _describe(config) -> dict:
    model, train = config.model, config.train
    return {
        "resolution": list(config.data.resolution), "frames": int(config.data.num_frames),
        "dtype": model.get("dtype", "float32"), "remat": model.get("remat", False),
        "attention": model.get("attention", "dense"),
        "attention_chunk": int(model.get("attention_chunk", 0) or 0),
        "matcher": config.loss.matcher, "dropout_rng": train.get("dropout_rng", "threefry"),
        "grad_accum_steps": int(train.grad_accum_steps),
    }


def run_one(config, topology: str, devices, per_chip_batch: int, step: str,
            compiler_options=None) -> dict:
    per_chip = devices_per_chip(topology, len(devices))
    # `per_chip_batch` and the per-chip figures are per device: a chip, or a TensorCore where
    # `devices_per_chip` is 2.
    record = {"tool": "aot_tpu", "topology": topology,
              "chips": len(devices) // per_chip, "devices": len(devices),
              "devices_per_chip": per_chip, "step": step,
              "per_chip_batch": per_chip_batch, **_describe(config)}
    capacity = hbm_capacity(topology, per_chip)
    if capacity:
        record["hbm_capacity_gb"] = round(capacity / GB, 2)
    record.update(compile_report(config, devices, per_chip_batch, step, compiler_options))
    if capacity and record.get("fits"):
        record["hbm_fraction"] = round(record["hbm_gb"] * GB / capacity, 3)
    if record["attention"] == "chunked" or record["grad_accum_steps"] > 1:
        # Measured: chunked attention at the paper size on CPU gave fewer FLOPs than dense
        # (1.08 vs 1.30 TFLOP) although it recomputes more: XLA's cost analysis counts the
        # body of a while loop (the scan over blocks / microbatches) once, not per trip.
        record["note"] = ("flops/bytes count each loop body once (scan over attention blocks "
                          "or microbatches): underestimates")
    return record


def search_largest(config, topology, devices, step, start: int, max_batch: int, emit,
                   compiler_options=None):
    """Largest per-chip batch in [1, max_batch] that compiles (fits HBM), by doubling from
    `start` then bisecting; every compile is emitted.  Returns it (0 if none fits)."""
    fits, too_big = 0, max_batch + 1
    batch = max(1, min(start, max_batch))
    while True:  # doubling phase (or halving if the first try fails)
        record = run_one(config, topology, devices, batch, step, compiler_options)
        emit(record)
        if record["fits"]:
            fits = batch
            if batch >= max_batch:
                break
            batch = min(batch * 2, max_batch)
        else:
            too_big = batch
            break
    if fits == 0:  # the start did not fit: bisect below it
        low, high = 0, too_big
    else:
        low, high = fits, too_big
    while high - low > 1:
        batch = (low + high) // 2
        record = run_one(config, topology, devices, batch, step, compiler_options)
        emit(record)
        low, high = (batch, high) if record["fits"] else (low, batch)
    return low


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "on", "yes"):
        return True
    if text.lower() in ("false", "0", "off", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", action="append",
                        help=f"TPU slice, repeatable (default {', '.join(DEFAULT_TOPOLOGIES)})")
    parser.add_argument("--platform", choices=("tpu", "cpu"), default="tpu",
                        help="cpu: compile for this machine's (fake) CPU devices instead")
    parser.add_argument("--step", action="append", choices=STEPS,
                        help="train (default), eval (trainer Syn-Val step), predict "
                             "(python -m oclr_jax.eval windows); repeatable")
    parser.add_argument("--dtype", action="append", choices=("float32", "bfloat16"))
    parser.add_argument("--remat", action="append", type=_bool, help="true/false; repeatable")
    parser.add_argument("--matcher", action="append", choices=("permutations", "scipy"))
    parser.add_argument("--per-chip-batch", type=int, action="append",
                        help="sequences per device: a chip, or a TensorCore where the "
                             "topology's devices are cores (v4: devices_per_chip 2)")
    parser.add_argument("--search", action="store_true",
                        help="find the largest per-chip batch that fits")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="configs/tiny.py (for tests)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override, e.g. model.attention=chunked")
    args = parser.parse_args(argv)
    for batch in args.per_chip_batch or []:
        if batch < 1:
            parser.error(f"--per-chip-batch must be >= 1; got {batch}")
    if args.max_batch < 1:
        parser.error(f"--max-batch must be >= 1; got {args.max_batch}")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.platform == "cpu":  # no TPU initialisation (and no libtpu lock) for CPU compiles
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.platform == "tpu" and not libtpu_available():
        print('error: libtpu is not installed (--platform tpu): pip install "jax[tpu]==0.10.2" '
              "or use --platform cpu", file=sys.stderr)
        return 2
    import itertools

    import jax

    if args.platform == "tpu":  # trace what a TPU host traces: no CPU-only attention blocks
        from oclr_jax.modules import transformer
        transformer.CPU_INFERENCE_BLOCKS = False
    topologies = args.topology or (["cpu"] if args.platform == "cpu" else DEFAULT_TOPOLOGIES)
    combos = list(itertools.product(args.step or ["train"], args.dtype or ["bfloat16"],
                                    args.remat or [False], args.matcher or [None]))
    from oclr_jax.train import step as train_step
    for topology in topologies:
        try:
            devices = jax.devices("cpu") if args.platform == "cpu" else topology_devices(topology)
        except Exception as error:  # noqa: BLE001 (an unknown name is a JaxRuntimeError)
            print(f"error: cannot make TPU topology {topology!r} (--topology): {error}",
                  file=sys.stderr)
            return 2
        for step, dtype, remat, matcher in combos:
            overrides = [f"model.dtype={dtype}", f"model.remat={remat}"] + list(args.set)
            if matcher:
                overrides.append(f"loss.matcher={matcher}")
            try:
                config = load_config(args.tiny, overrides)
            except Exception as error:  # noqa: BLE001 (UserError/ValueError/TypeError: all user input)
                print(f"error: bad --set override: {error}", file=sys.stderr)
                return 2
            # The trainer's CPU choices on CPU; none for TPU (the CPU flags do not exist there).
            options = train_step.compiler_options_for(config) if args.platform == "cpu" else None
            emit = lambda record: print(json.dumps(record), flush=True)
            if args.search:
                start = (args.per_chip_batch or [1])[0]
                largest = search_largest(config, topology, devices, step, start,
                                         args.max_batch, emit, options)
                emit({"tool": "aot_tpu", "topology": topology, "step": step,
                      **_describe(config), "largest_per_chip_batch": largest,
                      "max_batch_tried": args.max_batch})
            else:
                for batch in args.per_chip_batch or [1]:
                    emit(run_one(config, topology, devices, batch, step, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
