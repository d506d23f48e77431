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
