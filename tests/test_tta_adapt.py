"""tta/preprocess.py and tta/adapt.py: sizes, resampling rules and the whole pipeline."""

import types

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from oclr_jax.config.loading import load_config
from oclr_jax.tta import preprocess
from oclr_jax.tta.adapt import adapt_sequence, adapt_sequence_detailed
from oclr_jax.tta.eval_hook import TTARefiner, labels_to_layers, layers_to_labels
from oclr_jax.tta.vit import init_vit_params, vit_from_config


def test_model_input_size_follows_the_official_rule():
    assert preprocess.model_input_size(480, 854) == (480, 832)  # DAVIS: 60 x 104 patches
    assert preprocess.model_input_size(854, 480) == (832, 480)
    assert preprocess.model_input_size(360, 640) == (480, 832)
    assert preprocess.model_input_size(540, 960) == (480, 832)
    with pytest.raises(ValueError, match="too small"):
        preprocess.model_input_size(100, 110, short_side=16, multiple=64)


@pytest.mark.parametrize("in_hw,out_hw", [((480, 854), (60, 104)), ((37, 23), (80, 50)),
                                          ((100, 100), (7, 13))])
def test_nearest_resample_matches_pil(in_hw, out_hw):
    labels = np.random.default_rng(0).integers(0, 4, size=in_hw).astype(np.uint8)
    expected = np.asarray(Image.fromarray(labels).resize(out_hw[::-1], Image.NEAREST))
    ours = preprocess.resize_nearest(labels[None], out_hw)[0]
    np.testing.assert_array_equal(ours, expected)


def test_normalize_frames():
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 20, 30, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)
    same = preprocess.normalize_frames(frames, (20, 30), mean, std)
    np.testing.assert_allclose(same[1, 3, 4], (frames[1, 3, 4] / 255 - mean) / std, rtol=1e-5)
    resized = preprocess.normalize_frames(frames, (16, 32), mean, std)
    expected = cv2.resize(frames[0], (32, 16), interpolation=cv2.INTER_LINEAR) / 255.0
    np.testing.assert_allclose(resized[0], (expected - mean) / std, rtol=1e-5, atol=1e-6)


def test_check_sequence_errors():
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    masks = np.zeros((3, 16, 16, 2), bool)
    preprocess.check_sequence(frames, masks)
    with pytest.raises(ValueError, match="uint8"):
        preprocess.check_sequence(frames.astype(np.float32), masks)
    with pytest.raises(ValueError, match="3 frames but 2 flow masks"):
        preprocess.check_sequence(frames, masks[:2])
    overlapping = masks.copy()
    overlapping[0, 0, 0] = True
    with pytest.raises(ValueError, match="modal"):
        preprocess.check_sequence(frames, overlapping)
    with pytest.raises(ValueError, match="binary"):
        preprocess.check_sequence(frames, masks.astype(np.float32) + 0.3)


def _numpy_bilinear_matrix(in_size, factor):
    """torch bilinear, align_corners=False: source (o + 0.5) / factor - 0.5, clamped at 0."""
    matrix = np.zeros((in_size * factor, in_size))
    for o in range(in_size * factor):
        src = max((o + 0.5) / factor - 0.5, 0.0)
        low = min(int(np.floor(src)), in_size - 1)
        high = min(low + 1, in_size - 1)
        matrix[o, low] += 1 - (src - low)
        matrix[o, high] += src - low
    return matrix


def test_soft_labels_to_masks_matches_an_independent_computation():
    soft = np.random.default_rng(2).random((2, 4, 6, 3)).astype(np.float32)
    rows, cols = _numpy_bilinear_matrix(4, 8), _numpy_bilinear_matrix(6, 8)
    expected = np.zeros((2, 32, 48, 2), bool)
    for t in range(2):
        up = np.einsum("yi,xj,ijc->yxc", rows, cols, soft[t].astype(np.float64))
        low, high = up.min((0, 1)), up.max((0, 1))
        labels = ((up - low) / (high - low)).argmax(-1)  # per-channel min-max, then argmax
        expected[t] = labels[..., None] == np.arange(1, 3)
    np.testing.assert_array_equal(preprocess.soft_labels_to_masks(soft, 8, (32, 48)), expected)


def test_official_stretch_lets_a_vanished_layer_win_its_leak():
    soft = np.zeros((1, 4, 6, 3), np.float32)
    soft[..., 0] = 1.0
    soft[0, 1:3, 1:3] = (0.05, 0.95, 0.0)  # layer 0 (channel 1)
    soft[0, 3, 5] = (0.998, 0.0, 0.002)  # layer 1 left the view: a 0.2% leak remains
    official = preprocess.soft_labels_to_masks(soft, 8, (32, 48))
    assert official[0, 28, 44, 1]  # stretched to 1, it beats the background's 0.998
    guarded = preprocess.soft_labels_to_masks(soft, 8, (32, 48), min_peak=0.05)
    assert not guarded[..., 1].any()
    np.testing.assert_array_equal(guarded[..., 0], official[..., 0])


