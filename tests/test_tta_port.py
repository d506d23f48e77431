"""tta/dino_port.py: DINO .pth <-> Flax, nested checkpoints and clear errors."""

import argparse
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from torch_vit_reference import ReferenceViT, randomize_  # noqa: E402

from oclr_jax.tta import dino_port  # noqa: E402
from oclr_jax.tta.dino_port import DinoCheckpointError  # noqa: E402
from oclr_jax.tta.vit import VisionTransformer, init_vit_params  # noqa: E402

pytestmark = pytest.mark.torch


def _model(**overrides):
    kwargs = dict(patch_size=8, embed_dim=48, depth=3, num_heads=3, pretrain_grid=4)
    kwargs.update(overrides)
    return VisionTransformer(**kwargs)


def _reference_state_dict(seed=0):
    return randomize_(ReferenceViT(), seed).state_dict()


def test_names_follow_dino():
    assert dino_port.torch_name(("blocks_11", "attn", "qkv", "kernel")) == \
        "blocks.11.attn.qkv.weight"
    assert dino_port.torch_name(("patch_embed", "proj", "kernel")) == "patch_embed.proj.weight"
    assert dino_port.torch_name(("norm", "scale")) == "norm.weight"
    assert dino_port.torch_name(("pos_embed",)) == "pos_embed"


def test_round_trip_is_exact():
    state_dict = _reference_state_dict()
    params = dino_port.state_dict_to_flax(state_dict, _model())
    back = dino_port.flax_to_state_dict(params)
    assert sorted(back) == sorted(state_dict)
    for name, tensor in state_dict.items():
        np.testing.assert_array_equal(back[name], tensor.numpy(), err_msg=name)


def test_saved_pth_loads_strictly_into_pytorch_and_gives_the_same_features(tmp_path):
    model = _model()
    params = init_vit_params(model, seed=7)
    path = os.path.join(tmp_path, "sub", "vit.pth")
    dino_port.save_dino_state_dict(path, params)
    assert os.listdir(os.path.dirname(path)) == ["vit.pth"]  # no temp file left behind
    reference = ReferenceViT()
    reference.load_state_dict(torch.load(path, weights_only=True), strict=True)
    images = np.random.default_rng(0).normal(size=(1, 40, 48, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference.eval().features(torch.from_numpy(images).permute(0, 3, 1, 2))
    ours = jax.jit(model.apply)({"params": params}, jnp.asarray(images))
    np.testing.assert_allclose(np.asarray(ours).reshape(expected.shape), expected.numpy(),
                               atol=1e-4)


def test_nested_training_checkpoint_takes_the_teacher(tmp_path):
    teacher, student = _reference_state_dict(0), _reference_state_dict(1)
    checkpoint = {
        "teacher": {f"module.backbone.{k}": v for k, v in teacher.items()},
        "student": {f"module.backbone.{k}": v for k, v in student.items()},
        "epoch": 100,
    }
    checkpoint["teacher"]["module.head.last_layer.weight_g"] = torch.ones(8, 1)  # DINO head
    path = str(tmp_path / "checkpoint.pth")
    torch.save(checkpoint, path)
    params = dino_port.load_dino_params(path, _model())
    np.testing.assert_array_equal(np.asarray(params["cls_token"]), teacher["cls_token"].numpy())
    student_params = dino_port.load_dino_params(path, _model(), checkpoint_key="student")
    np.testing.assert_array_equal(np.asarray(student_params["norm"]["bias"]),
                                  student["norm.bias"].numpy())


def test_pickled_checkpoint_needs_allow_pickle(tmp_path):
    path = str(tmp_path / "full.pth")
    torch.save({"args": argparse.Namespace(arch="vit_small"),
                "teacher": _reference_state_dict()}, path)
    with pytest.raises(DinoCheckpointError, match="allow_pickle=True"):
        dino_port.load_dino_params(path, _model())
    params = dino_port.load_dino_params(path, _model(), allow_pickle=True)
    assert params["pos_embed"].shape == (1, 17, 48)


def test_mismatches_are_all_listed():
    state_dict = dict(_reference_state_dict())
    del state_dict["blocks.2.mlp.fc1.weight"]
    state_dict["blocks.3.norm1.weight"] = torch.ones(48)
    state_dict["blocks.0.attn.qkv.weight"] = torch.ones(48, 48)
    state_dict["norm.bias"] = torch.full((48,), float("nan"))
    with pytest.raises(DinoCheckpointError) as info:
        dino_port.state_dict_to_flax(state_dict, _model(), source="my.pth")
    error = info.value
    assert error.missing == ["blocks.2.mlp.fc1.weight"]
    assert error.unexpected == ["blocks.3.norm1.weight"]
    assert error.mismatched == [("blocks.0.attn.qkv.weight", (144, 48), (48, 48))]
    assert [name for name, _ in error.invalid] == ["norm.bias"]
    message = str(error)
    assert message.startswith("my.pth: DINO checkpoint does not match the ViT")
    for text in ("missing (1)", "unexpected (1)", "shape mismatch", "invalid (1)"):
        assert text in message


def test_pos_embed_grid_mismatch_gives_a_hint():
    state_dict = _reference_state_dict()  # grid 4
    with pytest.raises(DinoCheckpointError, match="pretrain_image_size") as info:
        dino_port.state_dict_to_flax(state_dict, _model(pretrain_grid=28))
    assert info.value.mismatched == [("pos_embed", (1, 785, 48), (1, 17, 48))]


def test_unreadable_files(tmp_path):
    with pytest.raises(DinoCheckpointError, match="nowhere.pth: DINO checkpoint not found"):
        dino_port.load_dino_params(str(tmp_path / "nowhere.pth"), _model())
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DinoCheckpointError, match="corrupt.pth: cannot read"):
        dino_port.load_dino_params(str(corrupt), _model())
    with pytest.raises(DinoCheckpointError, match="expected a state_dict"):
        dino_port.unwrap_state_dict([1, 2, 3])
