"""A non-editable install, run from another folder, needs nothing from the repository: it loads
a `.pth` made here, evaluates a benchmark with it and runs the demo."""

import json
import os
import shutil
import subprocess
import sys

import eval_fakes as ef
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.slow, pytest.mark.torch]


def _install(tmp_path) -> str:
    """`pip install --no-deps --target` of a copy of the package sources (the checkout itself
    stays clean of build/ and *.egg-info)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    shutil.copytree(os.path.join(REPO, "oclr_jax"), source / "oclr_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = str(tmp_path / "site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", target, str(source)],
                   check=True, capture_output=True, text=True)
    return target


def _run(args, env, cwd):
    result = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_installed_package_loads_a_pth_evaluates_and_runs_the_demo(tmp_path):
    torch = pytest.importorskip("torch")
    target = _install(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=target, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    found = _run(["-c", "import oclr_jax; print(oclr_jax.__file__)"], env, elsewhere)
    assert found.stdout.strip().startswith(target)

    # A tiny official-format .pth: our PyTorch reference with random weights.
    from oclr_jax.port.torch_reference import TorchOCLR

    torch.manual_seed(0)
    reference = TorchOCLR(4, 3, unet_features=4, num_layers=1, num_heads=2, ff_dim=32)
    pth = str(tmp_path / "tiny.pth")
    torch.save({"model_state_dict": reference.state_dict()}, pth)

    data = tmp_path / "segtrack"
    fg = np.zeros((6, ef.H, ef.W), bool)
    for t in range(6):
        fg[t, 10:30, 10 + 2 * t:40 + 2 * t] = True
    ef.write_binary_dataset(str(data), {"worm": fg})
    out = tmp_path / "eval_out"
    _run(["-m", "oclr_jax.eval", "--dataset", "segtrackv2", "--data-dir", str(data),
          "--checkpoint", pth, "--out", str(out), "--sequences", "all",
          f"--config.data.resolution=({ef.H},{ef.W})", "--config.eval.window=4"], env, elsewhere)
    with open(out / "results.json") as f:
        summary = json.load(f)["summary"]
    assert summary["frames"] == 6 and 0.0 <= summary["J_mean"] <= 1.0

    demo = _run(["-m", "oclr_jax.demo", "--checkpoint", pth, "--out", str(tmp_path / "demo"),
                 "--frames", "4"], env, elsewhere)
    assert os.path.isfile(tmp_path / "demo" / "index.html"), demo.stdout
    assert not os.path.exists(elsewhere / "eval_results")  # nothing written beside the cwd
