"""The demo end to end: a synthetic clip with the shipped checkpoint, a user video, bad inputs."""

import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from oclr_jax.demo import run as demo

# Floors for the shipped checkpoint, below what docs/demo.md measured (the targets are
# not all met yet; these hold it to what it does). Modal J on the first 16 frames of the default
# clip (three overlapping objects): measured 0.51 (objects 2 and 3 found, J 0.61 and 0.92;
# object 1 not); the checkpoints before 0.49 and 0.28; an untrained model about 0.05.
SHIPPED_MODAL_J_FLOOR = 0.45
# Spread (std over clips, mean over layers) of the first window's order logits on Syn-Val
# seed 0 clips 0-5: measured 0.27; the checkpoints before 0.021 and 0.0036, and the one before
# those, whose order head ignored its input, 0.00024.
SHIPPED_ORDER_LOGIT_STD_FLOOR = 0.1
# The first 48 sequences of the held-out set (Syn-Val seed 7, which training never reads), as
# `python -m oclr_jax.eval --dataset synval` scores them: measured modal J 0.735, on 2-object
# clips 0.782, on 3-object clips 0.498, order logit std 0.32 (all 192: 0.768, 0.820, 0.523);
# the checkpoint before: 0.719, 0.760, 0.494, and before that about 0.54, 0.41, 0.27.
HELDOUT_FLOORS = {"J_modal": 0.68, "J_modal_2obj": 0.70, "J_modal_3obj": 0.43,
                  "order_logit_std": 0.1}


def _decodes(path):
    capture = cv2.VideoCapture(path)
    ok, _ = capture.read()
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    return ok, count


@pytest.mark.slow
def test_demo_on_synthetic_clip_with_shipped_checkpoint(tmp_path):
    out = tmp_path / "out"
    assert demo.main(["--out", str(out), "--frames", "16"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 16
    for name in ("index.html", "demo.webm", "demo.gif", "preview.png"):
        assert (out / name).stat().st_size > 0, name
    ok, count = _decodes(str(out / "demo.webm"))
    assert ok and count == 16
    gif = Image.open(out / "demo.gif")
    assert gif.n_frames == 16
    masks = sorted(os.listdir(out / "masks"))
    assert len(masks) == 16 and Image.open(out / "masks" / masks[0]).mode == "P"
    assert len(os.listdir(out / "amodal")) == 16 * 3
    assert "demo.gif" in (out / "index.html").read_text()
    assert summary["scores"]["modal_J"] > SHIPPED_MODAL_J_FLOOR, summary["scores"]


def test_default_clip_is_the_first_occluded_three_object_sequence():
    from oclr_jax.data.synth import RenderOptions, render_sequence, spec_for_index

    options = RenderOptions(resolution=(64, 112), frames=24)  # the shipped model's clip

    def three_objects_overlapping(index):
        spec = spec_for_index("syn_val", 0, index)
        if spec.num_objects != 3:
            return False
        amodal = render_sequence(spec, options).amodal
        return any((amodal[..., a] & amodal[..., b]).any() for a in range(3) for b in range(a))

    assert next(i for i in range(48) if three_objects_overlapping(i)) == demo.DEFAULT_INDEX


def _write_video(path, frames, fps=10):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps,
                             (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(frame)
    writer.release()


def _moving_square_frames(num_frames, height=96, width=128):
    rng = np.random.RandomState(0)
    background = (rng.rand(height, width, 3) * 255).astype(np.uint8)
    texture = (rng.rand(30, 30, 3) * 255).astype(np.uint8)
    frames = []
    for t in range(num_frames):
        frame = np.roll(background, t, axis=1).copy()
        frame[30:60, 10 + 4 * t:40 + 4 * t] = texture
        frames.append(frame)
    return np.stack(frames)


@pytest.mark.slow
def test_shipped_order_logits_depend_on_the_clip():
    """The order head must read its input: its logits differ between clips (the checkpoint
    shipped before docs/demo.md's stage 2 gave the same logits, +-3e-4, for every clip)."""
    from oclr_jax.checkpoint import load_checkpoint

    model, params, config = load_checkpoint(demo.DEFAULT_CHECKPOINT)
    window = int(config.data.num_frames)
    logits = []
    for index in range(6):
        clip = demo.synthetic_clip(config, 0, index, window)
        prediction = demo.predict_clip(model, params, clip.flow, window, clip.rgb.shape[1:3])
        logits.append(prediction.order_logits[0])
    spread = float(np.std(np.stack(logits), axis=0).mean())
    assert spread > SHIPPED_ORDER_LOGIT_STD_FLOOR, np.stack(logits)


@pytest.mark.slow
def test_shipped_checkpoint_on_heldout_syn_val(tmp_path):
    """The shipped model on the first 48 held-out sequences, generated and scored by the
    commands a user runs (docs/demo.md)."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo)
    env.pop("XLA_FLAGS", None)
    heldout, out = str(tmp_path / "heldout"), str(tmp_path / "eval")
    for command in (["oclr_jax.data.synth", "generate", "--split", "syn_val", "--seed", "7",
                     "--num-sequences", "48", "--resolution", "64x112", "--frames", "8",
                     "--out", heldout],
                    ["oclr_jax.eval", "--dataset", "synval", "--data-dir", heldout,
                     "--sequences", "all", "--checkpoint", demo.DEFAULT_CHECKPOINT, "--out", out]):
        proc = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                              cwd=repo, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "eval" / "results.json").read_text())["summary"]
    assert summary["sequences"] == 48
    for key, floor in HELDOUT_FLOORS.items():
        assert summary[key] > floor, (key, summary)


@pytest.mark.slow
def test_demo_on_user_video(tmp_path):
    video = tmp_path / "clip.avi"
    _write_video(video, _moving_square_frames(12))
    out = tmp_path / "out"
    assert demo.main(["--video", str(video), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 12 and summary["scores"] is None
    masks = sorted(os.listdir(out / "masks"))
    assert len(masks) == 12
    assert np.asarray(Image.open(out / "masks" / masks[0])).shape == (96, 128)
    ok, count = _decodes(str(out / "demo.webm"))
    assert ok and count == 12


def test_unreadable_and_short_videos_fail_clearly(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    with pytest.raises(demo.DemoError, match="broken.mp4"):
        demo.read_video(str(broken), 10)
    with pytest.raises(demo.DemoError, match="does not exist"):
        demo.read_video(str(tmp_path / "missing.mp4"), 10)
    short = tmp_path / "short.avi"
    _write_video(short, _moving_square_frames(1))
    with pytest.raises(demo.DemoError, match="at least 2"):
        demo.read_video(str(short), 10)


def test_gaps_are_stacked_in_config_order():
    fwd = np.full((2, 4, 4, 2), 1.0, np.float32)
    bwd = np.full((2, 4, 4, 2), -1.0, np.float32)
    stacked = demo.stack_gaps(fwd, bwd, (-1, 1))
    assert stacked.shape == (2, 4, 4, 4)
    assert (stacked[..., :2] == -1).all() and (stacked[..., 2:] == 1).all()
    with pytest.raises(demo.DemoError, match="gaps"):
        demo.stack_gaps(fwd, bwd, (2, -2))


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(demo.DemoError, match="nowhere"):
        demo.main(["--checkpoint", str(tmp_path / "nowhere")])
