"""`python -m oclr_jax.port` and the .pth reader: both directions on our checkpoints, the official
training-checkpoint dict, and every error path (with nothing written on failure)."""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_port_parity import random_flax_params  # noqa: E402

from oclr_jax.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from oclr_jax.config.loading import load_config  # noqa: E402
from oclr_jax.config.model import ModelConfig  # noqa: E402
from oclr_jax.port import convert  # noqa: E402
from oclr_jax.port.__main__ import main  # noqa: E402
from oclr_jax.port.torch_io import load_torch_checkpoint_file  # noqa: E402
from oclr_jax.port.torch_reference import TorchOCLR  # noqa: E402

pytestmark = pytest.mark.torch
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(unet_features=4, num_layers=1, num_heads=2, num_query=2, ff_dim=32)


def tiny_checkpoint(workdir):
    """An oclr-jax checkpoint as the trainer exports it (workdir/model), tiny config sizes."""
    config = load_config("configs/tiny.py")
    shape = ModelConfig.from_config(config)
    params = random_flax_params(shape, seed=5)
    save_checkpoint(os.path.join(workdir, "model"), params, config)
    return params, config, shape


def small_torch_model(seed=0):
    torch.manual_seed(seed)
    return TorchOCLR(4, 2, **SMALL)


def test_both_directions_from_the_command_line(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    params, config, shape = tiny_checkpoint(workdir)
    exported = str(tmp_path / "export" / "oclr.pth")
    assert main(["to-torch", workdir, exported]) == 0
    assert f"inferred model: {shape.describe()}" in capsys.readouterr().out

    loaded = torch.load(exported, weights_only=True)
    assert list(loaded) == ["model_state_dict"]  # what the official eval.py --resume_path reads
    reference = TorchOCLR(shape.in_channels, shape.num_queries, unet_features=shape.unet_features,
                          num_layers=shape.num_layers, num_heads=shape.num_heads,
                          num_query=shape.num_queries, ff_dim=shape.ff_dim)
    reference.load_state_dict(loaded["model_state_dict"], strict=True)
    bare = str(tmp_path / "bare.pth")
    assert main(["to-torch", os.path.join(workdir, "model"), bare, "--bare"]) == 0
    reference.load_state_dict(torch.load(bare, weights_only=True), strict=True)

    back_dir = str(tmp_path / "back")
    assert main(["from-torch", exported, back_dir]) == 0
    out = capsys.readouterr().out
    assert f"inferred model: {shape.describe()}" in out and "(state dict)" not in out
    _, back_params, back_config = load_checkpoint(back_dir)
    assert back_config.model.to_dict() == config.model.to_dict()
    assert tuple(back_config.data.gaps) == tuple(config.data.gaps)
    flat, back_flat = convert.flatten_params(params), convert.flatten_params(back_params)
    assert sorted(flat) == sorted(back_flat)
    for name in flat:
        assert np.asarray(back_flat[name]).tobytes() == flat[name].tobytes(), name


def test_official_training_checkpoint_dict(tmp_path):
    model = small_torch_model()
    optimizer = torch.optim.Adam(model.parameters())
    path = str(tmp_path / "ckpt_1000.pth")
    torch.save({"iteration": 1000, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(), "loss": torch.tensor(0.25)}, path)
    state_dict, meta = load_torch_checkpoint_file(path)
    assert meta["format"] == "training checkpoint" and meta["iteration"] == 1000
    assert list(state_dict) == list(model.state_dict())
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(state_dict[name], tensor.numpy())


def test_data_parallel_prefix_and_half_precision(tmp_path):
    model = small_torch_model()
    path = str(tmp_path / "dp.pth")
    torch.save({"module." + k: v.half() for k, v in model.state_dict().items()}, path)
    state_dict, meta = load_torch_checkpoint_file(path)
    assert meta["stripped_prefix"] == "module." and len(meta["cast_to_float32"]) == len(state_dict)
    name = "encoder.encoder1.conv_block.enc1conv1.weight"
    assert state_dict[name].dtype == np.float32
    np.testing.assert_array_equal(state_dict[name], model.state_dict()[name].half().float().numpy())


def test_files_that_are_not_checkpoints(tmp_path):
    with pytest.raises(convert.PortError, match="no such file"):
        load_torch_checkpoint_file(str(tmp_path / "absent.pth"))
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(convert.PortError, match=r"notes\.pth: not a readable PyTorch checkpoint"):
        load_torch_checkpoint_file(str(text))
    other = str(tmp_path / "other.pth")
    torch.save({"epoch": 3, "weights": [1, 2]}, other)
    with pytest.raises(convert.PortError, match=r"other\.pth: not an OCLR checkpoint.*'epoch', 'weights'"):
        load_torch_checkpoint_file(other)


def test_pickled_module_needs_trust(tmp_path):
    model = small_torch_model()
    path = str(tmp_path / "module.pth")
    torch.save(model, path)
    with pytest.raises(convert.PortError, match="--trust-pickle"):
        load_torch_checkpoint_file(path)
    state_dict, meta = load_torch_checkpoint_file(path, trust_pickle=True)
    assert meta["format"] == "pickled module" and list(state_dict) == list(model.state_dict())


def test_bad_state_dict_fails_and_writes_nothing(tmp_path, capsys):
    state_dict = small_torch_model().state_dict()
    del state_dict["classhead.mlp.2.bias"]
    state_dict["decoder_am.upconv1.bias"] = torch.zeros(5)
    state_dict["heatmap.extra"] = torch.zeros(1)
    path = str(tmp_path / "bad.pth")
    torch.save(state_dict, path)
    before = sorted(os.listdir(tmp_path))
    assert main(["from-torch", path, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    for text in ("bad.pth", "missing keys (1)", "classhead.mlp.2.bias", "unexpected keys (1)", "heatmap.extra",
                 "decoder_am.upconv1.bias: expected (4,), found (5,)"):
        assert text in err
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temporary left behind


def test_to_torch_errors_write_nothing(tmp_path, capsys):
    out = str(tmp_path / "out.pth")
    assert main(["to-torch", str(tmp_path / "absent"), out]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["to-torch", str(empty), out]) == 2
    assert "not an oclr-jax checkpoint" in capsys.readouterr().err
    a_file = tmp_path / "params.msgpack"
    a_file.write_bytes(b"\0")
    assert main(["to-torch", str(a_file), out]) == 2
    assert "found a file" in capsys.readouterr().err
    assert not os.path.exists(out) and sorted(os.listdir(tmp_path)) == ["empty", "params.msgpack"]


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, capsys):
    path = str(tmp_path / "small.pth")
    torch.save(small_torch_model().state_dict(), path)
    out_dir = tmp_path / "exists"
    out_dir.mkdir()
    assert main(["from-torch", path, str(out_dir)]) == 2
    assert "already exists" in capsys.readouterr().err and os.listdir(out_dir) == []
    assert main(["from-torch", path, str(out_dir), "--overwrite"]) == 0
    assert "(state dict)" in capsys.readouterr().out
    assert main(["to-torch", str(out_dir), path]) == 2
    assert "already exists" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    bogus = tmp_path / "flow.flo"
    bogus.write_bytes(b"PIEH" + b"\0" * 12)
    result = subprocess.run([sys.executable, "-m", "oclr_jax.port", "from-torch", str(bogus), str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "flow.flo: not a readable PyTorch checkpoint" in result.stderr
    assert not os.path.exists(tmp_path / "o")
