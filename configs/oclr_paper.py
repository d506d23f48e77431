"""The paper's settings (NeurIPS 2022 OCLR and the official code): 128x224, T=30, batch 2.

The values live in the package (`oclr_jax/config/paper.py`) because loading an official `.pth`
and evaluating need them without a checkout; this file is the experiment entry point:

    python -m oclr_jax.train --config configs/oclr_paper.py --workdir DIR
"""

import ml_collections

from oclr_jax.config import paper


def get_config() -> ml_collections.ConfigDict:
    return paper.get_config()
