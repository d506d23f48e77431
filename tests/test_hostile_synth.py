"""`python -m oclr_jax.data.synth generate` given hostile input and interrupted, as a user would.

Asset-folder typos must fail before anything is recorded (so the corrected rerun is not
refused), output folders that are not the generator's must be refused untouched, and SIGINT
(Ctrl-C, to the whole process group), SIGTERM and SIGKILL of the parent must end every worker;
a rerun then completes with exactly the files of an uninterrupted run.
"""

import os
import shutil
import signal

import hostile
import pytest

MODULE = "oclr_jax.data.synth"
SMALL = ["--split", "syn_val", "--num-sequences", "40", "--resolution", "64x96", "--frames", "8",
         "--quiet"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run: the files every interrupted run must end with."""
    out = tmp_path_factory.mktemp("synth_ref") / "out"
    result = hostile.run(MODULE, "generate", *SMALL, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return hostile.tree_digest(str(out))


def test_missing_texture_dir_fails_first_and_the_fix_runs(tmp_path):
    out = tmp_path / "out"
    small = ["--split", "syn_val", "--num-sequences", "2", "--resolution", "32x48", "--frames",
             "3", "--quiet", "--out", out]
    result = hostile.run(MODULE, "generate", *small, "--texture-dir", tmp_path / "textrues")
    hostile.assert_user_error(result, "--texture-dir", "textrues")
    assert not os.path.exists(out / "synth_manifest.json")
    textures = tmp_path / "textures"
    textures.mkdir()
    empty = hostile.run(MODULE, "generate", *small, "--texture-dir", textures)
    hostile.assert_user_error(empty, "--texture-dir", "no image files")
    import cv2
    import numpy as np
    cv2.imwrite(str(textures / "a.png"),
                np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    fixed = hostile.run(MODULE, "generate", *small, "--texture-dir", textures)
    assert fixed.returncode == 0, fixed.stderr[-3000:]


def test_stale_manifest_without_sequences_does_not_block_the_fix(tmp_path):
    """A folder poisoned by an older version (manifest written, nothing rendered) is reusable."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "synth_manifest.json").write_text('{"options": {"texture_dir": "typo"}}')
    result = hostile.run(MODULE, "generate", "--split", "syn_val", "--num-sequences", "1",
                         "--resolution", "32x48", "--frames", "3", "--quiet", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("bad", ["file", "foreign"])
def test_out_that_is_not_ours_is_refused_untouched(tmp_path, bad):
    if bad == "file":
        target = tmp_path / "notes.txt"
        target.write_text("mine")
        culprit = "is a file"
    else:
        target = tmp_path / "photos"
        target.mkdir()
        (target / "holiday.jpg").write_bytes(b"\xff\xd8 not ours")
        culprit = "did not write"
    before = hostile.snapshot(str(tmp_path))
    result = hostile.run(MODULE, "generate", "--split", "syn_val", "--num-sequences", "1",
                         "--resolution", "32x48", "--frames", "3", "--quiet", "--out", target)
    hostile.assert_user_error(result, str(target), culprit)
    assert hostile.snapshot(str(tmp_path)) == before


@pytest.mark.parametrize("args,culprit", [
    (["--workers", "0"], "--workers"),
    (["--num-sequences", "0"], "--num-sequences"),
    (["--frames", "1"], "2 frames"),
    (["--resolution", "8x8"], "16x16"),
    (["--shard", "3/2"], "--shard"),
    (["--resolution", "big"], "HxW"),
])
def test_bad_arguments(tmp_path, args, culprit):
    result = hostile.run(MODULE, "generate", "--split", "syn_val", "--out", tmp_path / "o",
                         "--quiet", *args)
    hostile.assert_user_error(result, culprit)
    assert not os.path.exists(tmp_path / "o" / "Metadata")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_pool_ends_its_workers_and_resumes_identically(tmp_path, reference, signum):
    out = tmp_path / "out"

    def ready(process):
        workers = hostile.wait_for(lambda: len(hostile.python_descendants(process.pid)) >= 2 and
                                   hostile.python_descendants(process.pid), 60,
                                   "the worker processes")
        hostile.wait_for(lambda: os.path.isdir(out / "Metadata") and os.listdir(out / "Metadata"),
                         60, "a first finished sequence")
        return workers

    workers, status, err = hostile.interrupt_when_ready(
        lambda: hostile.start(MODULE, "generate", *SMALL, "--workers", "2", "--out", out),
        ready, signum, lambda: shutil.rmtree(out))
    if signum != signal.SIGKILL:
        assert status == 128 + signum, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "interrupted" in err
    # Every worker ends with its parent, whatever ended the parent.
    hostile.wait_for(lambda: not any(hostile.alive(p) for p in workers), 10,
                     f"workers {workers} to end after {signal.Signals(signum).name}")
    done = len(os.listdir(out / "Metadata"))
    rerun = hostile.run(MODULE, "generate", *SMALL, "--workers", "2", "--out", out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f'"skipped": {done}' in rerun.stdout or done == 40
    assert hostile.tree_digest(str(out)) == reference
