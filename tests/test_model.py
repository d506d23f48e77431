"""The Flax OCLR: shapes, the official parameter tree, the attention mask, Norm, determinism."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from oclr_jax.model import OCLR, check_input_shape, init_key, init_params, linspace_grid, other_frames_allowed
from oclr_jax.modules.transformer import MultiHeadAttention, Norm
from oclr_jax.modules.unet import instance_norm, max_pool_2x2

HERE = os.path.dirname(__file__)
SMALL = dict(unet_features=4, num_layers=1, num_heads=2, ff_dim=16)


@pytest.fixture(scope="module")
def small_model_and_params():
    model = OCLR(**SMALL)
    return model, init_params(model, jax.random.PRNGKey(0), (1, 1, 16, 16, 4))


@pytest.fixture(scope="module")
def official_params():
    model = OCLR()
    shapes = jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros((1, 1, 16, 16, 4))),
                            jax.random.PRNGKey(0))
    return flatten_dict(shapes["params"], sep="/")


def _official_entries():
    entries = {}
    with open(os.path.join(HERE, "data", "official_state_dict.txt")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, shape, _, numel = line.rstrip("\n").split("\t")
            entries[name] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()),
                             int(numel))
    return entries


def _torch_shape_in_our_layout(name, shape):
    """DESIGN.md §7: conv OIHW -> HWIO, transposed conv (I, O, kh, kw) -> (kh, kw, I, O),
    Linear (out, in) -> (in, out), packed in_proj (3c, c) -> (c, 3c); vectors as they are."""
    if len(shape) == 4:
        return shape[2:] + ((shape[0], shape[1]) if "upconv" in name else (shape[1], shape[0]))
    if len(shape) == 2 and "motion_embed" not in name:
        return shape[::-1]
    return shape


@pytest.mark.parametrize("shape", [(2, 3, 32, 48, 4), (1, 1, 16, 16, 4), (3, 30, 128, 224, 4),
                                   (1, 2, 64, 32, 2)])
def test_output_shapes_and_dtypes(shape):
    model = OCLR(**SMALL)
    variables = jax.eval_shape(lambda k, x: model.init({"params": k}, x), jax.random.PRNGKey(0),
                               jax.ShapeDtypeStruct((1, 1, 16, 16, shape[-1]), jnp.float32))
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                         jax.ShapeDtypeStruct(shape, jnp.float32))
    b, t, h, w, _ = shape
    assert out["amodal_logits"].shape == (b, t, h, w, 3)
    assert out["order_logits"].shape == (b, 3)
    assert out["amodal_logits"].dtype == jnp.float32 and out["order_logits"].dtype == jnp.float32


def test_outputs_finite_on_non_square_single_frame(small_model_and_params):
    model, params = small_model_and_params
    out = model.apply({"params": params}, jnp.ones((2, 1, 32, 16, 4)))
    assert out["amodal_logits"].shape == (2, 1, 32, 16, 3)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())


def test_parameter_tree_equals_official(official_params):
    official = _official_entries()
    assert sum(n for _, n in official.values()) == 20_660_932
    assert sum(math.prod(v.shape) for v in official_params.values()) == 20_660_932
    assert len(official_params) == len(official) == 129
    # Every official tensor has a counterpart of the transposed shape; compare as multisets per
    # module prefix so a swapped pair of layers would fail.
    ours = sorted(tuple(v.shape) for v in official_params.values())
    theirs = sorted(_torch_shape_in_our_layout(n, s) for n, (s, _) in official.items())
    assert ours == theirs
    for name, (shape, _) in official.items():
        if name.startswith("decoder_am.upconv") and name.endswith("weight"):
            stage = name.split(".")[1]
            assert official_params[f"decoder_am/{stage}/kernel"].shape == \
                _torch_shape_in_our_layout(name, shape)


def test_size_errors_name_the_multiple():
    with pytest.raises(ValueError, match="multiples of 16"):
        check_input_shape((1, 2, 30, 32, 4))
    with pytest.raises(ValueError, match="at least one frame"):
        check_input_shape((1, 0, 32, 32, 4))
    with pytest.raises(ValueError, match="4 input channels"):
        check_input_shape((1, 2, 32, 32, 2), in_channels=4)
    model = OCLR(**SMALL)
    with pytest.raises(ValueError, match="multiples of 16"):
        model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 1, 24, 16, 4)))


def test_same_frame_mask_blocks_own_frame():
    """Frame t's attention output must not depend on frame t's keys/values."""
    frames, tokens_per_frame, width = 3, 4, 8
    allowed = other_frames_allowed(frames, tokens_per_frame)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, frames * tokens_per_frame, width))
    attention = MultiHeadAttention(num_heads=2, dropout_rate=0.0)
    params = attention.init(jax.random.PRNGKey(1), x, x, allowed)
    frame = slice(tokens_per_frame, 2 * tokens_per_frame)  # frame 1
    perturbed = x.at[:, frame].add(5.0 * jax.random.normal(jax.random.PRNGKey(2), (1, 4, width)))

    def frame_output(queries, keys_values, mask):
        return attention.apply(params, queries, keys_values, mask)[:, frame]

    masked_kv_changed = frame_output(perturbed, perturbed, allowed)
    masked_kv_kept = frame_output(perturbed, x, allowed)
    np.testing.assert_allclose(masked_kv_changed, masked_kv_kept, atol=1e-5)
    # Without the mask the same perturbation reaches frame 1 through its own keys/values.
    unmasked_changed = frame_output(perturbed, perturbed, None)
    unmasked_kept = frame_output(perturbed, x, None)
    assert float(jnp.max(jnp.abs(unmasked_changed - unmasked_kept))) > 1e-2
    # Other frames do see frame 1.
    other = attention.apply(params, perturbed, perturbed, allowed)[:, :tokens_per_frame]
    other_before = attention.apply(params, perturbed, x, allowed)[:, :tokens_per_frame]
    assert float(jnp.max(jnp.abs(other - other_before))) > 1e-2


def test_single_frame_attention_is_uniform_like_official():
    """T=1 blocks every score; the official -1e9 fill makes the softmax uniform (mean of values)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 8))
    attention = MultiHeadAttention(num_heads=1, dropout_rate=0.0)
    params = attention.init(jax.random.PRNGKey(1), x, x, other_frames_allowed(1, 5))
    out = attention.apply(params, x, x, other_frames_allowed(1, 5))
    p = params["params"]
    values = x[0] @ p["in_proj_kernel"][:, 16:] + p["in_proj_bias"][16:]
    expected = values.mean(0) @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]
    np.testing.assert_allclose(out[0], np.broadcast_to(expected, (5, 8)), atol=1e-5)


