"""The Flax RAFT against our PyTorch RAFT reference, with the same random weights and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from raft_fixtures import moving_frames, numpy_state_dict, random_reference  # noqa: E402

from oclr_jax.flow import convert, corr, padding, raft  # noqa: E402
from oclr_jax.flow import torch_reference as ref  # noqa: E402

pytestmark = pytest.mark.torch
FLOW_ATOL = 1e-3  # pixels, float32


@pytest.fixture(scope="module")
def reference():
    model = random_reference(seed=0)
    variables, _ = convert.torch_state_dict_to_flax(numpy_state_dict(model))
    return model, variables


@pytest.fixture(scope="module")
def flow_fns():
    """Jitted Flax RAFT with `iters` traced, so one compilation serves every iteration count."""
    model = raft.RAFT()
    fns = {}
    for impl in corr.CORR_IMPLS:
        fns[impl] = jax.jit(lambda v, a, b, iters, impl=impl:
                            raft.estimate_flow(model, v, a, b, iters, impl)["flow_up"])
    return fns


def torch_flow(model, image1, image2, iters):
    to_torch = lambda x: torch.from_numpy(np.ascontiguousarray(x, np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        _, flow_up = model(to_torch(image1), to_torch(image2), iters=iters)
    return flow_up.permute(0, 2, 3, 1).numpy()


def padded_pair(height, width, seed, pairs=2):
    frames = moving_frames(pairs + 1, height, width, seed=seed, step=(3, -5))
    pads = padding.sintel_padding(height, width)
    image1 = padding.pad_images(frames[:-1], *pads)  # a batch of `pairs` pairs
    image2 = padding.pad_images(frames[1:], *pads)
    return image1.astype(np.float32), image2.astype(np.float32)


@pytest.mark.parametrize("height,width,pairs", [(128, 136, 2), (132, 140, 1)])
def test_flax_raft_matches_torch_reference(reference, flow_fns, height, width, pairs):
    model, variables = reference
    image1, image2 = padded_pair(height, width, seed=height, pairs=pairs)
    assert image1.shape[1:3] == padding.padded_size(height, width)
    largest = 0.0
    for iters in (1, 3, 8):
        expected = torch_flow(model, image1, image2, iters)
        got = np.asarray(flow_fns["all_pairs"](variables, image1, image2, iters))
        assert got.shape == expected.shape == image1.shape[:3] + (2,)
        np.testing.assert_allclose(got, expected, rtol=0, atol=FLOW_ATOL, err_msg=f"iters={iters}")
        largest = max(largest, float(np.abs(expected).max()))
    assert largest > 10.0  # flows of many pixels: the lookups really travel


def test_on_the_fly_correlation_matches_torch_reference(reference, flow_fns):
    model, variables = reference
    image1, image2 = padded_pair(132, 140, seed=1, pairs=1)
    expected = torch_flow(model, image1, image2, 5)
    got = np.asarray(flow_fns["on_the_fly"](variables, image1, image2, 5))
    np.testing.assert_allclose(got, expected, rtol=0, atol=FLOW_ATOL)


def test_module_call_equals_fori_loop_path(reference):
    _, variables = reference
    image1, image2 = padded_pair(128, 128, seed=2, pairs=1)
    model = raft.RAFT()
    unrolled = jax.jit(model.apply, static_argnames="iters")(variables, image1, image2, iters=3)["flow_up"]
    looped = raft.make_flow_fn(model, iters=3)(variables, image1, image2)
    np.testing.assert_allclose(np.asarray(unrolled), np.asarray(looped), rtol=0, atol=1e-4)


def test_correlation_lookup_matches_grid_sample():
    """Every level and window point against torch grid_sample, with coordinates on integers,
    between pixels and far outside the volume."""
    rng = np.random.default_rng(0)
    b, h, w, d = 2, 17, 19, 16  # the coarsest level is 2x2 (1 px wide gives NaN in torch)
    fmap1 = rng.normal(size=(b, h, w, d)).astype(np.float32)
    fmap2 = rng.normal(size=(b, h, w, d)).astype(np.float32)
    coords = np.asarray(raft.coords_grid(b, h, w)).copy()
    coords[0] += rng.uniform(-6, 6, size=(h, w, 2)).astype(np.float32)
    coords[1] += np.round(rng.uniform(-20, 20, size=(h, w, 2))).astype(np.float32)
    pyramid = corr.all_pairs_pyramid(jnp.asarray(fmap1), jnp.asarray(fmap2), 4)
    got = np.asarray(corr.lookup_all_pairs(pyramid, jnp.asarray(coords), 4))
    on_the_fly = np.asarray(corr.lookup_on_the_fly(jnp.asarray(fmap1), corr.feature_pyramid(jnp.asarray(fmap2), 4),
                                                   jnp.asarray(coords), 4))
    to_nchw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)
    expected = ref.CorrPyramid(to_nchw(fmap1), to_nchw(fmap2))(to_nchw(coords)).permute(0, 2, 3, 1).numpy()
    assert got.shape == (b, h, w, 4 * 81)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(on_the_fly, expected, rtol=0, atol=1e-5)


def test_convex_upsampling_matches_reference():
    rng = np.random.default_rng(1)
    flow = rng.normal(size=(2, 5, 7, 2)).astype(np.float32)
    mask = rng.normal(size=(2, 5, 7, 576)).astype(np.float32)
    got = np.asarray(raft.convex_upsample(jnp.asarray(flow), jnp.asarray(mask)))
    expected = ref.convex_upsample(torch.from_numpy(flow).permute(0, 3, 1, 2),
                                   torch.from_numpy(mask).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size,pads", [((480, 854), (0, 0, 1, 1)), ((132, 140), (2, 2, 2, 2)),
                                       ((131, 143), (2, 3, 0, 1)), ((133, 131), (1, 2, 2, 3)),
                                        ((128, 136), (0, 0, 0, 0))])
def test_sintel_padding_is_torch_replicate_split_like_input_padder(size, pads):
    assert padding.sintel_padding(*size) == pads
    image = np.random.default_rng(0).integers(0, 255, (1, 6, 9, 3)).astype(np.float32)
    top, bottom, left, right = pads
    expected = torch.nn.functional.pad(torch.from_numpy(image).permute(0, 3, 1, 2), [left, right, top, bottom],
                                       mode="replicate").permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(padding.pad_images(image, *pads), expected)


def test_too_small_frames_are_refused():
    assert padding.check_size(128, 121) is None  # pads to 128x128
    problem = padding.check_size(120, 300)
    assert "120x300" in problem and ">= 128" in problem
