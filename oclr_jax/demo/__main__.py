"""`python -m oclr_jax.demo`: the command line; the work is in `oclr_jax.demo.run`."""

import sys

from oclr_jax.errors import run_cli
from oclr_jax.demo.run import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
