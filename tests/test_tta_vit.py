"""tta/vit.py: parity with a PyTorch DINO-named ViT and DINO's positional-embedding resize."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch_vit_reference import ReferenceViT, randomize_  # noqa: E402

from oclr_jax.tta import dino_port  # noqa: E402
from oclr_jax.tta.vit import VisionTransformer, interpolate_pos_embed, torch_bicubic_matrix  # noqa: E402

pytestmark = pytest.mark.torch

TINY = dict(patch_size=8, dim=48, depth=3, num_heads=3, grid=4)


def _tiny_pair(seed=0):
    reference = randomize_(ReferenceViT(**TINY), seed).eval()
    model = VisionTransformer(patch_size=8, embed_dim=48, depth=3, num_heads=3, pretrain_grid=4)
    params = dino_port.state_dict_to_flax(reference.state_dict(), model)
    return reference, model, params


def _torch_features(reference, images_nhwc):
    with torch.no_grad():
        return reference.features(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).numpy()


@pytest.mark.parametrize("height,width", [(32, 32), (40, 56), (64, 24)])
def test_features_match_pytorch_reference(height, width):
    reference, model, params = _tiny_pair()
    images = np.random.default_rng(1).normal(size=(2, height, width, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(images)))  # (B,h,w,D)
    expected = _torch_features(reference, images)  # (B, h*w, D)
    assert ours.shape == (2, height // 8, width // 8, 48)
    np.testing.assert_allclose(ours.reshape(expected.shape), expected, atol=1e-4, rtol=0)


def test_split_forward_equals_full_forward():
    # The fine-tuning caches the output of the frozen blocks; the split must be exact.
    _, model, params = _tiny_pair(seed=3)
    images = jnp.asarray(np.random.default_rng(2).normal(size=(1, 40, 56, 3)), jnp.float32)
    full = jax.jit(model.apply)({"params": params}, images).reshape(1, 35, 48)
    tokens = jax.jit(lambda p, x: model.apply(
        {"params": p}, x, method=lambda m, y: m.run_blocks(m.embed(y), 0, 1)))(params, images)
    split = jax.jit(lambda p, x: model.apply(
        {"params": p}, x, method=lambda m, y: m.patch_features(m.run_blocks(y, 1))))(params, tokens)
    np.testing.assert_allclose(np.asarray(split), np.asarray(full), atol=1e-6)


def test_pos_embed_resize_matches_dino_at_480x832():
    # ViT-S/8 pretrained on 224x224 (28x28 patches), applied at 480x832 (60x104 patches).
    pos_embed = np.random.default_rng(0).normal(size=(1, 1 + 28 * 28, 384)).astype(np.float32)
    ours = np.asarray(interpolate_pos_embed(jnp.asarray(pos_embed), (60, 104)))
    grid = torch.from_numpy(pos_embed[:, 1:]).reshape(1, 28, 28, 384).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, scale_factor=(60.1 / 28, 104.1 / 28), mode="bicubic")
    expected = resized.permute(0, 2, 3, 1).reshape(1, 60 * 104, 384).numpy()
    assert ours.shape == (1, 1 + 60 * 104, 384)
    np.testing.assert_array_equal(ours[:, :1], pos_embed[:, :1])
    np.testing.assert_allclose(ours[:, 1:], expected, atol=2e-5, rtol=0)


def test_bicubic_matrix_uses_the_given_scale_not_the_size_ratio():
    # torch maps output o to (o + 0.5) / scale - 0.5 with the scale passed (28 -> 60 with
    # scale 60.1/28), which differs from the 28/60 size ratio; the matrix must follow torch.
    signal = np.random.default_rng(4).normal(size=28)
    ours = torch_bicubic_matrix(28, 60, 60.1 / 28) @ signal
    expected = F.interpolate(torch.from_numpy(signal).view(1, 1, 1, 28),
                             scale_factor=(1.0, 60.1 / 28), mode="bicubic").view(-1).numpy()
    ratio_only = F.interpolate(torch.from_numpy(signal).view(1, 1, 1, 28), size=(1, 60),
                               mode="bicubic").view(-1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    assert np.abs(ours - ratio_only).max() > 1e-3
    # Rows sum to one (cubic convolution weights with border clamping).
    np.testing.assert_allclose(torch_bicubic_matrix(28, 60, 60.1 / 28).sum(1), 1.0, atol=1e-12)


def test_square_pretraining_grid_is_used_unchanged():
    pos_embed = jnp.asarray(np.random.default_rng(5).normal(size=(1, 17, 8)), jnp.float32)
    assert interpolate_pos_embed(pos_embed, (4, 4)) is pos_embed
    with pytest.raises(ValueError, match="not a square grid"):
        interpolate_pos_embed(pos_embed[:, :15], (4, 4))


def test_image_size_must_be_a_multiple_of_the_patch():
    _, model, params = _tiny_pair()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.apply({"params": params}, jnp.zeros((1, 36, 40, 3)))


def test_parameter_tree_has_dino_structure():
    model = VisionTransformer(patch_size=8, embed_dim=48, depth=3, num_heads=3, pretrain_grid=4)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    params = shapes["params"]
    assert sorted(params) == ["blocks_0", "blocks_1", "blocks_2", "cls_token", "norm",
                              "patch_embed", "pos_embed"]
    assert params["pos_embed"].shape == (1, 17, 48)
    assert params["patch_embed"]["proj"]["kernel"].shape == (8, 8, 3, 48)
    assert params["blocks_2"]["attn"]["qkv"]["kernel"].shape == (48, 144)
    assert params["blocks_2"]["mlp"]["fc1"]["kernel"].shape == (48, 192)
