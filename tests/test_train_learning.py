"""Learning, for real: the tiny config trained for a couple of CPU minutes on generated
single-object sequences segments held-out sequences far better than trivial predictions."""

import jax
import numpy as np
import pytest

from oclr_jax.config import loading as config_lib
from oclr_jax.model import model_from_config
from oclr_jax.train import batches as train_data
from oclr_jax.train import trainer as train

NUM_STEPS = 240
HELD_OUT_FIRST_INDEX = 100_000  # training reads sequences 0 .. NUM_STEPS * batch - 1


def _frame_mean_iou(pred, gt):
    """(T, H, W) bool each -> mean over frames of IoU (empty union counts 1)."""
    inter = np.sum(pred & gt, axis=(1, 2))
    union = np.sum(pred | gt, axis=(1, 2))
    return float(np.mean(np.where(union == 0, 1.0, inter / np.maximum(union, 1))))


@pytest.mark.slow
def test_tiny_model_beats_trivial_baselines_on_held_out_sequences(tmp_path):
    config = config_lib.load_config("configs/tiny.py", [
        "data.num_frames=4", f"train.num_steps={NUM_STEPS}", "train.warmup_steps=10",
        "train.eval_every=0", f"train.checkpoint_every={NUM_STEPS}", "train.log_every=40"])
    config.data.source = "synthetic_inline"
    config.data.synthetic_split = "syn_single"
    state = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert int(state.step) == NUM_STEPS

    model = model_from_config(config.model, in_channels=4)
    predict = jax.jit(lambda params, flow: model.apply({"params": params}, flow)["amodal_logits"])
    scores = {"model": [], "all_foreground": [], "all_background": []}
    for index in range(HELD_OUT_FIRST_INDEX, HELD_OUT_FIRST_INDEX + 12):
        example = train_data._render_example(config, "syn_single", index)
        gt = example["amodal"][..., 0] > 0.5  # (T, H, W): the one object
        assert gt.any()
        logits = np.asarray(predict(state.params, example["flow"][None]))[0]  # (T, H, W, K)
        # One GT layer: the Hungarian assignment picks the best-matching predicted layer.
        scores["model"].append(max(_frame_mean_iou(logits[..., k] > 0, gt)
                                   for k in range(logits.shape[-1])))
        scores["all_foreground"].append(_frame_mean_iou(np.ones_like(gt), gt))
        scores["all_background"].append(_frame_mean_iou(np.zeros_like(gt), gt))
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    best_baseline = max(means["all_foreground"], means["all_background"])
    assert means["model"] > best_baseline + 0.25, means
    assert means["model"] > 2 * best_baseline, means
