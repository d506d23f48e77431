"""`python -m oclr_jax.train.export`: any checkpoint of a training workdir as a model folder.

The trainer exports `WORKDIR/model/` only when a run reaches `train.num_steps`.  To ship or
evaluate an earlier step (the best one on a held-out set, or the newest of a run that is still
going), this command reads checkpoint STEP from `WORKDIR/checkpoints/` and writes the same kind
of folder (`config.json` + `params/`) that eval, the demo, the port and
`train.init_params_from` read.  It only reads the workdir, so it can run beside the training
job that is writing it.

    python -m oclr_jax.train.export --workdir RUN --step 4000 --out exported/step4000
    python -m oclr_jax.train.export --workdir RUN --list       # the steps on disk
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from oclr_jax.checkpoint import CONFIG_FILE as MODEL_MARKER  # what marks a model folder
from oclr_jax.checkpoint import config_from_json, save_checkpoint
from oclr_jax.errors import UserError, check_output_dir, run_cli
from oclr_jax.train.state_io import CHECKPOINT_DIR

# trainer.CONFIG_FILE, not imported: the trainer module takes seconds to import (TensorBoard).
TRAIN_CONFIG_FILE = "train_config.json"


def checkpoint_steps(workdir: str) -> list:
    """Steps with a complete checkpoint in `workdir`, ascending (orbax writes a step's folder
    under a temporary name and renames it when complete; those are skipped)."""
    root = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return []
    return sorted(int(name) for name in os.listdir(root)
                  if name.isdigit() and os.path.isdir(os.path.join(root, name, "state")))


def _read_config(workdir: str):
    path = os.path.join(workdir, TRAIN_CONFIG_FILE)
    try:
        with open(path) as f:
            text = f.read()
        json.loads(text)
    except FileNotFoundError:
        raise UserError("not a training workdir (no train_config.json)", f"--workdir {workdir}",
                        "give the --workdir of a `python -m oclr_jax.train` run") from None
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable training config ({e})", path) from None
    return config_from_json(text)


def restore_params(workdir: str, step: int):
    """The params of checkpoint `step` as host numpy arrays."""
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, CHECKPOINT_DIR, str(step), "state")
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            restored = checkpointer.restore(path)  # host arrays, whatever wrote them
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types.
            raise UserError(f"cannot read checkpoint {step} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:300]})", path,
                            "the folder is damaged; pick another --step") from None
    if "params" not in restored:
        raise UserError(f"checkpoint {step} holds no params", path)
    return restored["params"]


def export_step(workdir: str, step: Optional[int], out: str) -> tuple:
    """Writes checkpoint `step` (None: the newest) of `workdir` to `out`.  Returns (step, path)."""
    config = _read_config(workdir)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise UserError("the workdir holds no complete checkpoint yet", f"--workdir {workdir}",
                        "wait for the first `train.checkpoint_every` steps")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UserError(f"no checkpoint of step {step}; the workdir has steps "
                        f"{_describe(steps)}", "--step")
    params = restore_params(workdir, step)
    return step, save_checkpoint(out, params, config, overwrite=True)


def _describe(steps: Sequence[int]) -> str:
    if len(steps) <= 12:
        return ", ".join(str(s) for s in steps)
    return ", ".join(str(s) for s in steps[:5]) + ", ..., " + ", ".join(
        str(s) for s in steps[-5:])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oclr_jax.train.export", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--workdir", required=True, help="the training run's --workdir")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint to export (default: the newest)")
    parser.add_argument("--out", help="model folder to write (new, empty, or an earlier export, "
                                      "which is replaced)")
    parser.add_argument("--list", action="store_true", help="print the checkpoint steps and exit")
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    if not os.path.isdir(workdir):
        raise UserError("no such folder", f"--workdir {args.workdir}")
    if args.list:
        _read_config(workdir)
        print(" ".join(str(s) for s in checkpoint_steps(workdir)))
        return 0
    if not args.out:
        parser.error("--out is required (or --list)")
    out = check_output_dir(args.out, "--out", MODEL_MARKER)
    step, path = export_step(workdir, args.step, out)
    print(f"exported step {step} of {workdir} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
