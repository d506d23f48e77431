"""The benchmark tools as a user runs them: one JSON line, per-process interleaved rounds, the
official-model baseline and its check, and a clear error for a wrong --official-repo."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
sys.path.insert(0, TOOLS)

import bench_common  # noqa: E402

# A stand-in for a checkout of the official code in its layout (models/oclr.py with
# `OCLR(in_channels, out_channels, num_query=...)`): our reference network, which equals it.
FAKE_OFFICIAL_OCLR = """
from oclr_jax.port.torch_reference import TorchOCLR


class OCLR(TorchOCLR):
    def __init__(self, in_channels, out_channels, num_query=3):
        super().__init__(in_channels, out_channels, num_query=num_query)
"""


def _run(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's shell
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600, **kwargs)


def test_merge_rounds_takes_medians_and_largest_memory():
    rounds = [{"t": 3.0, "m": 10.0}, {"t": 1.0, "m": 30.0}, {"t": 2.0, "m": 20.0},
              {"error": "boom"}]
    merged = bench_common.merge_rounds(rounds, ["t"], ["m"])
    assert merged["t"] == 2.0 and merged["t_rounds"] == [3.0, 1.0, 2.0]
    assert merged["m"] == 30.0
    assert bench_common.merge_rounds([{"error": "x"}], ["t"], ["m"]) == {"error": "x"}


def test_timed_with_memory_sees_an_allocation():
    import numpy as np

    def allocate():
        return np.ones(64 * 2**20 // 8).sum()  # 64 MiB, touched

    timing = bench_common.timed_with_memory(allocate, 2)
    assert timing["seconds"] > 0
    assert timing["extra_mb"] > 40


@pytest.mark.torch
@pytest.mark.slow
def test_bench_model_rounds_against_the_official_class(tmp_path):
    pytest.importorskip("torch")
    models = tmp_path / "official" / "models"
    models.mkdir(parents=True)
    (models / "__init__.py").write_text("")
    (models / "oclr.py").write_text(FAKE_OFFICIAL_OCLR)
    proc = _run([os.path.join(TOOLS, "bench_model.py"), "--sizes", "1x2x16x32", "--dtypes",
                 "float32", "--repeats", "1", "--rounds", "2", "--forward-only",
                 "--official-repo", str(tmp_path / "official")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    (run,) = json.loads(lines[0])["runs"]
    assert run["baseline"] == "official"
    assert run["official_check"]["passed"] and run["official_check"]["max_abs_diff"] <= 1e-4
    assert len(run["forward_s_rounds"]) == 2 and len(run["torch_forward_s_rounds"]) == 2
    assert run["forward_time_ratio_vs_torch"] == pytest.approx(
        run["forward_s"] / run["torch_forward_s"], abs=2e-3)
    assert run["forward_peak_rss_mb"] > 0 and run["torch_forward_peak_rss_mb"] > 0
    assert "forward_backward_s" not in run


def test_bench_model_rejects_a_folder_that_is_not_the_official_code(tmp_path):
    proc = _run([os.path.join(TOOLS, "bench_model.py"), "--sizes", "1x2x16x32",
                 "--official-repo", str(tmp_path)])
    assert proc.returncode == 2
    assert "no models/oclr.py" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_model_rejects_a_malformed_size():
    proc = _run([os.path.join(TOOLS, "bench_model.py"), "--sizes", "2x8x64"])
    assert proc.returncode == 2
    assert "BxTxHxW" in proc.stderr and "Traceback" not in proc.stderr
