"""The CLI error model: user errors, interruptions and bugs end the way oclr_jax.errors says."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from oclr_jax.errors import Interrupted, StopSignal, UserError, run_cli


def test_user_error_prints_what_where_fix_and_exits_2(capsys):
    def main(argv):
        raise UserError("threshold must be in (0, 1), got 2.0", "--threshold", "pass e.g. 0.5")

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err == "error: threshold must be in (0, 1), got 2.0 (--threshold): pass e.g. 0.5\n"


def test_user_error_without_where_or_fix():
    assert str(UserError("no sequences found")) == "no sequences found"
    assert str(UserError("bad", where="a.json")) == "bad (a.json)"


def test_status_passes_through_and_none_is_zero():
    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(lambda argv: 3, []) == 3


def test_keyboard_interrupt_is_status_130_without_traceback(capsys):
    def main(argv):
        raise KeyboardInterrupt

    assert run_cli(main, []) == 130
    assert capsys.readouterr().err == "interrupted (SIGINT)\n"


def test_real_bugs_keep_their_traceback():
    def main(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_cli(main, [])


def test_stop_signal_turns_sigterm_into_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.event.wait(5)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(Interrupted):
            stop.raise_if_set()
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_to_a_cli_without_work_to_save_exits_143_without_traceback(tmp_path):
    script = tmp_path / "cmd.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from oclr_jax.errors import run_cli
        def main(argv):
            print("ready", flush=True)
            time.sleep(60)
        sys.exit(run_cli(main))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert "Traceback" not in err and "interrupted (SIGTERM)" in err


# ----------------------------------------------------------------------------- output folders

def _refusal(path, *args, **kwargs) -> str:
    from oclr_jax.errors import check_output_dir

    with pytest.raises(UserError) as info:
        check_output_dir(str(path), *args, **kwargs)
    return str(info.value)


def test_output_dir_new_empty_or_marked_is_accepted(tmp_path):
    from oclr_jax.errors import check_output_dir

    assert check_output_dir(str(tmp_path / "a" / "b"), "--out", "MARK") == str(tmp_path / "a" / "b")
    (tmp_path / "empty").mkdir()
    check_output_dir(str(tmp_path / "empty"), "--out", "MARK")
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "MARK").write_text("")
    (tmp_path / "ours" / "result.png").write_text("")
    check_output_dir(str(tmp_path / "ours"), "--out", "MARK")


def test_output_dir_file_and_foreign_folder_are_refused_naming_the_flag(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    message = _refusal(tmp_path / "notes.txt", "--out", "MARK")
    assert "is a file" in message and f"--out {tmp_path / 'notes.txt'}" in message
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_text("mine")
    message = _refusal(tmp_path / "photos", "--workdir", "MARK")
    assert "1 entry that this command did not write (no MARK marker)" in message
    assert f"--workdir {tmp_path / 'photos'}" in message and "remove this one yourself" in message
    message = _refusal(tmp_path / "photos", "--workdir", "MARK", replaces=False)
    assert "did not write" in message and "earlier run to resume" in message


def test_output_dir_owned_decides_what_is_the_commands(tmp_path):
    from oclr_jax.errors import check_output_dir

    def owned(folder):
        return all(os.path.exists(os.path.join(folder, n)) for n in ("config.json", "params"))

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    message = _refusal(folder, "OUT_DIR", "config.json and params/", owned=owned)
    assert "(no config.json and params/ marker)" in message
    (folder / "params").mkdir()
    check_output_dir(str(folder), "OUT_DIR", "config.json and params/", owned=owned)
    calls = []
    (tmp_path / "empty").mkdir()
    check_output_dir(str(tmp_path / "empty"), "--out", "M", owned=calls.append)
    assert calls == []  # an empty folder is always fine: never asked


def test_output_dir_working_directory_is_refused_only_where_replaced(tmp_path, monkeypatch):
    from oclr_jax.errors import check_output_dir

    work = tmp_path / "work"
    (work / "inner").mkdir(parents=True)
    (work / "MARK").write_text("")
    monkeypatch.chdir(work)
    for path in (".", str(work), str(tmp_path)):
        assert "working directory" in _refusal(path, "--out", "MARK")
    # A command that only adds to its folder and resumes there: `--out .` is its own folder.
    assert check_output_dir(".", "--out", "MARK", replaces=False) == str(work)
    assert "did not write" in _refusal(str(tmp_path), "--out", "MARK", replaces=False)


def test_output_dir_unwritable_places_are_refused(tmp_path, monkeypatch):
    import oclr_jax.errors as errors

    locked = {str(tmp_path / "locked"), str(tmp_path / "ours")}
    real_access = os.access
    monkeypatch.setattr(errors.os, "access",
                        lambda path, mode: str(path) not in locked and real_access(path, mode))
    (tmp_path / "locked").mkdir()
    message = _refusal(tmp_path / "locked" / "new" / "out", "--out", "MARK")
    assert f"{tmp_path / 'locked'} is not a writable folder" in message
    # An existing folder of ours that cannot be written into (or emptied).
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "MARK").write_text("")
    for replaces in (True, False):
        assert "not writable" in _refusal(tmp_path / "ours", "--out", "MARK", replaces=replaces)
    # An empty unwritable folder: written into is refused; replaced from its parent is fine.
    assert "not writable" in _refusal(tmp_path / "locked", "--out", "MARK", replaces=False)
    errors.check_output_dir(str(tmp_path / "locked"), "--out", "MARK")
    file_message = str(pytest.raises(UserError, errors.check_writable_parent,
                                     str(tmp_path / "locked" / "x.pth"), "OUT.pth",
                                     "output file").value)
    assert file_message.startswith("cannot write the output file") and "OUT.pth" in file_message
