"""Loading `ml_collections` configs from `configs/*.py` files, with command-line overrides.

A config file defines `get_config(arg: str | None = None) -> ConfigDict`.  A spec is
`path/to/file.py` or `path/to/file.py:arg` (the `:arg` is handed to `get_config`, the
big_vision `:runlocal` idiom).  Overrides are `dotted.key=value` strings whose value is parsed
as a Python literal and must keep the type of the field it replaces.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from typing import Iterable, Sequence

import ml_collections

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(ValueError):
    """A config file or override is wrong."""


def _import_file(path: str):
    # configs/ files import each other as the `configs` package (tiny.py shrinks oclr_paper.py).
    for root in (_REPO_ROOT, os.path.dirname(os.path.dirname(os.path.abspath(path)))):
        if root not in sys.path:
            sys.path.insert(0, root)
    name = "_oclr_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: a config file must define get_config()")
    return module


def resolve_config_path(path: str) -> str:
    """Finds a config file given as a path, or as a bare name under the repository's configs/."""
    candidates = [path, os.path.join(_REPO_ROOT, path), os.path.join(_REPO_ROOT, "configs", path),
                  os.path.join(_REPO_ROOT, "configs", path + ".py")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"config file {path!r} not found (looked in: {', '.join(candidates)})")


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
    module = _import_file(resolve_config_path(path))
    config = module.get_config(arg) if arg else module.get_config()
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
