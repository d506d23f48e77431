"""`python -m oclr_jax.flow` run as a user runs it: file names, padded shapes, gap directions,
resume, what the evaluation reads, and clear errors for bad inputs."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from raft_fixtures import moving_frames, write_frames

from oclr_jax.data import flow_io
from oclr_jax.data.benchmarks import Benchmark
from oclr_jax.eval.inference import load_window_flow
from oclr_jax.flow import convert, padding, raft, weights
from oclr_jax.flow.frames import read_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--iters", "2", "--pairs-per-device", "1", "--no-progress"]


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "oclr_jax.flow", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random-weight RAFT checkpoint in our .npz export (no torch, no download)."""
    variables = convert.random_variables(seed=3)
    path = str(tmp_path_factory.mktemp("weights") / "raft-random.npz")
    weights.save_raft_variables(variables, path)
    return path, variables


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    frames = {"bear": moving_frames(3, 130, 141, seed=1), "cows": moving_frames(2, 128, 128, seed=2)}
    write_frames(str(root / "JPEGImages/480p/bear"), frames["bear"], ".jpg")
    write_frames(str(root / "JPEGImages/480p/cows"), frames["cows"], ".png")
    (root / "JPEGImages/480p/bear/notes.txt").write_text("not a frame")  # ignored, as by the official glob
    return root, frames


def flo_names(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
                  for f in files if f.endswith(".flo"))


def test_davis_layout_official_names_padded_shapes_resume_and_eval_reads_it(davis, checkpoint):
    root, _ = davis
    result = run_cli(root, "--raft-checkpoint", checkpoint[0], *FAST)
    assert result.returncode == 0, result.stderr
    assert '"written": 6' in result.stdout
    assert flo_names(root) == ["Flows_gap-1/bear/00001.flo", "Flows_gap-1/bear/00002.flo",
                               "Flows_gap-1/cows/00001.flo", "Flows_gap1/bear/00000.flo",
                               "Flows_gap1/bear/00001.flo", "Flows_gap1/cows/00000.flo"]
    assert flow_io.read_flo(str(root / "Flows_gap1/bear/00000.flo")).shape == (136, 144, 2)  # 130x141 padded
    assert flow_io.read_flo(str(root / "Flows_gap1/cows/00000.flo")).shape == (128, 128, 2)

    # Gap -1 under frame 2 is the flow from frame 2 to frame 1, computed on the padded decoded frames.
    pads = padding.sintel_padding(130, 141)
    image1, image2 = (padding.pad_images(read_image(str(root / f"JPEGImages/480p/bear/0000{i}.jpg"))[None], *pads)
                      .astype(np.float32) for i in (2, 1))
    expected = np.asarray(raft.make_flow_fn(raft.RAFT(), iters=2)(checkpoint[1], image1, image2))[0]
    np.testing.assert_allclose(flow_io.read_flo(str(root / "Flows_gap-1/bear/00002.flo")), expected, atol=1e-4)

    # What `python -m oclr_jax.eval` reads: the benchmark finds every file, unpads to the frame size.
    bench = Benchmark("davis2016", str(root), sequences=["bear", "cows"], load_annotations=False)
    record = bench.read_sequence("bear")
    assert all(p is not None for p in record.flow_paths[1][:2]) and record.flow_paths[1][2] is None
    window = load_window_flow(record, [0, 1, 2], (1, -1), (130, 141), unpad=True)
    assert window.shape == (3, 130, 141, 4) and np.isfinite(window).all()

    # Resume: nothing recomputed; a removed file is the only one written again.
    before = os.path.getmtime(root / "Flows_gap1/bear/00001.flo")
    os.remove(root / "Flows_gap-1/bear/00001.flo")
    again = run_cli(root, "--raft-checkpoint", checkpoint[0], *FAST)
    assert again.returncode == 0 and '"written": 1' in again.stdout and '"skipped_existing": 5' in again.stdout
    assert os.path.getmtime(root / "Flows_gap1/bear/00001.flo") == before
    assert not [f for f in os.listdir(root / "Flows_gap-1/bear") if f.startswith(".")]


def test_foreign_file_in_the_way_is_an_error_until_overwrite(tmp_path, checkpoint):
    write_frames(str(tmp_path / "seq"), moving_frames(2, 128, 128, seed=4), ".png")
    os.makedirs(tmp_path / "out/Flows_gap1/seq")
    (tmp_path / "out/Flows_gap1/seq/00000.flo").write_bytes(b"PIEH")
    result = run_cli(tmp_path / "seq", "--out", tmp_path / "out", "--raft-checkpoint", checkpoint[0],
                     "--gaps", "1", *FAST)
    assert_user_error(result, "Flows_gap1/seq/00000.flo: exists with 4 bytes", "--overwrite")
    result = run_cli(tmp_path / "seq", "--out", tmp_path / "out", "--raft-checkpoint", checkpoint[0],
                     "--gaps", "1", "--overwrite", *FAST)
    assert result.returncode == 0, result.stderr
    assert flow_io.read_flo(str(tmp_path / "out/Flows_gap1/seq/00000.flo")).shape == (128, 128, 2)


