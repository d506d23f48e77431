"""Atomic writes: a file or a whole folder appears under its final name complete, or not at all.

Everything the project writes for users (flows, masks, results, checkpoints, reports) goes
through here, so an interrupted job never leaves a half-written file that a resumed job would
trust.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """Yields a binary file open on a temporary file beside `path`; renames it onto `path`
    when the block ends normally, removes it when the block raises."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it onto `path`."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text (newlines as given)."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def staged_directory(final_path: str, replace: bool = True) -> Iterator[str]:
    """Yields a temporary folder beside `final_path`; renames it onto `final_path` on success.

    On an exception the temporary folder is removed and `final_path` is left as it was.  With
    `replace`, an existing `final_path` is replaced; otherwise FileExistsError is raised first.
    """
    final_path = os.path.abspath(final_path)
    if os.path.exists(final_path) and not replace:
        raise FileExistsError(f"{final_path}: already exists")
    parent = os.path.dirname(final_path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(final_path) + "-", dir=parent)
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; outputs are shared on clusters.
        if os.path.exists(final_path):
            shutil.rmtree(final_path)
        os.replace(staging, final_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
