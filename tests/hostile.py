"""Helpers of the hostile-input tests: run a command line as a user does and check how it ends.

Every check of `assert_user_error` is what a user mistake must give: a non-zero exit (2), no
Python traceback, the culprit (file or flag) named in the message.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

from oclr_jax.data.build_tfds import descendants

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env() -> dict:
    """The test's environment with this checkout first on the path (subprocesses too)."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = REPO + os.pathsep + environment.get("PYTHONPATH", "")
    environment.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return environment


def run(module: str, *args, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m <module> args...` to completion."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd or REPO,
                          env=env(), capture_output=True, text=True, timeout=timeout)


def start(module: str, *args, cwd=None) -> subprocess.Popen:
    """`python -m <module> args...` in its own process group (as a shell job: Ctrl-C reaches
    the whole group)."""
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=cwd or REPO,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def assert_user_error(result: subprocess.CompletedProcess, *culprits: str, status: int = 2):
    """Exit `status`, no traceback, an `error:` line naming every culprit."""
    text = result.stderr
    assert result.returncode == status, (result.returncode, result.stdout[-2000:], text[-4000:])
    assert "Traceback" not in text, text[-4000:]
    assert "error:" in text, text[-4000:]
    for culprit in culprits:
        assert culprit in text, (culprit, text[-4000:])


def python_descendants(pid: int) -> list[int]:
    """The descendants of `pid` that run Python (worker processes; not the short-lived helper
    programs, e.g. `ldconfig`, that a library may spawn while it imports)."""
    found = []
    for child in descendants(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"python" in f.read():
                    found.append(child)
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def interrupt(process: subprocess.Popen, signum: int, timeout: float = 60) -> tuple[int, str]:
    """Sends `signum` (SIGINT to the whole group, as Ctrl-C; others to the process) and
    returns (exit status, stderr)."""
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        raise AssertionError(f"still running {timeout}s after {signum!r}: {err[-3000:]}") from None
    return process.returncode, err


def interrupt_when_ready(start, ready, signum: int, reset, attempts: int = 3):
    """Starts a job (`start()` -> Popen), waits until `ready(process)` is truthy, sends
    `signum` and returns (ready's value, exit status, stderr).

    On a loaded machine the job can finish between the moment it is seen ready and the signal
    (exit 0: nothing was interrupted, nothing tested); then `reset()` clears its output and the
    job is started again, up to `attempts` times.
    """
    for _ in range(attempts):
        process = start()
        value = ready(process)
        status, err = interrupt(process, signum)
        if status != 0 or signum == signal.SIGKILL:
            return value, status, err
        reset()
    raise AssertionError(f"the job finished before {signal.Signals(signum).name} landed in "
                         f"{attempts} attempts: nothing was interrupted")


def tree_digest(root: str, skip=()) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` (names in `skip` left out)."""
    digest = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if any(part in skip for part in rel.split(os.sep)):
                continue
            with open(path, "rb") as f:
                digest[rel] = hashlib.sha256(f.read()).hexdigest()
    return digest


def snapshot(root: str) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of everything under `root`: to show nothing changed."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            seen[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return seen


def call(module: str, *args) -> subprocess.CompletedProcess:
    """The command's `main` under `run_cli` in this process (the same wrapper and messages as
    `run`, without the seconds of a fresh interpreter importing JAX and TensorFlow): for the
    many argument mistakes that fail before any work."""
    import contextlib
    import importlib
    import io

    from oclr_jax.errors import run_cli

    try:
        command = importlib.import_module(module + ".__main__")
    except ImportError:
        command = importlib.import_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = run_cli(command.main, [str(a) for a in args])
        except SystemExit as exit_:  # argparse
            status = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess([module, *map(str, args)], status, out.getvalue(),
                                       err.getvalue())
