"""tta/finetune.py: only the last blocks move, the schedules, and the loss goes down."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oclr_jax.tta.finetune import (
    FinetuneSettings,
    finetune_last_blocks,
    learning_rate_schedule,
    make_optimizer,
    pair_schedule,
    trainable_labels,
)
from oclr_jax.tta.loss import trimap
from oclr_jax.tta.vit import VisionTransformer, init_vit_params

MODEL = VisionTransformer(patch_size=8, embed_dim=48, depth=3, num_heads=3, pretrain_grid=4)
# One settings object for the training tests: the jitted step compiles once for all of them.
# The official warm-up: 2e-3 for the first step, 0 for the second, then 1e-3 constant.
SETTINGS = FinetuneSettings(learning_rate=2e-3, num_iterations=30, max_pair_gap=1,
                            lr_schedule="warmup_constant", warmup_iterations=2)


def _problem(num_frames, seed=0):
    """Random tokens after block 0 of an 8x8 grid; one layer covering the top 6 rows.

    Positives (rows 0-4) outnumber negatives (row 7), so random features start with a positive
    fraction of about 40/48 and a loss below the 0.65 clip, where gradients flow.
    """
    params = init_vit_params(MODEL, seed)
    tokens = jax.random.normal(jax.random.key(seed + 1), (num_frames, 1 + 64, 48))
    masks = np.zeros((num_frames, 1, 8, 8), np.float32)
    masks[:, 0, :6] = 1
    positive, negative = trimap(jnp.asarray(masks), 1, 1)
    assert float(positive[0].sum()) == 40 and float(negative[0].sum()) == 8
    return params, tokens, positive.reshape(num_frames, 1, 64), negative.reshape(num_frames, 1, 64)


def test_schedules():
    decay = learning_rate_schedule(FinetuneSettings())
    np.testing.assert_allclose([decay(0), decay(500), decay(1000), decay(2000)],
                               [1e-5, 5e-6, 0.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate_schedule(FinetuneSettings(lr_schedule="cosine"))


def _official_rates(num_steps: int, base: float = 1e-5, warmup: int = 100) -> list[float]:
    """The rate each step of the official loop uses (dino_funetuning.py, transcribed): the
    optimizer starts at `base`; after step `it < warmup` the next rate is base * it / warmup."""
    lr, rates = base, []
    for it in range(num_steps):
        rates.append(lr)  # optimizer.step() with the current rate
        if it < warmup:
            lr = base * it / warmup
    return rates


def test_warmup_constant_is_the_official_loop_step_by_step():
    warmup = learning_rate_schedule(FinetuneSettings(lr_schedule="warmup_constant"))
    ours = [float(warmup(step)) for step in range(130)]
    expected = _official_rates(130)
    np.testing.assert_allclose(expected[:4], [1e-5, 0.0, 1e-7, 2e-7], rtol=1e-12)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-13)
    np.testing.assert_allclose(float(warmup(999)), 0.99e-5, rtol=1e-6)
    with pytest.raises(ValueError, match="warmup_iterations"):  # the rate would stay 0
        learning_rate_schedule(FinetuneSettings(lr_schedule="warmup_constant", warmup_iterations=1))


def test_trainable_labels_mark_the_last_blocks():
    params = init_vit_params(MODEL, 0)
    labels = trainable_labels(params, depth=3, trainable_blocks=2)
    flat = {jax.tree_util.keystr(path): label
            for path, label in jax.tree_util.tree_leaves_with_path(labels)}
    trainable = {name for name, label in flat.items() if label == "trainable"}
    assert trainable and all("blocks_1" in n or "blocks_2" in n for n in trainable)
    assert all(flat[n] == "frozen" for n in flat if "blocks_1" not in n and "blocks_2" not in n)
    # No Adam moments for the frozen parameters.
    state = make_optimizer(params, 3, FinetuneSettings()).init(params)
    moment_leaves = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
    trainable_size = sum(x.size for k in ("blocks_1", "blocks_2")
                         for x in jax.tree.leaves(params[k]))
    assert moment_leaves == 2 * trainable_size


def test_pair_schedule_visits_every_pair_once_per_epoch():
    order = pair_schedule(jax.random.key(0), 7, 20)
    assert len(order) == 20
    assert sorted(order[:7]) == list(range(7)) and sorted(order[7:14]) == list(range(7))
    assert not np.array_equal(order[:7], order[7:14])  # reshuffled each epoch


def test_only_the_last_two_blocks_change_and_the_input_survives():
    params, tokens, positive, negative = _problem(3)
    tuned, losses = finetune_last_blocks(MODEL, params, tokens, positive, negative, SETTINGS,
                                         jax.random.key(0))
    assert losses.shape == (30,) and np.isfinite(losses).all()
    for name in params:
        for before, after in zip(jax.tree.leaves(params[name]), jax.tree.leaves(tuned[name])):
            moved = not np.array_equal(np.asarray(before), np.asarray(after))
            assert moved == (name in ("blocks_1", "blocks_2")), name
    # The caller's params were not donated: still readable.
    assert np.isfinite(np.asarray(params["blocks_2"]["mlp"]["fc2"]["kernel"])).all()


def test_loss_decreases_on_one_pair():
    params, tokens, positive, negative = _problem(2, seed=3)
    _, losses = finetune_last_blocks(MODEL, params, tokens, positive, negative, SETTINGS,
                                     jax.random.key(0))
    assert losses[0] > 0.1
    assert losses[-5:].mean() < 0.5 * losses[:5].mean()


def test_no_pairs_no_training():
    params, tokens, positive, negative = _problem(1)
    tuned, losses = finetune_last_blocks(MODEL, params, tokens, positive, negative,
                                         FinetuneSettings(num_iterations=5), jax.random.key(0))
    assert tuned is params and losses.shape == (0,)
