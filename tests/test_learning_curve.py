"""tools/learning_curve.py as a user runs it on a training workdir and a held-out folder."""

import csv
import json
import os
import subprocess
import sys

import jax
import pytest

from oclr_jax.train import trainer as train
from tests.train_fakes import FAST_COMPILE, moving_squares_batches, small_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=900)


@pytest.mark.slow
def test_learning_curve_rows_equal_direct_evaluations_and_resume(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(small_config("train.num_steps=2", "train.checkpoint_every=1"),
                             workdir, devices=jax.devices()[:1],
                             train_batches=moving_squares_batches, compiler_options=FAST_COMPILE)
    heldout = str(tmp_path / "heldout")
    made = _run(["-m", "oclr_jax.data.synth", "generate", "--split", "syn_val", "--seed", "7",
                 "--num-sequences", "3", "--resolution", "32x32", "--frames", "8", "--out",
                 heldout])
    assert made.returncode == 0, made.stderr[-2000:]
    tool = os.path.join(REPO, "tools", "learning_curve.py")
    proc = _run([tool, "--workdir", workdir, "--data-dir", heldout])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["added"] == 2
    with open(os.path.join(workdir, "curve", "curve.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["cpu_hours"]) > 0 for r in rows)
    assert not os.path.exists(os.path.join(workdir, "curve", "models", "2"))  # not kept
    # The last row equals an evaluation of the model the trainer exported at the end (step 2).
    direct = _run(["-m", "oclr_jax.eval", "--dataset", "synval", "--data-dir", heldout,
                   "--sequences", "all", "--checkpoint", os.path.join(workdir, "model"),
                   "--out", str(tmp_path / "direct")])
    assert direct.returncode == 0, direct.stderr[-2000:]
    with open(tmp_path / "direct" / "results.json") as f:
        summary = json.load(f)["summary"]
    for key in ("J_modal", "J_amodal", "J_modal_1obj", "order_logit_std"):
        assert float(rows[-1][key]) == pytest.approx(summary[key], abs=1e-4)
    # A rerun adds nothing; a bad folder is a usage error.
    again = _run([tool, "--workdir", workdir, "--data-dir", heldout])
    assert json.loads(again.stdout.strip().splitlines()[-1])["added"] == 0
    bad = _run([tool, "--workdir", workdir, "--data-dir", str(tmp_path / "missing")])
    assert bad.returncode == 2 and "--data-dir" in bad.stderr and "Traceback" not in bad.stderr
