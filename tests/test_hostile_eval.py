"""`python -m oclr_jax.eval` given hostile input, as a user runs it (subprocesses).

Every user mistake must end with exit 2, no traceback, the culprit named and nothing written
outside the output folder; data in a near-miss convention must be read right or refused, never
scored silently wrong; the resume cache must never hand one folder's scores to another; an
interrupted run resumes to the result of an uninterrupted one.

Data cases score saved masks (`--predictions`, no model: fast); flow and checkpoint cases use a
tiny random checkpoint.
"""

import json
import os
import shutil
import signal

import cv2
import eval_fakes as ef
import hostile
import numpy as np
import pytest

from oclr_jax.data import flow_io, masks_io

MODULE = "oclr_jax.eval"
SIZE_ARGS = [f"--config.data.resolution=({ef.H},{ef.W})", "--config.eval.window=4"]


def moving_box(frames=6, x0=10, y0=10):
    fg = np.zeros((frames, ef.H, ef.W), bool)
    for t in range(frames):
        fg[t, y0:y0 + 20, x0 + 2 * t:x0 + 30 + 2 * t] = True
    return fg


def write_predictions(root, name, labels):
    for t, frame in enumerate(labels):
        masks_io.write_indexed_png(os.path.join(root, name, f"{t:05d}.png"),
                                   frame.astype(np.uint8))


def score(data, predictions, out, dataset="segtrackv2", *extra):
    return hostile.run(MODULE, "--dataset", dataset, "--data-dir", data, "--predictions",
                       predictions, "--out", out, "--sequences", "all", *extra)


def results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from test_eval_checkpoints import write_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    write_checkpoint(path)
    return path


@pytest.fixture()
def segtrack(tmp_path):
    root = tmp_path / "data"
    ef.write_binary_dataset(str(root), {"worm": moving_box()})
    return root


def run_model(data, checkpoint, out, *extra, dataset="segtrackv2"):
    return hostile.run(MODULE, "--dataset", dataset, "--data-dir", data, "--checkpoint",
                       checkpoint, "--out", out, "--sequences", "all", *SIZE_ARGS, *extra)


# ----------------------------------------------------------------------------- ground truth

