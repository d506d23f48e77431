"""User asset folders: real files are used, corrupt or empty ones are skipped loudly."""

import dataclasses

import cv2
import numpy as np
import pytest

from oclr_jax.data.synth import RenderOptions, SequenceSpec, assets, render_sequence

TINY = RenderOptions(resolution=(32, 48), frames=3)
RNG = np.random.default_rng(0)


def _spec(**changes):
    spec = SequenceSpec("syn_val", 0, 0, 3, "homography", "silhouette", "homography+tps", True)
    return dataclasses.replace(spec, **changes)


def _write_png(path, image):
    assert cv2.imwrite(str(path), image)
    return str(path)


def _disk_mask(size=40):
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), size // 3, 255, -1)
    return mask


def test_pick_skips_unusable_files_with_a_warning(tmp_path):
    bad = tmp_path / "a_bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    good = _write_png(tmp_path / "b_good.png", RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    paths = assets.list_images(str(tmp_path))
    assert paths == (str(bad), good)
    picked = set()
    with pytest.warns(assets.AssetWarning, match="a_bad.jpg: cannot decode image"):
        for seed in range(8):  # every start offset: the bad file is tried at least once
            path, image = assets.pick(np.random.default_rng(seed), paths, "texture", assets.read_texture)
            picked.add(path)
            assert image.shape == (20, 30, 3)
    assert picked == {good}


def test_textures_from_a_folder(tmp_path):
    for i in range(2):
        _write_png(tmp_path / f"tex{i}.png", RNG.integers(0, 255, (50, 60, 3), dtype=np.uint8))
    for i in range(4):
        (tmp_path / f"zz_corrupt{i}.png").write_bytes(b"\x89PNG nonsense")
    options = dataclasses.replace(TINY, texture_dir=str(tmp_path))
    with pytest.warns(assets.AssetWarning, match="zz_corrupt"):
        seq = render_sequence(_spec(sprite_kind="polygon"), options)
    used = [o["texture"] for o in seq.metadata["objects"]] + [seq.metadata["background"]["source"]]
    assert all(path.endswith(("tex0.png", "tex1.png")) for path in used)


def test_only_corrupt_textures_fail_clearly(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"nope")
    with pytest.warns(assets.AssetWarning):
        with pytest.raises(ValueError, match="no usable texture file among the 1"):
            render_sequence(_spec(), dataclasses.replace(TINY, texture_dir=str(tmp_path)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        assets.list_images(str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        assets.list_images(str(tmp_path / "missing"))


def test_silhouettes_from_a_folder_skip_empty_and_corrupt_masks(tmp_path):
    good = _write_png(tmp_path / "m_good.png", _disk_mask())
    _write_png(tmp_path / "a_empty.png", np.zeros((40, 40), np.uint8))
    (tmp_path / "b_corrupt.png").write_bytes(b"garbage")
    options = dataclasses.replace(TINY, silhouette_dir=str(tmp_path))
    with pytest.warns(assets.AssetWarning) as caught:
        seq = render_sequence(_spec(), options)
    messages = " ".join(str(w.message) for w in caught)
    assert "a_empty.png" in messages or "b_corrupt.png" in messages
    assert all(o["source"] == good for o in seq.metadata["objects"])
    assert seq.amodal.any(axis=(0, 1, 2)).all()  # never an empty sprite


def test_only_empty_silhouettes_fail_clearly(tmp_path):
    _write_png(tmp_path / "empty.png", np.zeros((40, 40), np.uint8))
    with pytest.warns(assets.AssetWarning, match="empty.png: mask has fewer than 16 foreground"):
        with pytest.raises(ValueError, match="no usable silhouette"):
            render_sequence(_spec(), dataclasses.replace(TINY, silhouette_dir=str(tmp_path)))


def test_background_videos_from_a_folder(tmp_path):
    (tmp_path / "a_broken.mp4").write_bytes(b"not a video" * 10)
    (tmp_path / "b_broken.avi").write_bytes(b"RIFF nonsense")
    writer = cv2.VideoWriter(str(tmp_path / "c_clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    base = RNG.integers(0, 255, (64, 160, 3), dtype=np.uint8)
    for t in range(5):  # a panning picture: 5 frames, fewer than needed -> played back and forth
        writer.write(np.ascontiguousarray(base[:, 2 * t:2 * t + 96]))
    writer.release()
    options = dataclasses.replace(TINY, frames=8, background_video_dir=str(tmp_path))
    with pytest.warns(assets.AssetWarning, match="broken"):
        seq = render_sequence(_spec(background="video", index=3), options)
    background = seq.metadata["background"]
    assert background["source"].endswith("c_clip.avi") and background["flow"] == "estimated-dis"
    assert np.all(np.isfinite(seq.flow_fwd)) and seq.rgb.shape == (8, 32, 48, 3)