def test_dis_on_a_video_with_gaps_two(tmp_path):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (60, 44))
    for frame in moving_frames(4, 44, 60, seed=5):
        writer.write(frame[..., ::-1])
    writer.release()
    result = run_cli(path, "--out", tmp_path / "out", "--method", "dis", "--gaps", "2", "-2", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert flo_names(tmp_path / "out") == ["Flows_gap-2/clip/00002.flo", "Flows_gap-2/clip/00003.flo",
                                           "Flows_gap2/clip/00000.flo", "Flows_gap2/clip/00001.flo"]
    flow = flow_io.read_flo(str(tmp_path / "out/Flows_gap2/clip/00000.flo"))
    assert flow.shape == (48, 64, 2)  # padded to multiples of 8 like RAFT's frames


def write_bad_inputs(tmp_path, case):
    folder = tmp_path / "seq"
    if case == "unreadable":
        write_frames(str(folder), moving_frames(3, 128, 128), ".jpg")
        (folder / "00001.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        return folder, "00001.jpg: cannot read frame image"
    if case == "one_frame":
        write_frames(str(folder), moving_frames(1, 128, 128), ".jpg")
        return folder, "00000.jpg: the only frame of sequence 'seq'"
    if case == "mixed_sizes":
        write_frames(str(folder), moving_frames(2, 128, 128), ".png")
        write_frames(str(tmp_path / "other"), moving_frames(1, 136, 128), ".png")
        os.replace(tmp_path / "other/00000.png", folder / "00002.png")
        return folder, "00002.png: frame of 136x128 in a sequence of 128x128 frames"
    if case == "too_small":
        write_frames(str(folder), moving_frames(2, 100, 300), ".png")
        return folder, "frames of 100x300 pad to 104x304; RAFT needs each padded side >= 128"
    if case == "no_frames":
        os.makedirs(folder)
        (folder / "00000.JPG").write_bytes(b"x")
        return folder, "no frames (looked for *.png and *.jpg"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["unreadable", "one_frame", "mixed_sizes", "too_small", "no_frames"])
def test_bad_frames_give_clear_errors(tmp_path, checkpoint, case):
    folder, message = write_bad_inputs(tmp_path, case)
    result = run_cli(folder, "--out", tmp_path / "out", "--raft-checkpoint", checkpoint[0], *FAST)
    assert_user_error(result, message)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("args,message", [
    ([], "--raft-checkpoint is required for --method raft"),
    (["--raft-checkpoint", "missing.pth"], "missing.pth: no such file"),
    (["--method", "dis", "--gaps", "0"], "--gaps: 0 is not a gap"),
])
def test_bad_flags_give_clear_errors(tmp_path, args, message):
    write_frames(str(tmp_path / "seq"), moving_frames(2, 128, 128), ".png")
    assert_user_error(run_cli(tmp_path / "seq", "--out", tmp_path / "out", *args), message)


def test_out_is_required_outside_a_dataset_root(tmp_path):
    write_frames(str(tmp_path / "seq"), moving_frames(2, 128, 128), ".png")
    assert_user_error(run_cli(tmp_path / "seq", "--method", "dis"), "--out is required")


def test_stop_between_batches_keeps_finished_files_and_resumes(tmp_path, capsys):
    from oclr_jax.errors import Interrupted, StopSignal
    from oclr_jax.flow import frames, run

    write_frames(str(tmp_path / "seq"), moving_frames(4, 64, 64), ".png")
    sequence = frames.folder_sequence(str(tmp_path / "seq"))
    estimator = run.DisEstimator()
    estimator.batch_size = 1
    jobs, skipped = run.plan_jobs([sequence], [1], str(tmp_path / "out"), estimator)
    assert skipped == 0 and len(jobs[0].pairs) == 3
    stop = StopSignal()

    class SignalAfterFirstBatch:  # stands in for the progress bar: SIGTERM arrives mid-run
        def update(self, _):
            stop.event.set()

    with pytest.raises(Interrupted):
        run.run_jobs(jobs, str(tmp_path / "out"), estimator, SignalAfterFirstBatch(), stop)
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert flo_names(tmp_path / "out") == ["Flows_gap1/seq/00000.flo"]
    jobs, skipped = run.plan_jobs([sequence], [1], str(tmp_path / "out"), estimator)
    assert skipped == 1 and [p.out_stem for p in jobs[0].pairs] == ["00001", "00002"]
