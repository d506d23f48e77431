"""Memory switches of the model (`model.attention=chunked`): same numbers, less memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oclr_jax.model import OCLR, init_params, other_frames_allowed
from oclr_jax.modules import transformer
from oclr_jax.modules.transformer import (
    EncoderLayer,
    MultiHeadAttention,
    TransformerStack,
    chunk_rows,
    chunked_attend,
    inference_block_rows,
)

SMALL = {"unet_features": 4, "num_layers": 2, "num_heads": 2, "ff_dim": 16}


def test_chunk_rows_divides_the_query_length():
    assert chunk_rows(3360) == 240  # paper encoder: 30 frames x 8 x 14 tokens
    assert chunk_rows(3360, 112) == 112
    assert chunk_rows(90, 256) == 90  # decoder queries: one block
    assert chunk_rows(12, 5) == 4
    with pytest.raises(ValueError, match="attention_chunk"):
        chunk_rows(12, -1)


def test_inference_block_rows_fit_the_budget_and_prefer_multiples_of_8():
    # paper encoder at batch 1: 3360 x 3360 scores x 8 heads = 361 MB -> 120-row blocks (15 MB)
    assert inference_block_rows(1, 3360, 3360, 8) == 120
    assert inference_block_rows(4, 3360, 3360, 8) == 32  # batch 4: at most 39 rows
    assert inference_block_rows(2, 224, 224, 8) == 0     # small: one dense block
    assert inference_block_rows(1, 90, 3360, 8) == 0     # decoder cross-attention
    assert inference_block_rows(1, 3359, 3359, 8) == 0   # a prime length: no useful blocks
    rows = inference_block_rows(1, 3360, 3360, 8)
    assert rows * 3360 * 8 * 4 <= transformer.INFERENCE_BLOCK_BYTES


def test_dense_inference_in_row_blocks_equals_one_block(monkeypatch):
    """With a tiny budget the module's inference path runs in row blocks; outputs equal the
    training path without dropout (one dense block) and an independent float64 computation."""
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 24, 8))
    allowed = other_frames_allowed(4, 6)
    module = MultiHeadAttention(2, dropout_rate=0.1, deterministic=True)
    params = module.init(jax.random.PRNGKey(0), x, x, allowed)
    one_block = module.apply(params, x, x, allowed)
    monkeypatch.setattr(transformer, "INFERENCE_BLOCK_BYTES", 2 * 2 * 24 * 4 * 8)  # 8 rows
    assert inference_block_rows(2, 24, 24, 2) == 8
    blocks = module.apply(params, x, x, allowed)
    np.testing.assert_allclose(blocks, one_block, atol=1e-6)
    jaxpr = str(jax.make_jaxpr(lambda p: module.apply(p, x, x, allowed))(params))
    assert "scan" in jaxpr  # the blocked path really ran
    # a program traced here for another target (tools/aot_tpu.py) turns the blocks off
    monkeypatch.setattr(transformer, "CPU_INFERENCE_BLOCKS", False)
    assert "scan" not in str(jax.make_jaxpr(lambda p: module.apply(p, x, x, allowed))(params))
    monkeypatch.setattr(transformer, "CPU_INFERENCE_BLOCKS", True)
    # training with dropout keeps one block (its masks); without dropout it may block
    train = MultiHeadAttention(2, dropout_rate=0.1, deterministic=False)
    jaxpr = str(jax.make_jaxpr(lambda p: train.apply(p, x, x, allowed, rngs={
        "dropout": jax.random.PRNGKey(1)}))(params))
    assert "scan" not in jaxpr
    # an independent reference of the whole module: projections + attention in float64
    w = params["params"]
    kernel, bias = np.float64(w["in_proj_kernel"]), np.float64(w["in_proj_bias"])
    qkv = np.float64(x) @ kernel + bias
    split = lambda a: a.reshape(2, 24, 2, 4)  # noqa: E731
    q, k, v = (split(qkv[..., i * 8:(i + 1) * 8]) for i in range(3))
    attended = _dense_reference(q, k, v, np.asarray(allowed)).reshape(2, 24, 8)
    expected = attended @ np.float64(w["out_proj"]["kernel"]) + np.float64(w["out_proj"]["bias"])
    np.testing.assert_allclose(blocks, expected, atol=1e-5)


def _attention_inputs(length=24, heads=2, dim=4, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q, k, v = (jax.random.normal(key, (2, length, heads, dim)) for key in keys)
    return q, k, v


def _dense_reference(q, k, v, allowed):  # written out independently of the module
    scores = np.einsum("bqgd,bkgd->bgqk", np.float64(q), np.float64(k)) / np.sqrt(q.shape[-1])
    scores = np.where(allowed, scores, -1e9)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bgqk,bkgd->bqgd", weights, np.float64(v))


@pytest.mark.parametrize("rows", [1, 4, 6, 24])
def test_chunked_attend_equals_dense_attention(rows):
    q, k, v = _attention_inputs()
    allowed = other_frames_allowed(4, 6)  # 4 frames of 6 tokens: own frame blocked
    out = chunked_attend(q, k, v, allowed, None, 0.1, jnp.float32, rows)
    np.testing.assert_allclose(out, _dense_reference(q, k, v, np.asarray(allowed)), atol=1e-5)


def test_chunked_attend_gradients_equal_dense():
    q, k, v = _attention_inputs(seed=1)
    allowed = other_frames_allowed(4, 6)
    target = jax.random.normal(jax.random.PRNGKey(2), q.shape)

    def loss(q, k, v, rows):
        return jnp.sum(chunked_attend(q, k, v, allowed, None, 0.0, jnp.float32, rows) * target)

    dense = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, 24)
    for rows in (4, 6):
        chunked = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, rows)
        for a, b in zip(dense, chunked):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_chunked_dropout_is_keyed_and_drops_about_the_rate():
    q, k, v = _attention_inputs(length=48, seed=3)
    v = jnp.ones_like(v)  # attended = sum of kept weights / keep_prob: 1 when nothing dropped
    plain = chunked_attend(q, k, v, None, None, 0.5, jnp.float32, 8)
    np.testing.assert_allclose(plain, 1.0, atol=1e-5)
    one = chunked_attend(q, k, v, None, jax.random.PRNGKey(7), 0.5, jnp.float32, 8)
    again = chunked_attend(q, k, v, None, jax.random.PRNGKey(7), 0.5, jnp.float32, 8)
    other = chunked_attend(q, k, v, None, jax.random.PRNGKey(8), 0.5, jnp.float32, 8)
    np.testing.assert_array_equal(one, again)
    assert float(jnp.max(jnp.abs(one - other))) > 0.1
    assert abs(float(jnp.mean(one)) - 1.0) < 0.05  # inverted dropout keeps the mean
    # blocks draw different masks: no two blocks of rows repeat each other
    blocks = np.asarray(one).reshape(2, 6, 8, 2, 4)
    assert np.abs(blocks[:, 0] - blocks[:, 1]).max() > 0.1


def test_module_rejects_unknown_attention():
    x = jnp.zeros((1, 4, 8))
    with pytest.raises(ValueError, match="model.attention"):
        MultiHeadAttention(2, attention="flash").init(jax.random.PRNGKey(0), x, x)


@pytest.mark.slow
def test_chunked_model_equals_dense_model():
    model = OCLR(**SMALL)
    params = init_params(model, jax.random.PRNGKey(0), (1, 1, 16, 16, 4))
    flow = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 32, 32, 4))  # L = 4 frames x 4 tokens
    chunked = OCLR(**SMALL, attention="chunked", attention_chunk=4)
    dense_out = model.apply({"params": params}, flow)
    chunked_out = chunked.apply({"params": params}, flow)
    for name in dense_out:
        np.testing.assert_allclose(dense_out[name], chunked_out[name], atol=1e-5)

    def loss(p, m):  # training mode without dropout: the same function, same gradients
        out = m.apply({"params": p}, flow, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
        return jnp.mean(out["amodal_logits"] ** 2) + jnp.mean(out["order_logits"] ** 2)

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    dense_loss, dense_grads = grad_fn(params, OCLR(**SMALL, dropout_rate=0.0))
    chunked_loss, chunked_grads = grad_fn(
        params, OCLR(**SMALL, dropout_rate=0.0, attention="chunked", attention_chunk=4))
    np.testing.assert_allclose(dense_loss, chunked_loss, rtol=1e-6)
    # same tolerance as the remat switch (test_model.py): the U-Net gradients at init are
    # ill-conditioned enough that any change of XLA's operation order shows at ~1e-5.
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           dense_grads, chunked_grads)
    # with dropout: runs, finite, and keyed
    train = OCLR(**SMALL, attention="chunked", attention_chunk=4)
    out = train.apply({"params": params}, flow, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())


def _encoder_grad_memory(attention: str, chunk: int = 0) -> int:
    """Temp bytes of the compiled gradient of a 1-layer encoder on 1024 tokens (16 frames of
    64 tokens), where the (B, G, L, L) attention arrays dominate."""
    stack = TransformerStack(EncoderLayer, 1, 8, 64, 0.1, False, jnp.float32,
                             attention=attention, attention_chunk=chunk)
    x = jax.ShapeDtypeStruct((2, 1024, 64), jnp.float32)
    allowed = other_frames_allowed(16, 64)
    params = jax.eval_shape(lambda: stack.init(jax.random.PRNGKey(0), jnp.zeros(x.shape),
                                               allowed))["params"]

    def loss(p, x, key):
        out = stack.apply({"params": p}, x, allowed, rngs={"dropout": key})
        return jnp.sum(out ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(params, x, jax.random.PRNGKey(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_chunked_attention_cuts_training_memory():
    dense = _encoder_grad_memory("dense")
    chunked = _encoder_grad_memory("chunked", 128)
    scores = 2 * 8 * 1024 * 1024 * 4  # one float32 (B, G, L, L) array: 64 MiB
    assert dense > 2 * scores  # scores/weights and the dropout mask are kept
    assert chunked < dense / 3, (dense, chunked)  # measured: 324.7 MiB -> 71.0 MiB
    assert chunked < 2 * scores


def test_config_selects_the_attention():
    from oclr_jax.config import paper
    from oclr_jax.model import model_from_config

    config = paper.get_config()
    assert config.model.attention == "dense" and config.model.attention_chunk == 0
    config.model.attention, config.model.attention_chunk = "chunked", 112
    model = model_from_config(config.model, in_channels=4)
    assert model.attention == "chunked" and model.attention_chunk == 112
