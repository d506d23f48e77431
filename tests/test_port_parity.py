"""TorchOCLR (our PyTorch reference) against DESIGN.md, and against the Flax model through the port."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_port_convert import official_listing  # noqa: E402

from oclr_jax.config.model import ModelConfig  # noqa: E402
from oclr_jax.model import build_model  # noqa: E402
from oclr_jax.port import convert  # noqa: E402
from oclr_jax.port.torch_reference import AttnMap, MultiHeadAttention, Norm, TorchOCLR  # noqa: E402

pytestmark = pytest.mark.torch
ATOL = 1e-4


def reference_model(in_channels=4, unet_features=32, num_queries=3, num_layers=3, num_heads=8,
                    ff_dim=512, seed=0):
    torch.manual_seed(seed)
    return TorchOCLR(in_channels, num_queries, unet_features=unet_features, num_layers=num_layers,
                     num_heads=num_heads, num_query=num_queries, ff_dim=ff_dim).eval()


def numpy_state_dict(model):
    return {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}


def torch_outputs(model, flow_nhwc):
    with torch.no_grad():
        amodal, order = model(torch.from_numpy(flow_nhwc).permute(0, 1, 4, 2, 3))
    return amodal.permute(0, 1, 3, 4, 2).numpy(), order.numpy()  # (B, T, H, W, K), (B, T, K)


def flax_outputs(params, model_config, flow_nhwc):
    model = build_model(model_config)
    out = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, jnp.asarray(flow_nhwc))
    return np.asarray(out["amodal_logits"]), np.asarray(out["order_logits"])


def random_flow(shape, seed=0):
    return (3.0 * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def test_reference_state_dict_is_the_official_one():
    model = reference_model()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == official_listing()


def test_reference_norm_is_unbiased_std_plus_eps():
    norm = Norm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(6.0))
        norm.bias.fill_(0.5)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    std = np.sqrt(((x - x.mean(-1, keepdims=True)) ** 2).sum(-1, keepdims=True) / 5)
    expected = np.arange(6.0) * (x - x.mean(-1, keepdims=True)) / (std + 1e-5) + 0.5
    np.testing.assert_allclose(norm(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_reference_attention_masks_same_frame_and_packs_qkv():
    """Against a numpy attention: q|k|v rows of in_proj, scores / sqrt(c/G), -1e9 fill."""
    rng = np.random.default_rng(0)
    width, heads, frames, per_frame = 8, 2, 3, 2
    attention = MultiHeadAttention(heads, width).eval()
    x = rng.normal(size=(1, frames * per_frame, width)).astype(np.float32)
    frame = np.repeat(np.arange(frames), per_frame)
    blocked = frame[:, None] == frame[None, :]
    w, b = attention.in_proj_weight.detach().numpy(), attention.in_proj_bias.detach().numpy()
    q, k, v = (x[0] @ w[i * width:(i + 1) * width].T + b[i * width:(i + 1) * width] for i in range(3))
    heads_out = []
    for g in range(heads):
        part = slice(g * width // heads, (g + 1) * width // heads)
        scores = np.where(blocked, -1e9, q[:, part] @ k[:, part].T / math.sqrt(width / heads))
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        heads_out.append((weights / weights.sum(-1, keepdims=True)) @ v[:, part])
    out_w, out_b = attention.out_proj.weight.detach().numpy(), attention.out_proj.bias.detach().numpy()
    expected = np.concatenate(heads_out, -1) @ out_w.T + out_b
    x_t = torch.from_numpy(x)
    got = attention(x_t, x_t, torch.from_numpy(blocked)).detach().numpy()[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_reference_attention_map_is_raw_grouped_dot_products():
    rng = np.random.default_rng(0)
    b, k, t, h, w, c, g = 1, 2, 3, 2, 2, 8, 4
    head = AttnMap(c, g, k)
    decoded = rng.normal(size=(b, k * t, c)).astype(np.float32)
    memory = rng.normal(size=(b, t, h, w, c)).astype(np.float32)
    maps = np.zeros((b, t, h, w, k * g), np.float32)
    for q in range(k):
        for gi in range(g):
            part = slice(gi * c // g, (gi + 1) * c // g)
            for ti in range(t):
                maps[0, ti, :, :, q * g + gi] = memory[0, ti, :, :, part] @ decoded[0, q * t + ti, part]
    linear = head.mlp[0]
    expected = np.maximum(maps @ linear.weight.detach().numpy().T + linear.bias.detach().numpy(), 0)
    got = head(torch.from_numpy(decoded), torch.from_numpy(memory)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_reference_up_convolution_has_no_flip():
    """torch ConvTranspose2d(k=2, s=2) is out[o, 2y+dy, 2x+dx] = sum_i x[i,y,x] w[i,o,dy,dx] + b:
    the law our Flax kernel layout (transpose(2, 3, 0, 1), no flip) relies on."""
    up = torch.nn.ConvTranspose2d(3, 2, 2, stride=2)
    x = torch.randn(1, 3, 2, 2)
    w, b = up.weight.detach().numpy(), up.bias.detach().numpy()
    got = up(x).detach().numpy()[0]
    for dy in range(2):
        for dx in range(2):
            expected = np.einsum("iyx,io->oyx", x[0].numpy(), w[:, :, dy, dx]) + b[:, None, None]
            np.testing.assert_allclose(got[:, dy::2, dx::2], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sizes, flow_shape", [
    (dict(), (1, 8, 64, 112, 4)),
    (dict(), (2, 5, 128, 224, 4)),
    (dict(in_channels=2, unet_features=8, num_queries=2, num_layers=2, num_heads=4, ff_dim=128), (2, 4, 32, 48, 2)),
    (dict(unet_features=8, num_queries=4, num_layers=1, num_heads=2, ff_dim=64), (1, 1, 16, 32, 4)),
], ids=["official-64x112", "official-128x224", "other-sizes", "single-frame"])
def test_from_torch_parity(sizes, flow_shape):
    model = reference_model(**sizes)
    params, model_config = convert.torch_state_dict_to_flax(numpy_state_dict(model))
    flow = random_flow(flow_shape)
    amodal_ref, order_ref = torch_outputs(model, flow)
    amodal, order = flax_outputs(params, model_config, flow)
    assert amodal.shape == amodal_ref.shape and order.shape == (flow_shape[0], model_config.num_queries)
    assert np.abs(amodal_ref).max() > 0.1 and np.ptp(order_ref) > 1e-3  # not a trivial output
    np.testing.assert_allclose(amodal, amodal_ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.broadcast_to(order[:, None], order_ref.shape), order_ref, rtol=0, atol=ATOL)


def random_flax_params(shape: ModelConfig, seed=0):
    """Random params in our tree, scaled like torch's default init so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for rule in convert.conversion_table(shape):
        torch_shape = rule.torch_shape
        if rule.kind == "copy" and len(torch_shape) == 2:  # query embedding
            value = rng.normal(size=torch_shape)
        elif rule.kind == "copy":  # biases and Norm scales
            value = (rule.flax_path[-1] == "scale") + 0.1 * rng.normal(size=torch_shape)
        else:
            fan_in = torch_shape[0] if rule.kind == "conv_transpose" else np.prod(torch_shape[1:])
            bound = 1 / np.sqrt(fan_in)
            value = convert.to_flax_layout(rule.kind, rng.uniform(-bound, bound, size=torch_shape))
        flat[rule.flax_name] = np.asarray(value, np.float32)
    return convert.unflatten_params(flat)


def test_to_torch_parity_with_strict_load():
    sizes = dict(in_channels=2, unet_features=8, num_queries=3, num_layers=2, num_heads=4, ff_dim=128)
    params = random_flax_params(ModelConfig(**sizes), seed=3)
    state_dict = convert.flax_to_torch_state_dict(params)
    reference = reference_model(**sizes, seed=1)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    flow = random_flow((2, 3, 32, 64, 2), seed=1)
    amodal_ref, order_ref = torch_outputs(reference, flow)
    amodal, order = flax_outputs(params, ModelConfig(**sizes), flow)
    np.testing.assert_allclose(amodal, amodal_ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(order, order_ref[:, 0], rtol=0, atol=ATOL)


def test_torch_flax_torch_round_trip_is_bit_exact():
    model = reference_model(seed=2)
    state_dict = numpy_state_dict(model)
    params, _ = convert.torch_state_dict_to_flax(state_dict)
    back = convert.flax_to_torch_state_dict(params)
    restored = reference_model(seed=3)
    restored.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name