def test_norm_matches_numpy_unbiased_std():
    x = np.random.RandomState(0).randn(3, 7, 10).astype(np.float32) * 4 + 1
    norm = Norm()
    params = {"params": {"scale": np.linspace(0.5, 2, 10, dtype=np.float32),
                         "bias": np.linspace(-1, 1, 10, dtype=np.float32)}}
    out = np.asarray(norm.apply(params, jnp.asarray(x)))
    mean = x.astype(np.float64).mean(-1, keepdims=True)
    std = x.astype(np.float64).std(-1, ddof=1, keepdims=True)
    expected = params["params"]["scale"] * (x - mean) / (std + 1e-5) + params["params"]["bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # And it is not LayerNorm (biased variance inside the sqrt) on few features.
    layer_norm = (x - mean) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    assert np.abs(out - (params["params"]["scale"] * layer_norm + params["params"]["bias"])).max() > 1e-2


def test_max_pool_value_and_first_max_gradient():
    """torch max_pool2d(2) semantics: the max, and the whole gradient to the first maximum of
    each window in row-major order (ties included), checked against a loop in numpy."""
    rng = np.random.RandomState(0)
    x = rng.randn(2, 6, 8, 3).astype(np.float32)
    x[0, 0:2, 0:2, 0] = 5.0                      # a four-way tie
    x[1, 2, 3, 1] = x[1, 3, 2, 1] = 7.0          # a tie on (0, 1) and (1, 0) of a window
    x[1, 4:6, 4:6, 2] = 0.0                      # all zero
    cotangent = rng.randn(2, 3, 4, 3).astype(np.float32)
    pooled, vjp = jax.vjp(max_pool_2x2, jnp.asarray(x))
    grad = np.asarray(vjp(jnp.asarray(cotangent))[0])
    expected_pooled = np.zeros_like(cotangent)
    expected_grad = np.zeros_like(x)
    for n, i, j, c in np.ndindex(*cotangent.shape):
        window = [(2 * i + dy, 2 * j + dx) for dy in (0, 1) for dx in (0, 1)]
        values = [x[n, y, xx, c] for y, xx in window]
        first = int(np.argmax(values))  # numpy's argmax is the first maximum too
        expected_pooled[n, i, j, c] = values[first]
        expected_grad[(n,) + window[first] + (c,)] = cotangent[n, i, j, c]
    np.testing.assert_array_equal(np.asarray(pooled), expected_pooled)
    np.testing.assert_array_equal(grad, expected_grad)
    with pytest.raises(ValueError, match="even"):
        max_pool_2x2(jnp.zeros((1, 5, 4, 1)))


def test_instance_norm_matches_numpy():
    x = np.random.RandomState(1).randn(3, 8, 12, 5).astype(np.float32) * 3 + 2
    x64 = x.astype(np.float64)
    mean = x64.mean((1, 2), keepdims=True)
    expected = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean((1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(instance_norm(jnp.asarray(x))), expected, atol=2e-5)


def test_determinism_and_dropout_only_in_train(small_model_and_params):
    model, params = small_model_and_params
    flow = jax.random.normal(jax.random.PRNGKey(3), (1, 2, 16, 16, 4))
    apply = jax.jit(lambda p, x, key, train: model.apply({"params": p}, x, train=train,
                                                         rngs={"dropout": key}),
                    static_argnums=3)
    eval_a = apply(params, flow, jax.random.PRNGKey(0), False)
    eval_b = apply(params, flow, jax.random.PRNGKey(1), False)
    np.testing.assert_array_equal(eval_a["amodal_logits"], eval_b["amodal_logits"])
    train_a = apply(params, flow, jax.random.PRNGKey(0), True)
    train_a2 = apply(params, flow, jax.random.PRNGKey(0), True)
    train_b = apply(params, flow, jax.random.PRNGKey(1), True)
    np.testing.assert_array_equal(train_a["amodal_logits"], train_a2["amodal_logits"])
    assert float(jnp.max(jnp.abs(train_a["amodal_logits"] - train_b["amodal_logits"]))) > 1e-6
    assert float(jnp.max(jnp.abs(train_a["amodal_logits"] - eval_a["amodal_logits"]))) > 1e-6


def test_init_is_deterministic():
    model = OCLR(**SMALL)
    init = jax.jit(lambda key: model.init({"params": init_key(key)}, jnp.zeros((1, 1, 16, 16, 4))))
    a, b, c = init(jax.random.PRNGKey(7)), init(jax.random.PRNGKey(7)), init(jax.random.PRNGKey(8))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    kernel = np.asarray(a["params"]["encoder"]["encoder1"]["conv1"]["kernel"])
    assert not np.array_equal(kernel, c["params"]["encoder"]["encoder1"]["conv1"]["kernel"])
    # torch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 4 * 3 * 3.
    bound = 1 / np.sqrt(36)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.8 * bound


def test_mask_switch_changes_outputs(small_model_and_params):
    _, params = small_model_and_params
    flow = jax.random.normal(jax.random.PRNGKey(4), (1, 2, 16, 16, 4))
    masked = OCLR(**SMALL).apply({"params": params}, flow)
    unmasked = OCLR(**SMALL, same_frame_mask=False).apply({"params": params}, flow)
    assert float(jnp.max(jnp.abs(masked["amodal_logits"] - unmasked["amodal_logits"]))) > 1e-5


def test_remat_and_bfloat16_keep_results(small_model_and_params):
    _, params = small_model_and_params
    flow = jax.random.normal(jax.random.PRNGKey(5), (1, 2, 16, 16, 4))

    def loss(p, model):
        out = model.apply({"params": p}, flow)
        return jnp.mean(out["amodal_logits"] ** 2) + jnp.mean(out["order_logits"] ** 2)

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    plain_loss, plain_grads = grad_fn(params, OCLR(**SMALL))
    remat_loss, remat_grads = grad_fn(params, OCLR(**SMALL, remat=True))
    np.testing.assert_allclose(plain_loss, remat_loss, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           plain_grads, remat_grads)
    bf16 = OCLR(**SMALL, dtype=jnp.bfloat16).apply({"params": params}, flow)
    f32 = OCLR(**SMALL).apply({"params": params}, flow)
    assert bf16["amodal_logits"].dtype == jnp.float32
    err = float(jnp.max(jnp.abs(bf16["amodal_logits"] - f32["amodal_logits"])))
    assert err < 0.1 * float(jnp.max(jnp.abs(f32["amodal_logits"]))) + 0.05


def test_linspace_grid_matches_numpy_meshgrid():
    grid = linspace_grid((3, 2, 4))
    assert grid.shape == (3, 2, 4, 3)
    np.testing.assert_array_equal(grid[:, 0, 0, 0], np.linspace(-1, 1, 3).astype(np.float32))
    np.testing.assert_array_equal(grid[0, :, 0, 1], [-1, 1])
    np.testing.assert_array_equal(linspace_grid((1,))[:, 0], [-1.0])


@pytest.mark.slow
def test_jit_compiles_at_paper_size():
    model = OCLR()
    flow = jax.ShapeDtypeStruct((1, 30, 128, 224, 4), jnp.float32)
    params = jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros((1, 1, 16, 16, 4))),
                            jax.random.PRNGKey(0))["params"]
    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, flow).compile()
    out_shapes = compiled.out_info if hasattr(compiled, "out_info") else None
    if out_shapes is not None:
        assert out_shapes["amodal_logits"].shape == (1, 30, 128, 224, 3)
    assert jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, flow)[
        "order_logits"].shape == (1, 3)