def test_zero_one_masks_are_read_as_foreground(tmp_path, segtrack):
    fg = moving_box()
    for t in range(len(fg)):  # the same ground truth stored 0/1 instead of 0/255
        cv2.imwrite(str(segtrack / "Annotations" / "worm" / f"{t:05d}.png"), fg[t].astype(np.uint8))
    write_predictions(tmp_path / "pred", "worm", fg)
    result = score(segtrack, tmp_path / "pred", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0/1" in result.stderr  # the documented warning
    assert results(tmp_path / "out")["summary"]["J_mean"] == pytest.approx(1.0)


def test_colour_mask_in_another_colour_is_refused(tmp_path, segtrack):
    path = segtrack / "Annotations" / "worm" / "00002.png"
    mask = np.zeros((ef.H, ef.W, 3), np.uint8)
    mask[moving_box()[2]] = (0, 255, 0)  # drawn in green (BGR)
    cv2.imwrite(str(path), mask)
    write_predictions(tmp_path / "pred", "worm", moving_box())
    before = hostile.snapshot(str(segtrack))
    result = score(segtrack, tmp_path / "pred", tmp_path / "out")
    hostile.assert_user_error(result, "00002.png", "colour")
    assert hostile.snapshot(str(segtrack)) == before


def test_empty_ground_truth_everywhere_is_refused(tmp_path):
    ef.write_binary_dataset(str(tmp_path / "data"), {"worm": np.zeros((6, ef.H, ef.W), bool)})
    write_predictions(tmp_path / "pred", "worm", np.zeros((6, ef.H, ef.W), bool))
    result = score(tmp_path / "data", tmp_path / "pred", tmp_path / "out")
    hostile.assert_user_error(result, "Annotations/worm", "empty")


def test_object_ids_not_one_to_n_are_refused(tmp_path):
    labels = moving_box().astype(np.uint8)
    labels[moving_box(x0=40, y0=25)] = 3  # ids {1, 3}: id 2 would be a phantom object
    ef.write_davis(str(tmp_path / "data"), "davis2017m", {"cows": labels})
    write_predictions(tmp_path / "pred", "cows", labels)
    result = score(tmp_path / "data", tmp_path / "pred", tmp_path / "out", "davis2017m")
    hostile.assert_user_error(result, "cows/00000.png", "[1, 3]", "missing [2]")


def test_synval_object_empty_in_every_frame_is_refused(tmp_path):
    amodal = np.zeros((6, ef.H, ef.W, 2), bool)
    amodal[..., 0] = moving_box()
    ef.write_synval(str(tmp_path / "data"), {"2_000": amodal})
    write_predictions(tmp_path / "pred", "2_000", moving_box())
    result = score(tmp_path / "data", tmp_path / "pred", tmp_path / "out", "synval")
    hostile.assert_user_error(result, "2_*.png", "object 2 is empty")


def test_missing_annotation_is_named(tmp_path, segtrack):
    os.remove(segtrack / "Annotations" / "worm" / "00003.png")
    write_predictions(tmp_path / "pred", "worm", moving_box())
    result = score(segtrack, tmp_path / "pred", tmp_path / "out")
    hostile.assert_user_error(result, "00003.png", "missing annotation")


# ----------------------------------------------------------------------------- resume cache

def test_resume_cache_never_reports_another_folders_scores(tmp_path):
    """Same --out, same sequence name, another data folder: the new folder is scored."""
    good, shifted = tmp_path / "good", tmp_path / "shifted"
    ef.write_binary_dataset(str(good), {"worm": moving_box()})
    ef.write_binary_dataset(str(shifted), {"worm": moving_box(x0=30)})
    write_predictions(tmp_path / "pred", "worm", moving_box())
    out = tmp_path / "out"
    assert score(good, tmp_path / "pred", out).returncode == 0
    assert results(out)["summary"]["J_mean"] == pytest.approx(1.0)
    second = score(shifted, tmp_path / "pred", out)
    assert second.returncode == 0, second.stderr[-3000:]
    fresh = score(shifted, tmp_path / "pred", tmp_path / "fresh")
    assert fresh.returncode == 0
    assert results(out)["summary"] == results(tmp_path / "fresh")["summary"]
    assert results(out)["summary"]["J_mean"] < 0.9
    # The same inputs again: reused, and said so.
    third = score(shifted, tmp_path / "pred", out)
    assert "reused 1 sequences" in third.stderr and "--no-resume" in third.stderr
    # A ground-truth file edited in place is not the same input either.
    cv2.imwrite(str(shifted / "Annotations" / "worm" / "00000.png"),
                np.where(moving_box()[0], 255, 0).astype(np.uint8))
    fourth = score(shifted, tmp_path / "pred", out)
    assert "reused" not in fourth.stderr


# ----------------------------------------------------------------------------- options, paths

@pytest.mark.parametrize("args,culprit", [
    (["--config.eval.threshold=2.0"], "config.eval.threshold"),
    (["--config.eval.threshold=0.0"], "config.eval.threshold"),
    (["--config.eval.window=0"], "config.eval.window"),
    (["--config.eval.upsample=cubic"], "config.eval.upsample"),
    (["--config.eval.no_such_key=1"], "no_such_key"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_bad_options_fail_before_any_work(tmp_path, segtrack, args, culprit):
    """In this process: the same `run_cli` and messages, without an interpreter per case."""
    write_predictions(tmp_path / "pred", "worm", moving_box())
    result = hostile.call(MODULE, "--dataset", "segtrackv2", "--data-dir", segtrack,
                          "--predictions", tmp_path / "pred", "--out", tmp_path / "out",
                          "--sequences", "all", *args)
    hostile.assert_user_error(result, culprit)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("kind", ["file", "foreign", "missing predictions"])
def test_bad_paths_fail_before_any_work_and_touch_nothing(tmp_path, segtrack, kind):
    write_predictions(tmp_path / "pred", "worm", moving_box())
    out, predictions, culprit = tmp_path / "out", tmp_path / "pred", "--out"
    if kind == "file":
        out.write_text("my notes")
    elif kind == "foreign":
        out.mkdir()
        (out / "thesis.tex").write_text("mine")
    else:
        predictions, culprit = tmp_path / "no_such_pred", "no_such_pred"
    before = hostile.snapshot(str(tmp_path))
    result = hostile.call(MODULE, "--dataset", "segtrackv2", "--data-dir", segtrack,
                          "--predictions", predictions, "--out", out, "--sequences", "all")
    hostile.assert_user_error(result, culprit)
    assert hostile.snapshot(str(tmp_path)) == before


# ----------------------------------------------------------------------------- flows (model)

def _break_flow(root, kind):
    path = os.path.join(root, "Flows_gap1", "worm", "00002.flo")
    if kind == "unknown":
        flow = flow_io.read_flo(path)
        flow[5:9, 5:9] = 1e10  # Middlebury's "unknown flow"
        flow_io.write_flo(path, flow)
    elif kind == "transposed":
        flow_io.write_flo(path, np.zeros((ef.W, ef.H, 2), np.float32))
    elif kind == "truncated":
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
    elif kind == "missing":
        os.remove(path)
        os.remove(os.path.join(root, "Flows_gap-1", "worm", "00002.flo"))
    return {"unknown": "1e9", "transposed": "contradicts", "truncated": "data bytes",
            "missing": "missing flow"}[kind]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["unknown", "transposed", "truncated", "missing"])
def test_bad_flow_files_are_named(tmp_path, segtrack, checkpoint, kind):
    culprit = _break_flow(str(segtrack), kind)
    result = run_model(segtrack, checkpoint, tmp_path / "out")
    hostile.assert_user_error(result, "00002", culprit)
    assert not os.path.exists(tmp_path / "out" / "results.json")


# ----------------------------------------------------------------------------- checkpoints

def _break_checkpoint(checkpoint, tmp_path, kind):
    if kind == "pth":
        path = tmp_path / "model.pth"
        path.write_bytes(os.urandom(300))
        return path, "model.pth"
    path = tmp_path / "ckpt"
    shutil.copytree(checkpoint, path)
    config = path / "config.json"
    if kind == "bad json":
        config.write_text('{"model": ')
        return path, "config.json"
    if kind == "incomplete":
        raw = json.loads(config.read_text())
        del raw["model"]["num_heads"]
        config.write_text(json.dumps(raw))
        return path, "model.num_heads"
    if kind == "contradicts params":
        raw = json.loads(config.read_text())
        raw["model"]["ff_dim"] *= 2
        config.write_text(json.dumps(raw))
        return path, "expected"
    if kind == "missing array file":
        folder = path / "params" / "ocdbt.process_0" / "d"
        for name in os.listdir(folder):
            os.remove(folder / name)
        return path, "params"
    if kind == "no params":
        shutil.rmtree(path / "params")
        return path, "params/"
    raise ValueError(kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pth", "bad json", "incomplete", "contradicts params",
                                  "missing array file", "no params"])
def test_broken_checkpoints_are_named(tmp_path, segtrack, checkpoint, kind):
    path, culprit = _break_checkpoint(checkpoint, tmp_path, kind)
    result = run_model(segtrack, path, tmp_path / "out")
    hostile.assert_user_error(result, culprit)
    assert "--trust-pickle" not in result.stderr
    assert not os.path.exists(tmp_path / "out" / "results.json")


# ----------------------------------------------------------------------------- interrupts

@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_eval_resumes_to_the_uninterrupted_result(tmp_path, checkpoint, signum):
    data = tmp_path / "data"
    ef.write_binary_dataset(str(data), {f"seq{i:02d}": moving_box(frames=12, x0=4 + i)
                                        for i in range(16)})
    reference = run_model(data, checkpoint, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "out"
    _, status, err = hostile.interrupt_when_ready(
        lambda: hostile.start(MODULE, "--dataset", "segtrackv2", "--data-dir", data,
                              "--checkpoint", checkpoint, "--out", out, "--sequences", "all",
                              *SIZE_ARGS),
        lambda _: hostile.wait_for(lambda: os.path.isdir(out / "sequences") and [
            n for n in os.listdir(out / "sequences")
            if n.endswith(".json") and not n.startswith(".")], 120, "a first scored sequence"),
        signum, lambda: shutil.rmtree(out))
    assert status == 128 + signum, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err, err[-3000:]
    assert not os.path.exists(out / "results.json")  # no half-finished table
    rerun = run_model(data, checkpoint, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "reused" in rerun.stderr
    got, want = results(out), results(tmp_path / "reference")
    assert got["summary"] == want["summary"]
    assert got["sequences"] == want["sequences"]
