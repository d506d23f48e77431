"""Learning curve of a training run on a fixed held-out Syn-Val set; resumable.

For every checkpoint step of `--workdir` (every `--every` steps) not yet in `OUT/curve.csv`,
exports the step (as `python -m oclr_jax.train.export` does), evaluates it with
`python -m oclr_jax.eval --dataset synval --sequences all` on `--data-dir`, and adds one row:
step, the run's CPU-hours at that checkpoint (recorded by the trainer), modal and amodal J,
J on sequences with 1, 2 and 3 objects, order accuracy over overlapping pairs and the spread
of the order logits.  Run it again while training goes on to add the new checkpoints; it can run
beside the trainer (it only reads the workdir).  Prints the table and ONE JSON line.

    python -m oclr_jax.data.synth generate --split syn_val --seed 7 --num-sequences 192 \\
        --resolution 64x112 --frames 8 --out heldout
    python tools/learning_curve.py --workdir RUN --data-dir heldout --every 500
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

COLUMNS = ("step", "cpu_hours", "J_modal", "J_amodal", "J_modal_1obj", "J_modal_2obj",
           "J_modal_3obj", "order_accuracy", "order_pairs", "order_logit_std")


def read_curve(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_curve(path: str, rows: list) -> None:
    from oclr_jax.atomic import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for row in sorted(rows, key=lambda r: int(r["step"])):
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def _run(args: list) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"error: `python -m {' '.join(args)}` failed (exit {proc.returncode}):\n"
                         f"{proc.stderr.strip()[-1500:]}")


def evaluate_step(workdir: str, step: int, data_dir: str, out: str, keep_models: bool) -> dict:
    from oclr_jax.train import export
    from oclr_jax.train.state_io import read_meta

    model_dir = os.path.join(out, "models", str(step))
    eval_dir = os.path.join(out, "evals", str(step))
    export.export_step(workdir, step, model_dir)
    _run(["oclr_jax.eval", "--dataset", "synval", "--data-dir", data_dir, "--sequences", "all",
          "--checkpoint", model_dir, "--out", eval_dir])
    with open(os.path.join(eval_dir, "results.json")) as f:
        summary = json.load(f)["summary"]
    if not keep_models:
        shutil.rmtree(model_dir)
    cpu = read_meta(workdir, step).get("cpu_seconds")
    row = {"step": step, "cpu_hours": "" if cpu is None else round(cpu / 3600.0, 4)}
    for key in COLUMNS[2:]:
        value = summary.get(key)
        row[key] = "" if value is None else (value if key == "order_pairs" else round(value, 4))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--workdir", required=True, help="the training run's --workdir")
    parser.add_argument("--data-dir", required=True,
                        help="held-out Syn-Val folder (python -m oclr_jax.data.synth generate)")
    parser.add_argument("--out", help="where curve.csv and the evaluations go "
                                      "(default: WORKDIR/curve)")
    parser.add_argument("--every", type=int, default=1,
                        help="only steps that are multiples of this (default: every checkpoint)")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep each exported model folder (OUT/models/STEP)")
    args = parser.parse_args(argv)
    from oclr_jax.train import export

    if args.every < 1:
        parser.error("--every must be >= 1")
    for flag, path in (("--workdir", args.workdir), ("--data-dir", args.data_dir)):
        if not os.path.isdir(path):
            parser.error(f"{flag} {path}: no such folder")
    workdir = os.path.abspath(args.workdir)
    out = os.path.abspath(args.out or os.path.join(workdir, "curve"))
    os.makedirs(out, exist_ok=True)
    curve_path = os.path.join(out, "curve.csv")
    rows = read_curve(curve_path)
    done = {int(r["step"]) for r in rows}
    steps = [s for s in export.checkpoint_steps(workdir) if s % args.every == 0 and s not in done]
    for step in steps:
        rows.append(evaluate_step(workdir, step, os.path.abspath(args.data_dir), out,
                                  args.keep_models))
        write_curve(curve_path, rows)  # after every step: an interrupted run keeps its rows
        print("\t".join(str(rows[-1][k]) for k in COLUMNS), flush=True)
    print(json.dumps({"curve": curve_path, "rows": len(rows), "added": len(steps)}))
    return 0


if __name__ == "__main__":
    from oclr_jax.errors import run_cli

    sys.exit(run_cli(main))
