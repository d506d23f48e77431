"""Configs: the paper defaults the package needs at run time (`paper.py`) and the loader of
config files with `--config.a.b=value` overrides (`loading.py`)."""
