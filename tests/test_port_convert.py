"""The PyTorch <-> Flax conversion table and its validation; numpy and JAX only (no torch)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oclr_jax.port import convert
from oclr_jax.port.convert import ModelConfig, PortError

HERE = os.path.dirname(os.path.abspath(__file__))
OTHER = ModelConfig(in_channels=2, unet_features=8, num_queries=2, num_layers=2, num_heads=4, ff_dim=128)


def official_listing():
    """[(name, shape)] of the official OCLR(4, 3), read off the official code."""
    entries = []
    with open(os.path.join(HERE, "data", "official_state_dict.txt")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, shape, dtype, numel = line.rstrip("\n").split("\t")
            shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
            assert dtype == "float32" and int(numel) == int(np.prod(shape))
            entries.append((name, shape))
    return entries


def random_state_dict(shape: ModelConfig, seed=0):
    rng = np.random.default_rng(seed)
    return {r.torch_name: rng.normal(size=r.torch_shape).astype(np.float32)
            for r in convert.conversion_table(shape)}


def test_table_is_the_official_listing():
    table = convert.conversion_table(ModelConfig())
    assert [(r.torch_name, r.torch_shape) for r in table] == official_listing()
    assert sum(int(np.prod(r.torch_shape)) for r in table) == 20_660_932


@pytest.mark.parametrize("shape", [ModelConfig(), OTHER], ids=["official", "other"])
def test_table_matches_initialised_flax_model(shape):
    """Every Flax path and shape in the table is exactly the params tree of the model."""
    from oclr_jax.model import build_model

    model = build_model(shape)
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                                  jnp.zeros((1, 2, 32, 32, shape.in_channels))))
    tree = {"/".join(k.key for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
    assert {r.flax_name: r.flax_shape for r in convert.conversion_table(shape)} == tree


def test_layout_transposes_elementwise():
    """Spot checks written from DESIGN.md §7, element by element."""
    state_dict = random_state_dict(OTHER)
    params, _ = convert.torch_state_dict_to_flax(state_dict, check_target=False)
    conv = state_dict["encoder.encoder2.conv_block.enc2conv1.weight"]  # (O, I, kh, kw)
    kernel = params["encoder"]["encoder2"]["conv1"]["kernel"]  # (kh, kw, I, O)
    assert kernel[2, 0, 5, 7] == conv[7, 5, 2, 0]
    up = state_dict["decoder_am.upconv3.weight"]  # (I, O, 2, 2)
    up_kernel = params["decoder_am"]["upconv3"]["kernel"]  # (2, 2, I, O), no spatial flip
    assert up.shape == (64, 32, 2, 2) and up_kernel.shape == (2, 2, 64, 32)
    assert up_kernel[0, 1, 60, 3] == up[60, 3, 0, 1]
    in_proj = state_dict["transformer_dec.transformer_decoder.layers.1.multihead_attn.in_proj_weight"]
    attn = params["transformer_dec"]["transformer_decoder"]["layers_1"]["multihead_attn"]
    assert attn["in_proj_kernel"][3, 2 * 128 + 9] == in_proj[2 * 128 + 9, 3]  # v row 9, input 3
    heat = state_dict["heatmap.mlp.0.weight"]  # (c, K*G)
    assert params["heatmap"]["mlp_0"]["kernel"][5, 100] == heat[100, 5]
    np.testing.assert_array_equal(params["transformer_dec"]["motion_embed"]["embedding"],
                                  state_dict["transformer_dec.motion_embed.weight"])
    np.testing.assert_array_equal(params["transformer_enc"]["transformer_encoder"]["layers_0"]["norm2"]["scale"],
                                  state_dict["transformer_enc.transformer_encoder.layers.0.norm2.weight"])


def test_up_convolution_kernel_means_torch_conv_transpose():
    """Our up-convolution with the converted kernel equals ConvTranspose2d(k=2, s=2) written
    from its definition: out[o, 2y+dy, 2x+dx] = sum_i x[i, y, x] w[i, o, dy, dx] + b[o]."""
    from oclr_jax.modules.unet import UpConv2x2

    rng = np.random.default_rng(1)
    weight = rng.normal(size=(5, 3, 2, 2)).astype(np.float32)  # torch (I, O, 2, 2)
    bias = rng.normal(size=3).astype(np.float32)
    x = rng.normal(size=(5, 2, 3)).astype(np.float32)  # (I, h, w)
    expected = np.zeros((3, 4, 6), np.float32)
    for y in range(2):
        for xx in range(3):
            for dy in range(2):
                for dx in range(2):
                    expected[:, 2 * y + dy, 2 * xx + dx] = x[:, y, xx] @ weight[:, :, dy, dx] + bias
    kernel = convert.to_flax_layout("conv_transpose", weight)
    out = UpConv2x2(3).apply({"params": {"kernel": kernel, "bias": bias}}, x.transpose(1, 2, 0)[None])
    np.testing.assert_allclose(np.asarray(out[0]).transpose(2, 0, 1), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [ModelConfig(), OTHER], ids=["official", "other"])
def test_inference_and_bit_exact_round_trip(shape):
    state_dict = random_state_dict(shape)
    params, inferred = convert.torch_state_dict_to_flax(state_dict)
    assert inferred == shape
    assert convert.infer_flax_shape(params) == shape
    back = convert.flax_to_torch_state_dict({"params": params})  # the wrapped form is accepted too
    assert list(back) == list(state_dict)
    for name, value in state_dict.items():
        assert back[name].dtype == np.float32 and back[name].tobytes() == value.tobytes(), name


def test_heads_come_from_the_attention_map_width():
    shape = ModelConfig(unet_features=4, num_queries=5, num_layers=1, num_heads=2, ff_dim=16)
    assert convert.infer_torch_shape(random_state_dict(shape)) == shape


def test_missing_unexpected_and_mismatched_keys_are_all_listed():
    state_dict = random_state_dict(OTHER)
    del state_dict["decoder_am.upconv2.bias"]
    del state_dict["transformer_enc.transformer_encoder.layers.1.norm1.weight"]
    state_dict["decoder_am.extra.weight"] = np.zeros(3, np.float32)
    state_dict["classhead.mlp.0.weight"] = np.zeros((128, 127), np.float32)
    with pytest.raises(PortError) as info:
        convert.torch_state_dict_to_flax(state_dict)
    error = info.value
    assert error.missing == ["transformer_enc.transformer_encoder.layers.1.norm1.weight", "decoder_am.upconv2.bias"]
    assert error.unexpected == ["decoder_am.extra.weight"]
    assert error.mismatched == [("classhead.mlp.0.weight", (128, 128), (128, 127))]
    message = str(error)
    for text in ("missing keys (2)", "decoder_am.upconv2.bias", "unexpected keys (1)", "decoder_am.extra.weight",
                 "classhead.mlp.0.weight: expected (128, 128), found (128, 127)", "unet_features=8"):
        assert text in message


def test_encoder_and_decoder_depths_must_agree():
    state_dict = random_state_dict(OTHER)
    extra = random_state_dict(ModelConfig(**{**OTHER.__dict__, "num_layers": 3}))
    state_dict.update({k: v for k, v in extra.items() if "transformer_decoder.layers.2." in k})
    with pytest.raises(PortError) as info:
        convert.torch_state_dict_to_flax(state_dict)
    # Depth is read as 3 (the deeper stack), so the encoder's third layer is reported missing.
    assert len(info.value.missing) == 12 and all("transformer_encoder.layers.2." in k for k in info.value.missing)


def test_out_channels_must_equal_queries():
    state_dict = random_state_dict(OTHER)
    state_dict["decoder_am.conv.weight"] = np.zeros((3, 8, 1, 1), np.float32)
    state_dict["decoder_am.conv.bias"] = np.zeros(3, np.float32)
    with pytest.raises(PortError) as info:
        convert.torch_state_dict_to_flax(state_dict)
    assert ("decoder_am.conv.weight", (2, 8, 1, 1), (3, 8, 1, 1)) in info.value.mismatched


def test_non_finite_and_non_float_tensors_are_rejected():
    state_dict = random_state_dict(OTHER)
    state_dict["heatmap.mlp.0.bias"][3] = np.nan
    state_dict["classhead.mlp.2.bias"] = np.array([1], np.int64)
    with pytest.raises(PortError) as info:
        convert.torch_state_dict_to_flax(state_dict)
    assert ("heatmap.mlp.0.bias", "1 NaN/inf values") in info.value.invalid
    assert info.value.invalid[1][0] == "classhead.mlp.2.bias" and "int64" in info.value.invalid[1][1]


def test_uninferable_heads_are_reported():
    state_dict = random_state_dict(OTHER)
    state_dict["heatmap.mlp.0.weight"] = np.zeros((128, 7), np.float32)  # 7 is not K * G for K=2
    with pytest.raises(PortError, match="not a multiple of num_queries=2"):
        convert.torch_state_dict_to_flax(state_dict)


def test_flax_side_errors():
    params, _ = convert.torch_state_dict_to_flax(random_state_dict(OTHER), check_target=False)
    del params["classhead"]["mlp_2"]
    params["decoder_am"]["upconv1"]["kernel"] = np.zeros((2, 2, 16, 9), np.float32)
    with pytest.raises(PortError) as info:
        convert.flax_to_torch_state_dict(params)
    assert info.value.missing == ["classhead/mlp_2/kernel", "classhead/mlp_2/bias"]
    assert info.value.mismatched == [("decoder_am/upconv1/kernel", (2, 2, 16, 8), (2, 2, 16, 9))]


def test_bfloat16_params_are_exported_as_float32():
    params, _ = convert.torch_state_dict_to_flax(random_state_dict(OTHER), check_target=False)
    params_bf16 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
    state_dict = convert.flax_to_torch_state_dict(params_bf16)
    weight = state_dict["encoder.encoder1.conv_block.enc1conv1.weight"]
    assert weight.dtype == np.float32
    expected = np.asarray(params_bf16["encoder"]["encoder1"]["conv1"]["kernel"], np.float32)
    np.testing.assert_array_equal(weight, expected.transpose(3, 2, 0, 1))


def test_package_import_pulls_in_neither_torch_nor_jax():
    code = ("import sys, oclr_jax.port, oclr_jax.port.convert, oclr_jax.port.torch_io, oclr_jax.port.commands;"
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(HERE))
    assert out.stdout.strip() == "[]"