def test_grid_labels_of_patch_aligned_masks():
    masks = np.zeros((2, 32, 48, 2), bool)
    masks[0, 8:24, 16:32, 0] = True
    masks[1, 0:8, 40:48, 1] = True
    masks[1, 16:32, 0:16, 0] = True
    one_hot = preprocess.grid_one_hot(masks, (4, 6))
    assert one_hot.shape == (2, 4, 6, 3) and (one_hot.sum(-1) == 1).all()
    np.testing.assert_array_equal(one_hot[0, 1:3, 2:4, 1], 1)
    np.testing.assert_array_equal(one_hot[1, 0, 5], [0, 0, 1])
    back = preprocess.soft_labels_to_masks(one_hot, 8, (32, 48))
    # Bilinear upsampling + argmax keeps the blocks but rounds off their convex corners away
    # from the image border: 6 pixels per corner (where the 2-D weight of the patch < 0.5);
    # frame 0 has 4 such corners, each layer of frame 1 one.
    assert (back != masks).sum() == 6 * (4 + 1 + 1)
    np.testing.assert_array_equal(back[0, 10:22, 18:30, 0], True)


def _tiny_config():
    # A layer leaves the view in the test clip: stop its leaked mass being stretched (below).
    return load_config("configs/tiny.py", ["tta.short_side=48", "tta.min_channel_peak=0.05"]).tta


def _content_only_params(config):
    """A ViT whose patch features depend only on the patch's pixels: zero positional
    embedding, and every block an identity (zero attention and MLP output projections)."""
    params = init_vit_params(vit_from_config(config), seed=0)
    params = jax.tree.map(lambda x: x, params)
    params["pos_embed"] = jnp.zeros_like(params["pos_embed"])
    for name in params:
        if name.startswith("blocks_"):
            for layer in (params[name]["attn"]["proj"], params[name]["mlp"]["fc2"]):
                layer["kernel"] = jnp.zeros_like(layer["kernel"])
                layer["bias"] = jnp.zeros_like(layer["bias"])
    return params


def _panning_sequence(num_frames=8, corrupted_frame=5):
    """Random texture seen by a camera panning 8 px (one patch) per frame; layer 0 is a world
    region of 2 x 3 patches, layer 1 one of 1 x 2 patches that leaves the view after frame 4.
    One frame's flow mask of layer 0 is shifted by 3 patches."""
    rng = np.random.default_rng(0)
    world = rng.integers(0, 256, size=(48, 96 + 8 * (num_frames - 1), 3), dtype=np.uint8)
    world_layers = np.zeros(world.shape[:2] + (2,), bool)
    world_layers[16:32, 56:80, 0] = True
    world_layers[0:8, 24:40, 1] = True
    frames = np.stack([world[:, 8 * t:8 * t + 96] for t in range(num_frames)])
    truth = np.stack([world_layers[:, 8 * t:8 * t + 96] for t in range(num_frames)])
    flow_masks = truth.copy()
    flow_masks[corrupted_frame, :, :, 0] = np.roll(truth[corrupted_frame, :, :, 0], 24, axis=1)
    return frames, flow_masks, truth


def test_adapt_sequence_repairs_an_inconsistent_flow_mask():
    config = _tiny_config()
    frames, flow_masks, truth = _panning_sequence()
    result = adapt_sequence_detailed(frames, flow_masks, _content_only_params(config), config)
    assert result.masks.shape == flow_masks.shape and result.masks.dtype == bool
    assert result.consistency_errors.shape == (7,)
    assert int(np.argmax(result.consistency_errors)) == 4  # frame 5 disagrees most
    key = result.key_frame
    assert key != 5 and result.consistency_errors[key - 1] < result.mean_error
    np.testing.assert_array_equal(result.masks[key], flow_masks[key])
    assert result.finetune_losses.shape == (config.num_iterations,)
    assert np.isfinite(result.finetune_losses).all()
    for frame in set(range(len(frames))) - {key}:  # the key frame keeps its flow mask (above)
        # Patches whose content is visible in the key frame have a chain of true matches; the
        # masks are compared at patch centres (patch borders depend on the soft labels).
        first, last = max(key - frame, 0), key - frame + 12
        np.testing.assert_array_equal(result.masks[frame, 4::8, 4::8][:, first:last],
                                      truth[frame, 4::8, 4::8][:, first:last],
                                      err_msg=f"frame {frame}")
    assert not np.array_equal(flow_masks[5], truth[5])  # the repair was needed


def test_single_frame_and_bad_input():
    config = _tiny_config()
    frames = np.zeros((1, 48, 96, 3), np.uint8)
    masks = np.zeros((1, 48, 96, 3), bool)
    masks[0, :8, :8, 2] = True
    np.testing.assert_array_equal(adapt_sequence(frames, masks, {}, config), masks)
    with pytest.raises(ValueError, match="uint8"):
        adapt_sequence(frames.astype(np.float32), masks, {}, config)


def test_refiner_hook_reads_frames_and_keeps_label_ids(tmp_path):
    config = _tiny_config()
    frames, flow_masks, _ = _panning_sequence()
    paths = []
    for t, frame in enumerate(frames):
        paths.append(str(tmp_path / f"{t:05d}.png"))
        Image.fromarray(frame).save(paths[-1])
    labels = layers_to_labels(flow_masks)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels_to_layers(labels), flow_masks)
    params = _content_only_params(config)
    refiner = TTARefiner(params, config, checkpoint="dino.pth")
    refined = refiner(types.SimpleNamespace(image_paths=tuple(paths)), labels)
    expected = adapt_sequence(frames, flow_masks, params, config)
    np.testing.assert_array_equal(refined, layers_to_labels(expected))
    assert refiner.last_info["key_frame"] != 5
    assert repr(refiner) == repr(TTARefiner({}, config, checkpoint="dino.pth"))
    assert "dino.pth" in repr(refiner) and '"window": 7' in repr(refiner)
    with pytest.raises(ValueError, match="missing.png: cannot read"):
        refiner(types.SimpleNamespace(image_paths=(str(tmp_path / "missing.png"),)), labels[:1])
