"""`python -m oclr_jax.port` given hostile input: every mistake is exit 2 with the culprit named
and nothing written; `--overwrite` never replaces something the port did not write."""

import json
import os
import shutil

import hostile
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

MODULE = "oclr_jax.port"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from test_eval_checkpoints import write_checkpoint

    path = tmp_path_factory.mktemp("port") / "ckpt"
    write_checkpoint(path)
    return path


def test_unreadable_pth_as_a_user_runs_it(tmp_path):
    pth = tmp_path / "OCLR.pth"
    pth.write_bytes(os.urandom(400))
    result = hostile.run(MODULE, "from-torch", pth, tmp_path / "out")
    hostile.assert_user_error(result, "OCLR.pth", "not a readable PyTorch checkpoint")
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("kind", ["foreign folder", "file"])
def test_overwrite_never_replaces_what_the_port_did_not_write(tmp_path, checkpoint, kind):
    import torch

    from oclr_jax.port.torch_reference import TorchOCLR

    pth = tmp_path / "model.pth"
    torch.save(TorchOCLR(in_channels=4, out_channels=3, unet_features=4, num_layers=1,
                         num_heads=2, num_query=3, ff_dim=32).state_dict(), pth)
    target = tmp_path / "target"
    if kind == "foreign folder":
        target.mkdir()
        (target / "thesis.tex").write_text("mine")
    else:
        target.write_text("mine")
    before = hostile.snapshot(str(tmp_path))
    result = hostile.call(MODULE, "from-torch", pth, target, "--overwrite")
    hostile.assert_user_error(result, str(target))
    assert hostile.snapshot(str(tmp_path)) == before


def test_to_torch_over_a_folder_is_refused(tmp_path, checkpoint):
    target = tmp_path / "exports"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = hostile.call(MODULE, "to-torch", checkpoint, target, "--overwrite")
    hostile.assert_user_error(result, str(target), "only a file")
    assert (target / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("kind,culprit", [("bad json", "config.json"),
                                          ("contradicts params", "expected"),
                                          ("missing", "does not exist")])
def test_to_torch_of_a_broken_checkpoint_is_named(tmp_path, checkpoint, kind, culprit):
    source = tmp_path / "ckpt"
    if kind != "missing":
        shutil.copytree(checkpoint, source)
    if kind == "bad json":
        (source / "config.json").write_text("{")
    elif kind == "contradicts params":
        raw = json.loads((source / "config.json").read_text())
        raw["model"]["unet_features"] *= 2
        (source / "config.json").write_text(json.dumps(raw))
    result = hostile.call(MODULE, "to-torch", source, tmp_path / "out.pth")
    hostile.assert_user_error(result, culprit)
    assert not os.path.exists(tmp_path / "out.pth")
