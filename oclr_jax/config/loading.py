"""Loading `ml_collections` configs from files, with command-line overrides.

A config file defines `get_config(arg: str | None = None) -> ConfigDict`.  A spec is
`path/to/file.py` or `path/to/file.py:arg` (the `:arg` is handed to `get_config`, the
big_vision `:runlocal` idiom), or the name of a config that ships inside the package
(`paper`, also accepted as `oclr_paper` / `oclr_paper.py`), which needs no checkout.
Config files build on the packaged defaults by importing `oclr_jax.config.paper`; nothing is
put on `sys.path`.  Overrides are `dotted.key=value` strings whose value is parsed as a Python
literal and must keep the type of the field it replaces.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Callable, Iterable, Sequence

import ml_collections

from oclr_jax.config import paper
from oclr_jax.errors import UserError

# Configs that ship inside the package, by the names a command line may give them.
PACKAGED_CONFIGS: dict[str, Callable[..., ml_collections.ConfigDict]] = {
    "paper": paper.get_config, "oclr_paper": paper.get_config,
}


class ConfigError(UserError, ValueError):
    """A config file or override is wrong."""


def _import_file(path: str):
    name = "_oclr_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: a config file must define get_config()")
    return module


def packaged_config_name(path: str) -> str | None:
    """The packaged config a spec names (`paper`, `oclr_paper.py`), or None for a file path."""
    name = path.removesuffix(".py")
    if name in PACKAGED_CONFIGS and not os.path.isfile(path):
        return name
    return None


def resolve_config_path(path: str) -> str:
    """The config file a spec names; an error naming the spec when there is none."""
    if os.path.isfile(path):
        return path
    raise ConfigError(f"config file {path!r} not found", where="--config",
                      fix=f"give a config file path, or one of {sorted(PACKAGED_CONFIGS)}")


def parse_value(text: str):
    """A Python literal, or the text itself when it is not one (so `name=foo` works)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
    """Applies one `a.b.c=value` override in place, keeping the field's type."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    key, text = assignment.split("=", 1)
    key = key.strip().removeprefix("--").removeprefix("config.")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise ConfigError(f"override {assignment!r}: no config group {part!r}")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"override {assignment!r}: unknown key {key!r}; known here: {sorted(node.keys())}")
    value = parse_value(text.strip())
    old = node[leaf]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if old is not None and value is not None and type(old) is not type(value):
        raise ConfigError(
            f"override {assignment!r}: {key} is {type(old).__name__}, got {type(value).__name__}")
    with node.ignore_type():
        node[leaf] = value


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads `file.py[:arg]` and applies the overrides.  Returns an unlocked ConfigDict."""
    path, _, arg = spec.partition(":")
    packaged = packaged_config_name(path)
    get_config = (PACKAGED_CONFIGS[packaged] if packaged
                  else _import_file(resolve_config_path(path)).get_config)
    config = get_config(arg) if arg else get_config()
    config = ml_collections.ConfigDict(config)
    for assignment in overrides:
        apply_override(config, assignment)
    return config


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.key=value` arguments from the rest of a command line."""
    overrides, rest = [], []
    for arg in argv:
        (overrides if arg.startswith("--config.") else rest).append(arg)
    return [a[len("--config."):] for a in overrides], rest
