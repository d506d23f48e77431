"""`python -m oclr_jax.eval`: the command line; the work is in `oclr_jax.eval.runner`."""

import sys

from oclr_jax.errors import run_cli
from oclr_jax.eval.runner import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
