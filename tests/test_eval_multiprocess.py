"""`python -m oclr_jax.eval` over two local JAX processes: each evaluates its share of the
sequences, process 0 writes the merged results, identical to a one-process run."""

import json
import os
import socket
import subprocess
import sys

import eval_fakes as ef
import jax
import numpy as np
import pytest

from oclr_jax.checkpoint import abstract_params, save_checkpoint
from oclr_jax.config.loading import load_config
from oclr_jax.eval.runner import process_share

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE_ARGS = [f"--config.data.resolution=({ef.H},{ef.W})", "--config.eval.window=4"]


def test_process_share_covers_every_sequence_once():
    names = [f"s{i}" for i in range(7)]
    shares = [process_share(names, i, 3) for i in range(3)]
    assert shares == [["s0", "s3", "s6"], ["s1", "s4"], ["s2", "s5"]]
    assert sorted(name for share in shares for name in share) == names
    assert process_share(names, 0, 1) == names
    assert process_share(names[:1], 1, 2) == []  # more processes than sequences


def _checkpoint(path):
    config = load_config(os.path.join(REPO, "configs", "tiny.py"))
    for key, value in {"unet_features": 4, "num_layers": 1, "num_heads": 2, "ff_dim": 32}.items():
        config.model[key] = value
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda leaf: (0.3 * rng.standard_normal(leaf.shape)).astype(np.float32),
        abstract_params(config))
    save_checkpoint(str(path), params, config)


def _eval_command(data, ckpt, out):
    return [sys.executable, "-m", "oclr_jax.eval", "--dataset", "segtrackv2", "--data-dir",
            str(data), "--checkpoint", str(ckpt), "--out", str(out), "--sequences", "all",
            *SIZE_ARGS]


@pytest.mark.slow
def test_two_processes_give_the_one_process_results(tmp_path):
    data = tmp_path / "segtrack"
    sequences = {}
    for s, name in enumerate(["alpha", "bravo", "charlie"]):  # shares of 2 and 1 sequences
        fg = np.zeros((5 + s, ef.H, ef.W), bool)
        for t in range(fg.shape[0]):
            fg[t, 8 + s:28, 10 + 2 * t:36 + 2 * t + s] = True
        sequences[name] = fg
    ef.write_binary_dataset(str(data), sequences)
    _checkpoint(tmp_path / "ckpt")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)  # one CPU device per process

    single = subprocess.run(_eval_command(data, tmp_path / "ckpt", tmp_path / "one"), env=env,
                            capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert single.returncode == 0, single.stderr[-3000:]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "two"
    procs = [subprocess.Popen(
        _eval_command(data, tmp_path / "ckpt", out) + [
            "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
            "--process_id", str(i)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for i in (0, 1)]
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    assert "[0/2]" in results[0][1] and "[1/2]" in results[1][1]  # each its own share

    with open(tmp_path / "one" / "results.json") as f:
        one = json.load(f)
    with open(out / "results.json") as f:
        two = json.load(f)
    assert two["sequences"] == one["sequences"] and two["summary"] == one["summary"]
    assert [row["sequence"] for row in two["sequences"]] == ["alpha", "bravo", "charlie"]
    # every sequence's masks were written once, by the process that evaluated it
    for name in sequences:
        assert sorted(os.listdir(out / "masks" / name)) == sorted(
            os.listdir(tmp_path / "one" / "masks" / name))
    # both processes print the merged table
    assert results[0][0].splitlines()[-2] == results[1][0].splitlines()[-2]
