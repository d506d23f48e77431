"""The demo's RAFT flow path: clip flows by RAFT (ends filled as the DIS path does), the demo
using them with --raft-checkpoint, and saying it uses DIS without one."""

import json

import cv2
import ml_collections
import numpy as np
import pytest
from raft_fixtures import moving_frames

from oclr_jax.demo import run as demo
from oclr_jax.flow import convert, padding, raft, weights
from oclr_jax.flow.video import raft_clip_flows


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    variables = convert.random_variables(seed=5)
    path = str(tmp_path_factory.mktemp("weights") / "raft.npz")
    weights.save_raft_variables(variables, path)
    return path, variables


def test_clip_flows_are_raft_pairs_cropped_with_dis_style_ends(checkpoint):
    frames = moving_frames(3, 130, 129, seed=7)
    forward, backward = raft_clip_flows(frames, checkpoint[1], iters=2, pairs_per_device=1)
    assert forward.shape == backward.shape == (3, 130, 129, 2)
    top, bottom, left, right = padding.sintel_padding(130, 129)
    pad = lambda i: padding.pad_images(frames[[i]], top, bottom, left, right).astype(np.float32)
    direct = np.asarray(raft.make_flow_fn(raft.RAFT(), iters=2)(checkpoint[1], pad(2), pad(1)))[0]
    np.testing.assert_allclose(backward[2], direct[top:top + 130, left:left + 129], atol=1e-4)
    np.testing.assert_array_equal(forward[-1], -backward[-1])
    np.testing.assert_array_equal(backward[0], -forward[0])


def _config():
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict({"resolution": (64, 96), "gaps": (1, -1)})
    return config


def _video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(frame[..., ::-1])
    writer.release()


def test_video_clip_uses_raft_when_given_weights_and_says_dis_otherwise(tmp_path, checkpoint, capsys):
    _video(tmp_path / "clip.avi", moving_frames(3, 128, 176, seed=8))
    clip = demo.video_clip(str(tmp_path / "clip.avi"), _config(), 10, 128, checkpoint[0], raft_iters=2)
    assert clip.flow.shape == (3, 64, 96, 4) and np.isfinite(clip.flow).all()
    assert "DIS" not in capsys.readouterr().err
    dis = demo.video_clip(str(tmp_path / "clip.avi"), _config(), 10, 128)
    assert "flow: OpenCV DIS, since no --raft-checkpoint was given" in capsys.readouterr().err
    assert not np.allclose(dis.flow, clip.flow)


def test_too_small_flow_height_for_raft_is_a_clear_error(tmp_path, checkpoint):
    _video(tmp_path / "clip.avi", moving_frames(2, 96, 128, seed=9))
    with pytest.raises(demo.DemoError, match=r"RAFT needs each padded side >= 128.*--flow-height"):
        demo.video_clip(str(tmp_path / "clip.avi"), _config(), 10, 96, checkpoint[0], raft_iters=1)


def test_raft_checkpoint_without_video_is_refused():
    with pytest.raises(demo.DemoError, match="--raft-checkpoint is for --video"):
        demo.main(["--raft-checkpoint", "raft-things.pth"])


@pytest.mark.slow
def test_demo_command_on_a_video_with_raft(tmp_path, checkpoint):
    _video(tmp_path / "clip.avi", moving_frames(6, 128, 176, seed=10))
    out = tmp_path / "out"
    assert demo.main(["--video", str(tmp_path / "clip.avi"), "--out", str(out), "--flow-height", "128",
                      "--raft-checkpoint", checkpoint[0], "--raft-iters", "2"]) == 0
    assert json.loads((out / "summary.json").read_text())["frames"] == 6
