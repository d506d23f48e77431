"""The local two-process launcher: two JAX processes over 127.0.0.1 train, stop, resume, and
end with the same params (each logs the sha256 of its own replica)."""

import os
import re
import subprocess
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = f"""
from oclr_jax.config.loading import load_config


def get_config():
    config = load_config({os.path.join(REPO, "configs", "tiny.py")!r})
    config.data.source = "synthetic_inline"
    config.data.num_frames = 2
    config.data.resolution = (32, 32)
    config.model.num_layers = 1
    config.train.num_steps = 3
    config.train.batch_size = 2
    config.train.log_every = 1
    config.train.eval_every = 3
    config.train.eval_num_sequences = 3
    config.train.checkpoint_every = 100
    return config
"""


def _launch(workdir, config_path, *extra, cache_dir):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    result = subprocess.run(
        [os.path.join(REPO, "launch", "local_two_process.sh"), workdir, config_path,
         "--xla_option=xla_backend_optimization_level=1", *extra],
        env=env, capture_output=True, text=True, timeout=900)
    logs = {i: open(os.path.join(f"{workdir}.logs", f"process_{i}.log")).read() for i in (0, 1)}
    assert result.returncode == 0, result.stderr + logs[0][-3000:] + logs[1][-3000:]
    return logs


def _fingerprints(log):
    return re.findall(r"process \d/2: step (\d+), params sha256 ([0-9a-f]{64})", log)


@pytest.mark.slow
def test_two_processes_agree_and_resume(tmp_path):
    config_path = tmp_path / "two_process_config.py"
    config_path.write_text(textwrap.dedent(CONFIG))
    workdir, cache = str(tmp_path / "run"), str(tmp_path / "jax_cache")

    logs = _launch(workdir, str(config_path), "--stop_at_step=2", cache_dir=cache)
    first = [_fingerprints(logs[i]) for i in (0, 1)]
    assert first[0] == first[1] and first[0][0][0] == "2"
    assert "2 devices (2 processes)" in logs[0]
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]
    assert not os.path.exists(os.path.join(workdir, "model"))

    logs = _launch(workdir, str(config_path), cache_dir=cache)  # resumes at 2, trains to 3
    final = [_fingerprints(logs[i]) for i in (0, 1)]
    assert final[0] == final[1] and final[0][0][0] == "3"
    assert final[0][0][1] != first[0][0][1]
    assert "training steps 2 -> 3" in logs[1]
    assert "Syn-Val" in logs[0] and "Syn-Val" in logs[1]

    from oclr_jax.checkpoint import load_checkpoint

    _, params, config = load_checkpoint(workdir)  # the exported model/ folder
    assert config.model.num_layers == 1
    assert "encoder" in params
