"""`python -m oclr_jax.eval` with real (tiny, random) checkpoints: an oclr-jax checkpoint, an
official-format PyTorch `.pth` through the port, and a checkpoint whose gaps the data lacks."""

import json
import os

import eval_fakes as ef
import jax
import numpy as np
import pytest

from oclr_jax.checkpoint import abstract_params, save_checkpoint
from oclr_jax.config.loading import load_config
from oclr_jax.eval import runner as oclr_eval

pytestmark = pytest.mark.slow
SMALL = dict(unet_features=4, num_layers=1, num_heads=2, ff_dim=32)
SIZE_ARGS = [f"--config.data.resolution=({ef.H},{ef.W})", "--config.eval.window=4"]


def small_config(gaps=(1, -1)):
    config = load_config("configs/tiny.py")
    for key, value in SMALL.items():
        config.model[key] = value
    config.data.gaps = tuple(gaps)
    return config


def write_checkpoint(path, gaps=(1, -1)):
    """Random params of the right shapes (no init compile: eval_shape gives the tree)."""
    config = small_config(gaps)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda leaf: (0.3 * rng.standard_normal(leaf.shape)).astype(np.float32),
        abstract_params(config))
    save_checkpoint(str(path), params, config)


@pytest.fixture(scope="module")
def segtrack(tmp_path_factory):
    root = tmp_path_factory.mktemp("segtrack")
    fg = np.zeros((6, ef.H, ef.W), bool)
    for t in range(6):
        fg[t, 10:30, 10 + 2 * t:40 + 2 * t] = True
    ef.write_binary_dataset(str(root), {"worm": fg})
    return root


def test_flax_checkpoint_end_to_end(segtrack, tmp_path, capsys):
    write_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    code = oclr_eval.main(["--dataset", "segtrackv2", "--data-dir", str(segtrack), "--checkpoint",
                           str(tmp_path / "ckpt"), "--out", str(out), "--sequences", "all",
                           "--save-vis", *SIZE_ARGS])
    assert code == 0, capsys.readouterr().err
    with open(out / "results.json") as f:
        results = json.load(f)
    assert 0.0 <= results["summary"]["J_mean"] <= 1.0 and results["summary"]["frames"] == 6
    assert results["options"]["window"] == 4 and results["options"]["gaps"] == [1, -1]
    assert sorted(os.listdir(out / "masks" / "worm")) == [f"{t:05d}.png" for t in range(6)]
    assert len(os.listdir(out / "vis" / "worm")) == 6


def test_checkpoint_gaps_missing_from_data(segtrack, tmp_path, capsys):
    write_checkpoint(tmp_path / "ckpt4", gaps=(1, -1, 2, -2))
    code = oclr_eval.main(["--dataset", "segtrackv2", "--data-dir", str(segtrack), "--checkpoint",
                           str(tmp_path / "ckpt4"), "--out", str(tmp_path / "o"),
                           "--sequences", "all", *SIZE_ARGS])
    assert code == 2
    err = capsys.readouterr().err
    assert "Flows_gap-2" in err and "(1, -1, 2, -2)" in err


def test_official_torch_checkpoint_matches_torch_model(segtrack, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from oclr_jax.data.benchmarks import Benchmark
    from oclr_jax.data.masks_io import read_label_png
    from oclr_jax.eval.inference import load_window_flow
    from oclr_jax.port.torch_reference import TorchOCLR

    torch.manual_seed(0)
    reference = TorchOCLR(4, 3, num_query=3, **SMALL).eval()
    path = tmp_path / "OCLR.pth"
    torch.save({"model_state_dict": reference.state_dict()}, str(path))
    out = tmp_path / "out"
    code = oclr_eval.main(["--dataset", "segtrackv2", "--data-dir", str(segtrack), "--checkpoint",
                           str(path), "--model-source", "torch", "--out", str(out),
                           "--sequences", "all", *SIZE_ARGS])
    err = capsys.readouterr().err
    assert code == 0, err
    # A state dict has no data settings: the command says which it used.
    assert f"{path} holds no data settings" in err and f"resolution ({ef.H}, {ef.W})" in err
    # The saved (merged) masks equal the PyTorch model's own thresholded output.
    record = Benchmark("segtrackv2", str(segtrack), sequences="all").read_sequence("worm")
    for start in (0, 2):  # windows of 4 frames: 0-3, then 2-5 aligned to the end
        flow = load_window_flow(record, range(start, start + 4), (1, -1), (ef.H, ef.W))
        with torch.no_grad():
            amodal, _ = reference(torch.from_numpy(flow).permute(0, 3, 1, 2)[None])
        expected = (torch.sigmoid(amodal[0]) > 0.5).any(dim=1).numpy()  # (T, H, W)
        for i, t in enumerate(range(start, start + 4)):
            if start == 2 and t < 4:
                continue  # frames 2, 3 are taken from the first window
            saved = read_label_png(str(out / "masks" / "worm" / f"{t:05d}.png")) > 0
            assert np.mean(saved != expected[i]) < 1e-3
