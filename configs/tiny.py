"""The paper's config shrunk to run on a laptop CPU in seconds: 64x112, T=8, f=8 (c=128).

Same code path as `oclr_paper.py`; only sizes and schedules change.
"""

import ml_collections

from oclr_jax.config import paper


def get_config() -> ml_collections.ConfigDict:
    config = paper.get_config()
    config.model.unet_features = 8
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.ff_dim = 128
    config.data.num_frames = 8
    config.data.resolution = (64, 112)
    config.data.shuffle_buffer = 16
    config.train.num_steps = 200
    config.train.learning_rate = 5e-4
    config.train.warmup_steps = 20
    config.train.decay_steps = 100
    config.train.log_every = 10
    config.train.checkpoint_every = 100
    config.train.eval_every = 100
    config.train.eval_num_sequences = 8
    config.eval.window = 8
    config.tta.embed_dim = 48               # a 3-block ViT, 32x32 pretraining grid of 4x4.
    config.tta.depth = 3
    config.tta.num_heads = 3
    config.tta.pretrain_image_size = 32
    config.tta.short_side = 32
    config.tta.size_multiple = 16
    config.tta.num_iterations = 4
    config.tta.warmup_iterations = 2
    config.tta.neighborhood = 3
    return config
