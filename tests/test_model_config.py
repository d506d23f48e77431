"""One `ModelConfig` read by the model, the checkpoint loader and the port: every caller agrees."""

import dataclasses

import jax
import numpy as np
from flax import traverse_util

from oclr_jax import checkpoint
from oclr_jax import model as model_lib
from oclr_jax.config import paper
from oclr_jax.config.loading import load_config
from oclr_jax.config.model import SIZE_FIELDS, ModelConfig
from oclr_jax.port import convert

OTHER = ModelConfig(in_channels=2, unet_features=8, num_queries=2, num_layers=2, num_heads=4,
                    ff_dim=128)


def _shapes(tree) -> dict:
    return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def test_paper_config_is_the_official_model():
    assert ModelConfig.from_config(paper.get_config()) == ModelConfig()


def test_model_from_config_and_build_model_agree():
    config = load_config("configs/tiny.py")
    built = model_lib.build_model(ModelConfig.from_config(config))
    legacy = model_lib.model_from_config(config.model, in_channels=4)
    for field in dataclasses.fields(ModelConfig):
        expected = getattr(ModelConfig.from_config(config), field.name)
        for model in (built, legacy):
            value = getattr(model, field.name)
            assert (np.dtype(value) == np.dtype(expected) if field.name == "dtype"
                    else value == expected), field.name


def test_checkpoint_config_from_port_sizes_round_trips():
    """A .pth's inferred sizes -> the checkpoint's config -> the same model again."""
    config = checkpoint.config_from_inferred(OTHER)
    assert ModelConfig.from_config(config).sizes() == OTHER.sizes()
    assert tuple(config.data.gaps) == (1,)  # 2 channels: one gap


def test_port_checkpoint_and_model_see_the_same_parameters():
    config = checkpoint.config_from_inferred(OTHER)
    from_checkpoint = _shapes(checkpoint.abstract_params(config))
    from_model = _shapes(model_lib.abstract_params(model_lib.build_model(OTHER)))
    assert from_checkpoint == from_model == convert.target_param_shapes(OTHER)
    inferred = convert.infer_flax_shape(checkpoint.abstract_params(config))
    assert inferred.sizes() == OTHER.sizes()
    assert set(OTHER.sizes()) == set(SIZE_FIELDS)


def test_init_params_is_new_params_jitted():
    model = model_lib.build_model(OTHER)
    key = jax.random.PRNGKey(3)
    eager = model_lib.new_params(model, key)
    jitted = model_lib.init_params(model, key)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
