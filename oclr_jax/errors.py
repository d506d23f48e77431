"""The one error model of every command line: user mistakes, interruptions, real bugs.

- A `UserError` (or subclass) is a mistake in what the user gave us: a flag, a file, a config
  value.  The CLI wrapper prints it as `error: <what> (<where>): <what to do>` and exits with
  status 2, without a traceback.
- Ctrl-C (SIGINT) and SIGTERM both mean "stop": a command with work to save installs a
  `StopSignal` and checks it between units of work, so both save and exit the same way; any
  other command ends with `interrupted` and status 130 (SIGINT) or 143 (SIGTERM), no traceback.
- Anything else is a bug and keeps its traceback.

Every `__main__` runs through `run_cli`, so this is the only place that decides how a command
ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Optional, Sequence


class UserError(Exception):
    """A mistake in the user's input, reported without a traceback.

    Attributes:
      what: what is wrong ("checkpoint config is not valid JSON").
      where: the file, folder or flag at fault ("runs/a/config.json", "--threshold"), if any.
      fix: what to do about it ("re-export the checkpoint"), if there is advice to give.
    """

    def __init__(self, what: str, where: Optional[str] = None, fix: Optional[str] = None):
        super().__init__(what)
        self.what = what
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.fix:
            text += f": {self.fix}"
        return text


class Interrupted(Exception):
    """Raised by `StopSignal.raise_if_set` where a command has nothing left to save."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignal:
    """SIGINT and SIGTERM both set a flag that long-running loops poll between units of work.

    Use as a context manager; the previous handlers come back on exit.  Only the main thread
    may install signal handlers, so elsewhere this is a flag that is never set.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)):
        self._signals = tuple(signals)
        self._previous: dict[int, object] = {}
        self.event = threading.Event()
        self.signum: Optional[int] = None

    def _handle(self, signum, _frame) -> None:
        self.signum = signum
        self.event.set()

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def is_set(self) -> bool:
        return self.event.is_set()

    def raise_if_set(self) -> None:
        if self.event.is_set():
            raise Interrupted(self.signum or signal.SIGINT)


def _exit_status_for_signal(signum: int) -> int:
    return 128 + int(signum)


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> int:
    """Runs a command's `main(argv)` under the error model above; returns the exit status."""
    previous_term = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM behaves like Ctrl-C for commands that install no StopSignal of their own.
        def _term(signum, _frame):
            raise Interrupted(signum)
        previous_term = signal.signal(signal.SIGTERM, _term)
    try:
        status = main(argv)
        return int(status or 0)
    except UserError as error:
        sys.stdout.flush()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        sys.stdout.flush()
        print(f"interrupted ({signal.Signals(stop.signum).name})", file=sys.stderr)
        return _exit_status_for_signal(stop.signum)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("interrupted (SIGINT)", file=sys.stderr)
        return _exit_status_for_signal(signal.SIGINT)
    except BrokenPipeError:
        # `... | head` closed our stdout: not an error of ours or the user's.
        return 0
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_writable_parent(path: str, flag: str, what: str = "output folder") -> str:
    """The nearest existing folder above `path`, where `path` will be created, or a UserError
    if that is not a writable folder (a file, a read-only folder).  `what` names `path` in
    the message ("output folder", "output file")."""
    parent = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the {what}: {parent} is not a writable folder",
                        f"{flag} {path}", f"give an {what} in a writable place")
    return parent


def check_output_dir(path: str, flag: str, marker: str, *,
                     owned: Optional[Callable[[str], bool]] = None,
                     replaces: bool = True) -> str:
    """The absolute path of an output folder a command may (re)write, or a UserError.

    A command writes into a new folder, or one that holds its own earlier output (the `marker`
    file it writes there) or nothing at all; it refuses anything else, so that it never
    deletes or overwrites what it did not write.  Called before any work, so a bad path fails
    at once.

    Refused: a file; a folder holding entries that are not the command's (no `marker`); a
    place whose nearest existing parent is not writable, or an existing folder with entries
    that is not writable; with `replaces`, also the working directory, one of its ancestors,
    or the home folder (replacing them would pull the ground from under the user's shell
    even when empty).

    Args:
      path: the folder as the user gave it (named so in the messages).
      flag: the flag or argument that gave it ("--out", "OUT_DIR").
      marker: the name of the file (or folder) the command writes in every output folder; a
        folder holding it is the command's own.  With `owned`, a description of what marks
        the command's folders, for the message.
      owned: for commands whose folders are recognised otherwise (several marker names, a
        set of files together, the files of an older version that wrote no marker): called
        with the absolute path of an existing folder with entries, True if it is the
        command's own.  Default: `marker` is among its entries.
      replaces: True for a command that deletes and rewrites the whole folder (then the
        working directory, its ancestors and the home folder are refused even when they are
        its own).  False for one that only adds to the folder and resumes there (it never
        removes the folder), where `--out .` in a folder of its own is fine.
    """
    absolute = os.path.abspath(path)
    if os.path.exists(absolute) and not os.path.isdir(absolute):
        raise UserError("output path is a file, not a folder", f"{flag} {path}",
                        "give a folder name that does not exist yet")
    cwd = os.path.abspath(os.getcwd())
    home = os.path.abspath(os.path.expanduser("~"))
    if replaces and (absolute == home or cwd == absolute
                     or cwd.startswith(absolute.rstrip(os.sep) + os.sep)):
        raise UserError("output folder is the working directory, one of its parents or the "
                        "home folder, which this command would replace", f"{flag} {path}",
                        "give a new folder, e.g. demo_out")
    entries: list = []
    if os.path.isdir(absolute):
        try:
            entries = os.listdir(absolute)
        except OSError as e:
            raise UserError(f"cannot read the output folder ({e.strerror})", f"{flag} {path}",
                            "give a new folder") from None
        if entries and not (owned(absolute) if owned is not None else marker in entries):
            count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
            raise UserError(f"output folder holds {count} that this command did not write "
                            f"(no {marker} marker)", f"{flag} {path}",
                            "give a new folder, or remove this one yourself" if replaces else
                            "give a new or empty folder, or the folder of an earlier run to "
                            "resume")
    exists = os.path.isdir(absolute)
    # Written into (or, replaced, emptied first): the folder itself must be writable.
    if exists and (entries or not replaces) and not os.access(absolute, os.W_OK | os.X_OK):
        raise UserError("output folder is not writable", f"{flag} {path}",
                        "give a folder in a writable place")
    if replaces or not exists:  # created or replaced from its parent
        check_writable_parent(path, flag)
    return absolute
