"""`python -m oclr_jax.demo` given hostile input and interrupted, as a user runs it.

The demo replaces its output folder, so the folder rule matters most here: `--out .` or a
folder of the user's files is refused before any work and left untouched; the demo's own
earlier output is replaced.  Broken checkpoints and videos are named; an interrupt leaves no
half-written output.
"""

import json
import os
import shutil
import signal

import cv2
import hostile
import numpy as np
import pytest

MODULE = "oclr_jax.demo"


@pytest.mark.parametrize("kind", ["dot", "parent of cwd", "foreign", "file"])
def test_out_that_is_not_ours_is_refused_untouched(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of work")
    target = {"dot": ".", "parent of cwd": "..", "foreign": str(work), "file":
              str(work / "thesis.tex")}[kind]
    before = hostile.snapshot(str(tmp_path))
    result = hostile.run(MODULE, "--out", target, cwd=work)
    hostile.assert_user_error(result, f"--out {target}")
    assert hostile.snapshot(str(tmp_path)) == before


@pytest.mark.slow
def test_own_output_is_replaced_and_interrupts_leave_no_half_output(tmp_path):
    out = tmp_path / "demo_out"
    first = hostile.run(MODULE, "--out", out, "--frames", "8")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / ".oclr_demo_output").exists() and (out / "demo.webm").exists()
    (out / "stale.txt").write_text("from an older run")
    again = hostile.run(MODULE, "--out", out, "--frames", "8")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (out / "stale.txt").exists()  # replaced as a whole
    before = hostile.tree_digest(str(out))
    import subprocess
    import sys
    interrupted = 0
    for signum in (signal.SIGINT, signal.SIGTERM):
        log = tmp_path / f"log{signum}.txt"
        with open(log, "w") as stderr:
            # A longer clip: writing its report takes long enough to be interrupted.
            process = subprocess.Popen([sys.executable, "-m", MODULE, "--out", str(out),
                                        "--frames", "64"], cwd=hostile.REPO, env=hostile.env(),
                                       stdout=subprocess.DEVNULL, stderr=stderr,
                                       start_new_session=True)
            hostile.wait_for(lambda: "writing the report" in log.read_text(), 300,
                             "the report being written")
            os.killpg(process.pid, signum)
            status = process.wait(timeout=120)
        err = log.read_text()
        if status == 0:
            continue  # finished before the signal landed
        interrupted += 1
        assert status == 128 + signum, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        after = hostile.tree_digest(str(out))
        if after != before:
            # On a loaded machine the signal can land after the new report was moved into
            # place (the job then still ends as interrupted): the new output, whole.
            summary = json.loads((out / "summary.json").read_text())
            assert summary["frames"] == 64 and (out / "demo.webm").exists()
            assert len([n for n in after if n.startswith("masks/")]) == 64
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert interrupted, "both runs finished before their signal: nothing was tested"


def _short_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for t in range(frames):
        writer.write(np.full((48, 64, 3), 20 * t, np.uint8))
    writer.release()


@pytest.mark.parametrize("kind", ["missing", "garbage", "one frame"])
def test_unusable_videos_are_named(tmp_path, kind):
    video = tmp_path / "clip.avi"
    if kind == "garbage":
        video.write_bytes(os.urandom(2000))
    elif kind == "one frame":
        _short_video(video, 1)
    result = hostile.run(MODULE, "--video", video, "--out", tmp_path / "out")
    hostile.assert_user_error(result, "clip.avi")
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("args,culprit", [
    (["--frames", "1"], "--frames"), (["--max-frames", "-1"], "--max-frames"),
    (["--max-frames", "1"], "--max-frames"), (["--flow-height", "0"], "--flow-height"),
    (["--index", "-2"], "--index"),
])
def test_bad_arguments(tmp_path, args, culprit):
    result = hostile.call(MODULE, "--out", tmp_path / "out", *args)
    hostile.assert_user_error(result, culprit)
    assert not os.path.exists(tmp_path / "out")


def test_help_states_the_frame_cap():
    result = hostile.call(MODULE, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "default 150" in text and "0: the whole clip" in text


@pytest.mark.parametrize("kind", ["pth", "bad json", "missing"])
def test_broken_checkpoints_are_named(tmp_path, kind):
    from oclr_jax.demo.run import DEFAULT_CHECKPOINT as shipped

    if kind == "pth":
        checkpoint = tmp_path / "OCLR.pth"
        checkpoint.write_bytes(os.urandom(500))
        culprit = "OCLR.pth"
    elif kind == "bad json":
        checkpoint = tmp_path / "ckpt"
        shutil.copytree(shipped, checkpoint)
        (checkpoint / "config.json").write_text("[1, 2")
        culprit = "config.json"
    else:
        checkpoint, culprit = tmp_path / "nothing_here", "nothing_here"
    result = hostile.call(MODULE, "--checkpoint", checkpoint, "--out", tmp_path / "out")
    hostile.assert_user_error(result, culprit)
    assert "--trust-pickle" not in result.stderr
    assert not os.path.exists(tmp_path / "out")
