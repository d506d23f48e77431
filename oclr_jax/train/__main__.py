"""`python -m oclr_jax.train`: the command line; the work is in `oclr_jax.train.trainer`."""

import sys

from oclr_jax.errors import run_cli
from oclr_jax.train.trainer import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
