"""The recipe of the shipped demo checkpoint: the tiny model trained on the 2-core CPU.

`configs/tiny.py` (64x112, T=8, f=8 so c=128, 2+2 transformer layers, K=3) with batch 4,
sequences rendered on the fly by our generator (every step sees new ones), and heavier order and
modal losses than the paper's 0.05 / 0.1 (measured in docs/demo.md).  One command reproduces it:

    python -m oclr_jax.train --config configs/demo_cpu.py --workdir RUN

The shipped checkpoint is stage 3 of docs/demo.md: this config warm-started from the stage-2
params (`--config.train.init_params_from=STAGE2`), step 14,000.  To continue from the shipped
params instead of from scratch (fresh optimizer, short warm-up):
`--config.train.init_params_from=oclr_jax/assets/demo_checkpoint`.
"""

import os

import ml_collections

from oclr_jax.config.loading import load_config


def get_config() -> ml_collections.ConfigDict:
    config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py"))
    config.data.source = "synthetic_inline"  # rendered in memory, never repeated: no files.
    config.data.synthetic_split = "syn_train"
    config.data.synthetic_num_objects = ()   # e.g. (2, 3): train on those counts only.
    config.train.batch_size = 4
    config.train.learning_rate = 3e-4
    config.train.warmup_steps = 200
    config.train.decay_steps = 6_400         # lr halves at steps 6,400, 12,800, ... (docs/demo.md)
    config.train.num_steps = 100_000         # stopped (SIGTERM saves); the step with the best
                                             # validation modal J exported by hand (14,000).
    config.train.log_every = 50
    config.train.checkpoint_every = 250
    config.train.keep_checkpoints = 1000     # each ~12 MB; the learning curve reads them all.
    config.train.eval_every = 1000
    config.train.eval_num_sequences = 48     # syn_val seed 0, rendered (not the held-out set).
    config.train.dropout_rng = "rbg"         # 12% faster CPU steps, masks still reproducible.
    config.loss.order_weight = 0.5           # paper 0.05: after 2,050 such steps the order
    config.loss.modal_weight = 0.5           # logits did not depend on the clip (docs/demo.md).
    return config
