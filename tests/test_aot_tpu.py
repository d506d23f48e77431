"""tools/aot_tpu.py: the real train step compiled for a TPU topology, compile-only (libtpu)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "aot_tpu.py")
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason='libtpu not installed (optional extra: pip install "jax[tpu]==0.10.2")')


def _run(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("JAX_PLATFORMS", None)  # the tool picks: TPU topologies need the TPU plugin
    return subprocess.run([sys.executable, TOOL, *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, check=False)


def test_bad_arguments_exit_2():
    result = _run("--per-chip-batch", "0", "--platform", "cpu")
    assert result.returncode == 2 and "--per-chip-batch must be >= 1" in result.stderr
    result = _run("--platform", "cpu", "--set", "model.no_such_field=1")
    assert result.returncode == 2 and "error: bad --set override" in result.stderr


@needs_libtpu
def test_unknown_topology_is_a_clear_error():
    result = _run("--topology", "v99:1x1", "--tiny")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot make TPU topology 'v99:1x1'" in result.stderr


@needs_libtpu
@pytest.mark.slow
def test_tiny_train_step_compiles_for_v5e_2x2():
    result = _run("--tiny", "--topology", "v5e:2x2", "--per-chip-batch", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    record = lines[0]
    assert record["topology"] == "v5e:2x2" and record["chips"] == 4
    assert record["step"] == "train" and record["frames"] == 8
    assert record["fits"] is True
    # the donated state is aliased, params+Adam are replicated: arguments ~ 3 x params
    assert 0 < record["argument_gb"] < record["hbm_capacity_gb"]
    assert 0 < record["temp_gb"] < 1.0 and record["hbm_fraction"] < 0.1
    assert record["tflop_per_chip"] > 0 and record["gb_accessed_per_chip"] > 0


def test_devices_per_chip_and_capacity_per_device():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import aot_tpu

    assert aot_tpu.topology_chips("v5e:16x16") == 256 and aot_tpu.topology_chips("v4:2x2x2") == 8
    assert aot_tpu.devices_per_chip("v5e:2x2", 4) == 1
    # compile-only v4 devices are TensorCores: 16 for 8 chips, each with half a chip's 32 GiB
    assert aot_tpu.devices_per_chip("v4:2x2x2", 16) == 2
    assert aot_tpu.hbm_capacity("v4:2x2x2", 2) == 16 * 2**30
    assert aot_tpu.hbm_capacity("v5e:2x2") == 16 * 2**30
    assert aot_tpu.hbm_capacity("v99:1x1") is None and aot_tpu.devices_per_chip("cpu", 8) == 1
