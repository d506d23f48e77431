"""RAFT weights: the table against the model, round trips bit-exact, bad state dicts refused by name."""

import numpy as np
import pytest

from oclr_jax.flow import convert, weights
from oclr_jax.flow.raft import RAFT, init_variables
from oclr_jax.port.convert import PortError, flatten_params


@pytest.fixture(scope="module")
def flax_variables():
    return convert.random_variables(seed=0)  # non-trivial running statistics


@pytest.fixture(scope="module")
def state_dict(flax_variables):
    counters = {r.torch_name: np.int64(100 + i) for i, r in enumerate(convert.conversion_table())
                if r.kind == "counter"}
    for rule in convert.conversion_table():  # the alias counters hold the same value as their original
        if rule.kind == "counter_alias":
            counters[rule.torch_name] = counters[rule.torch_name.replace("downsample.1", "norm3")]
    return convert.flax_to_torch_state_dict(flax_variables, counters)


def test_init_tree_is_the_table(flax_variables):
    import jax

    variables = jax.eval_shape(lambda: init_variables(RAFT(), jax.random.key(0)))
    shapes = lambda tree: {k: tuple(np.shape(v)) for k, v in flatten_params(dict(tree)).items()}
    assert shapes(variables) == shapes(flax_variables)


def test_table_covers_the_model_exactly():
    table = convert.conversion_table()
    assert len(table) == 179  # raft-things.pth
    target = convert.target_variable_shapes()
    mapped = {r.flax_name: r.flax_shape for r in table if r.kind in ("conv", "copy")}
    assert mapped == target
    assert len({r.torch_name for r in table}) == len(table)


def test_round_trip_is_bit_exact(state_dict):
    variables, counters = convert.torch_state_dict_to_flax(state_dict)
    back = convert.flax_to_torch_state_dict(variables, counters)
    assert list(back) == list(state_dict)
    for name, value in state_dict.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        assert back[name].tobytes() == value.tobytes(), name
    assert back["cnet.norm1.num_batches_tracked"].dtype == np.int64


def test_npz_round_trip_without_torch(tmp_path, flax_variables):
    path = str(tmp_path / "raft.npz")
    weights.save_raft_variables(flax_variables, path)
    variables, _ = weights.load_raft_variables(path)
    for name, value in flatten_params(dict(flax_variables)).items():
        assert flatten_params(variables)[name].tobytes() == np.asarray(value).tobytes(), name


@pytest.mark.parametrize("change,culprit", [
    (lambda sd: sd.pop("update_block.gru.convq2.bias"), "missing keys (1):\n    update_block.gru.convq2.bias"),
    (lambda sd: sd.__setitem__("fnet.extra.weight", np.zeros(3, np.float32)),
     "unexpected keys (1):\n    fnet.extra.weight"),
    (lambda sd: sd.__setitem__("cnet.conv2.weight", np.zeros((256, 128, 3, 3), np.float32)),
     "cnet.conv2.weight: expected (256, 128, 1, 1), found (256, 128, 3, 3)"),
    (lambda sd: sd["cnet.layer2.0.downsample.1.running_var"].__iadd__(1.0),
     "cnet.layer2.0.downsample.1.running_var: differs from cnet.layer2.0.norm3.running_var"),
    (lambda sd: sd.__setitem__("cnet.norm1.num_batches_tracked", np.float32(3.0)),
     "cnet.norm1.num_batches_tracked: dtype float32, expected an integer counter"),
    (lambda sd: sd["fnet.conv1.bias"].__setitem__(0, np.nan), "fnet.conv1.bias: 1 NaN/inf values"),
])
def test_bad_state_dict_is_refused_naming_the_key(state_dict, change, culprit):
    broken = {k: np.array(v, copy=True) for k, v in state_dict.items()}
    change(broken)
    with pytest.raises(PortError) as error:
        convert.torch_state_dict_to_flax(broken)
    assert culprit in str(error.value)


def test_oclr_state_dict_is_not_a_raft_checkpoint():
    with pytest.raises(PortError, match="not a RAFT checkpoint"):
        convert.torch_state_dict_to_flax(
            {"encoder.encoder1.conv_block.enc1conv1.weight": np.zeros((32, 4, 3, 3), np.float32)})


def test_export_refuses_a_misshaped_flax_tree(flax_variables):
    params = dict(flax_variables["params"])
    params["update_block"] = {k: v for k, v in params["update_block"].items() if k != "mask_2"}
    with pytest.raises(PortError, match="params/update_block/mask_2/kernel"):
        convert.flax_to_torch_state_dict({"params": params, "batch_stats": flax_variables["batch_stats"]})


@pytest.mark.torch
def test_data_parallel_pth_loads_and_exports_back_bit_exact(tmp_path, state_dict):
    torch = pytest.importorskip("torch")
    from oclr_jax.flow.torch_reference import TorchRAFT

    path = str(tmp_path / "raft-things.pth")
    torch.save({"module." + k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)
    variables, counters = weights.load_raft_variables(path)
    out = str(tmp_path / "exported.pth")
    weights.save_raft_variables(variables, out, counters)
    exported = torch.load(out, weights_only=True)
    assert list(exported) == ["module." + k for k in state_dict]
    for name, value in state_dict.items():
        tensor = exported["module." + name]
        assert tensor.numpy().tobytes() == np.asarray(value).tobytes() and tensor.shape == value.shape, name
    model = TorchRAFT()  # the official module tree loads it strictly (after DataParallel's prefix)
    model.load_state_dict({k[len("module."):]: v for k, v in exported.items()}, strict=True)


@pytest.mark.torch
def test_unreadable_pth_is_refused(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "raft-things.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PortError, match="raft-things.pth: not a readable PyTorch checkpoint"):
        weights.load_raft_variables(str(path))
