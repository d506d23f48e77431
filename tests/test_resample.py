"""Each resampling rule against the library it claims to reproduce, on awkward sizes."""

import numpy as np
import pytest
from PIL import Image

from oclr_jax import resample

# Shrinking and growing, co-prime and near-equal sizes, 1-pixel edges, the DAVIS/TTA sizes.
SIZES = [(832, 854), (854, 832), (480, 60), (60, 480), (104, 832), (7, 3), (3, 7), (1, 5),
         (5, 1), (13, 13), (224, 128), (128, 225), (999, 1000), (1000, 999), (17, 64)]


def _pil_reference(in_size: int, out_size: int) -> np.ndarray:
    row = np.arange(in_size, dtype=np.int32)[None].repeat(2, 0)
    return np.array(Image.fromarray(row, mode="I").resize((out_size, 2), Image.NEAREST))[0]


@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_pil_nearest_matches_pil(in_size, out_size):
    np.testing.assert_array_equal(resample.pil_nearest_indices(in_size, out_size),
                                  _pil_reference(in_size, out_size))


def test_pil_nearest_matches_pil_on_many_random_sizes():
    rng = np.random.default_rng(0)
    for in_size, out_size in rng.integers(1, 1500, size=(400, 2)):
        np.testing.assert_array_equal(resample.pil_nearest_indices(int(in_size), int(out_size)),
                                      _pil_reference(int(in_size), int(out_size)),
                                      err_msg=f"{in_size} -> {out_size}")


def test_pil_nearest_takes_the_lower_index_at_half_way_832_to_854():
    """The case the closed form floor((i + 0.5) * in / out) gets wrong (every DAVIS frame)."""
    assert resample.pil_nearest_indices(832, 854)[640] == 623
    assert int(np.floor((640 + 0.5) * 832 / 854)) == 624


@pytest.mark.torch
@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_torch_nearest_matches_torch(in_size, out_size):
    torch = pytest.importorskip("torch")
    source = torch.arange(in_size, dtype=torch.float32)[None, None, None]  # (1, 1, 1, W)
    expected = torch.nn.functional.interpolate(source, size=(1, out_size), mode="nearest")
    np.testing.assert_array_equal(resample.torch_nearest_indices(in_size, out_size),
                                  expected[0, 0, 0].numpy().astype(np.int64))


@pytest.mark.torch
@pytest.mark.parametrize("in_hw,out_hw", [((37, 53), (128, 224)), ((128, 224), (37, 53)),
                                          ((480, 854), (128, 224)), ((5, 7), (6, 11)),
                                          ((1, 9), (4, 3))])
def test_bilinear_matches_torch_half_pixel_bilinear(in_hw, out_hw):
    """float32: OpenCV INTER_LINEAR = torch bilinear, align_corners=False, no antialias."""
    torch = pytest.importorskip("torch")
    image = np.random.default_rng(1).normal(size=in_hw + (3,)).astype(np.float32) * 20
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None], size=out_hw, mode="bilinear",
        align_corners=False)[0].permute(1, 2, 0).numpy()
    # OpenCV computes its weights in float32: ~1e-5 of the values (std 20); a different
    # rule (corner-aligned, antialiased) differs by whole units.
    np.testing.assert_allclose(resample.bilinear(image, out_hw), expected, atol=1e-3)


@pytest.mark.parametrize("in_hw,out_hw", [((37, 53), (128, 224)), ((128, 224), (37, 53)),
                                          ((5, 7), (6, 11))])
def test_tf_bilinear_is_the_same_rule(in_hw, out_hw):
    """The tf.data pipeline's resize (augment.py) follows the same rule on float32."""
    tf = pytest.importorskip("tensorflow")
    image = np.random.default_rng(2).normal(size=in_hw + (5,)).astype(np.float32)
    expected = tf.image.resize(image, out_hw, method="bilinear").numpy()
    np.testing.assert_allclose(resample.bilinear(image, out_hw), expected, atol=1e-4)


def test_bilinear_keeps_shape_dtype_and_single_channels():
    frame = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10, 1)
    out = resample.bilinear(frame, (3, 4))
    assert out.shape == (3, 4, 1) and out.dtype == np.uint8
    assert resample.bilinear(frame, (6, 10)) is frame


def test_resize_flow_scales_the_vectors():
    flow = np.ones((8, 10, 2), np.float32) * np.array([2.0, 3.0], np.float32)
    out = resample.resize_flow(flow, 4, 20)
    np.testing.assert_allclose(out[..., 0], 4.0)  # u * 20 / 10
    np.testing.assert_allclose(out[..., 1], 1.5)  # v * 4 / 8


def test_resize_nearest_applies_the_rule_per_axis():
    array = np.arange(5 * 7).reshape(1, 5, 7)
    out = resample.resize_nearest(array, (3, 9), resample.pil_nearest_indices, axes=(1, 2))
    rows, cols = resample.pil_nearest_indices(5, 3), resample.pil_nearest_indices(7, 9)
    np.testing.assert_array_equal(out[0], array[0][rows][:, cols])


@pytest.mark.torch
def test_upsample_linear_matches_torch_and_refuses_to_shrink():
    torch = pytest.importorskip("torch")
    grid = np.random.default_rng(3).normal(size=(2, 5, 7, 3)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(grid).permute(0, 3, 1, 2), size=(40, 56), mode="bilinear",
        align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(resample.upsample_linear(grid, (40, 56))), expected,
                               atol=1e-5)
    with pytest.raises(ValueError, match="only grows"):
        resample.upsample_linear(grid, (4, 56))


def test_opencv_nearest_is_floor_of_the_scaled_index():
    labels = np.arange(7 * 9, dtype=np.uint8).reshape(7, 9)
    out = resample.opencv_nearest(labels, (5, 13))
    rows = np.floor(np.arange(5) * 7 / 5).astype(int)
    cols = np.floor(np.arange(13) * 9 / 13).astype(int)
    np.testing.assert_array_equal(out, labels[rows][:, cols])


def test_every_caller_uses_the_rule_it_names():
    """The losses and eval's 'nearest' follow torch; TTA follows PIL (the 832 -> 854 column)."""
    import jax.numpy as jnp

    from oclr_jax import losses
    from oclr_jax.eval import inference
    from oclr_jax.tta import preprocess

    row = np.arange(832, dtype=np.float32)
    masks = jnp.asarray(row[None, None, None, :, None])  # (B, T, H=1, W=832, K=1)
    torch_rule = resample.torch_nearest_indices(832, 854)
    np.testing.assert_array_equal(
        np.asarray(losses.resize_masks_nearest(masks, (1, 854)))[0, 0, 0, :, 0], torch_rule)
    onehot = (np.arange(832)[None, None, :, None] == torch_rule[640])  # (T, H, W, K)
    up = inference.upsample_layers(onehot.astype(np.float32), (1, 854), "nearest")
    np.testing.assert_array_equal(np.flatnonzero(up[0, 0, :, 0]),
                                  np.flatnonzero(torch_rule == torch_rule[640]))
    labels = np.arange(832, dtype=np.int32)[None, None]  # (T, H, W)
    np.testing.assert_array_equal(preprocess.resize_nearest(labels, (1, 854))[0, 0],
                                  resample.pil_nearest_indices(832, 854))
    assert preprocess.resize_nearest(labels, (1, 854))[0, 0, 640] == 623
