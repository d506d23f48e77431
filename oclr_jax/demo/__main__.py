"""`python -m oclr_jax.demo`: the command line; the work is in `oclr_jax.demo.run`."""

import sys

from oclr_jax.demo.run import main
from oclr_jax.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
