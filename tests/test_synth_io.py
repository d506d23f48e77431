"""Writing the official layout, generating splits (workers, shards, resume) and the CLI."""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from oclr_jax.data import flow_io
from oclr_jax.data.masks_io import davis_palette
from oclr_jax.data.synth import (
    RenderOptions,
    SequenceGenerationError,
    SequenceSpec,
    generate,
    read_sequence,
    render_sequence,
    write_sequence,
)
from oclr_jax.data.synth.__main__ import main
from oclr_jax.data.synth.png import encode_rows, unfiltered_rows
from oclr_jax.data.synth.writer import SequenceWriter, remove_stale_staging, staging_name

TINY = RenderOptions(resolution=(32, 48), frames=3)


def _official_amodal(split_dir, seq_name, frame, out_channels=3):
    """The official loader's amodal read (data_utils.readAmodalSeg), rewritten: the object
    count comes from the folder name's first character; missing channels are zeros."""
    masks = []
    for k in range(1, out_channels + 1):
        if k <= int(seq_name[0]):
            image = cv2.imread(os.path.join(split_dir, "AmodalAnnotations", seq_name, f"{k}_{frame}.png"))
            masks.append((image / 255.0 > 0.5)[..., 0])
        else:
            masks.append(np.zeros_like(masks[0]))
    return np.stack(masks, -1)


def _tree_digest(root):
    """{relative path: sha1} of every file under root (the manifest excluded)."""
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if name != "synth_manifest.json":
                with open(path, "rb") as f:
                    digests[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return digests


def test_official_layout_and_round_trip(tmp_path):
    spec = SequenceSpec("syn_val", 0, 4, 2, "homography", "polygon", "homography+tps", True)
    seq = render_sequence(spec, dataclasses.replace(TINY, frames=4))
    write_sequence(str(tmp_path), seq, flow_images=True)
    name = seq.name
    assert name[0] == "2"
    frames = sorted(os.listdir(tmp_path / "JPEGImages" / name))
    assert frames == ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg"]
    assert sorted(os.listdir(tmp_path / "AmodalAnnotations" / name))[:2] == ["1_00000.png", "1_00001.png"]
    assert len(os.listdir(tmp_path / "AmodalAnnotations" / name)) == 2 * 4
    assert len(os.listdir(tmp_path / "FlowImages_gap-1" / name)) == 4
    for t in range(4):
        stem = f"{t:05d}"
        # Flows are stored exactly; frame t's backward flow sits under frame t's name.
        np.testing.assert_array_equal(flow_io.read_flo(str(tmp_path / "Flows_gap1" / name / f"{stem}.flo")),
                                      seq.flow_fwd[t])
        np.testing.assert_array_equal(flow_io.read_flo(str(tmp_path / "Flows_gap-1" / name / f"{stem}.flo")),
                                      seq.flow_bwd[t])
        # The official amodal reading recovers our channels (3 output channels, last empty).
        official = _official_amodal(str(tmp_path), name, stem)
        np.testing.assert_array_equal(official[..., :2], seq.amodal[t])
        assert not official[..., 2].any()
        # Modal palette colours as the official processMultiSeg matches them.
        rgb = cv2.imread(str(tmp_path / "Annotations" / name / f"{stem}.png"))[..., ::-1]
        for k, colour in enumerate([[128, 0, 0], [0, 128, 0]]):
            np.testing.assert_array_equal(np.all(rgb == colour, -1), seq.modal[t, ..., k])
    back = read_sequence(str(tmp_path), name)
    np.testing.assert_array_equal(back.amodal, seq.amodal)
    np.testing.assert_array_equal(back.modal, seq.modal)
    assert np.abs(back.rgb.astype(int) - seq.rgb).mean() < 8  # JPEG quality 95
    assert back.metadata["spec"]["index"] == 4 and back.metadata["order"] == [1, 0]
    assert not os.path.exists(tmp_path / ".tmp" / f"{name}") and os.listdir(tmp_path / ".tmp") == []


def test_png_encoder_writes_what_readers_decode():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (2, 37, 53)).astype(np.uint8)
    labels[:, 10:30, 5:40] = 2  # flat areas, as in masks
    rows = unfiltered_rows(labels)
    for image, image_rows in zip(labels, rows):
        mask = (image == 2).astype(np.uint8) * 255
        grey = encode_rows(unfiltered_rows(mask))
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(grey, np.uint8), cv2.IMREAD_UNCHANGED), mask)
        with Image.open(io.BytesIO(grey)) as decoded:
            assert decoded.mode == "L"
            np.testing.assert_array_equal(np.array(decoded), mask)
        indexed = encode_rows(image_rows, davis_palette())
        with Image.open(io.BytesIO(indexed)) as decoded:
            assert decoded.mode == "P"
            np.testing.assert_array_equal(np.array(decoded), image)
            assert decoded.getpalette()[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
        colours = cv2.imdecode(np.frombuffer(indexed, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        np.testing.assert_array_equal(colours, davis_palette()[image])
    with pytest.raises(ValueError, match="scanlines"):
        encode_rows(labels[0])  # no filter bytes: not C-contiguous scanlines of W + 1
    with pytest.raises(ValueError, match="palette"):
        encode_rows(rows[0], np.zeros((257, 3), np.uint8))


def test_writer_keeps_its_staging_folder_until_closed(tmp_path):
    """Nothing is deleted per sequence (freed inodes slow file creation down on ext4 without
    a journal): the staging folders are made once and reused, and `close` removes them."""
    specs = [SequenceSpec("syn_val", 0, i, 1, "homography", "polygon", "homography", False) for i in range(2)]
    staging = tmp_path / ".tmp" / staging_name()
    with SequenceWriter(str(tmp_path)) as writer:
        writer.write(render_sequence(specs[0], TINY))
        inodes = {folder: os.stat(staging / folder).st_ino for folder in os.listdir(staging)}
        assert sorted(inodes) == ["AmodalAnnotations", "Annotations", "Flows_gap-1", "Flows_gap1",
                                  "JPEGImages", "Metadata"]
        assert all(not os.listdir(staging / folder) for folder in inodes)  # renamed into place
        writer.write(render_sequence(specs[1], TINY))
        assert {folder: os.stat(staging / folder).st_ino for folder in os.listdir(staging)} == inodes
    assert os.listdir(tmp_path / ".tmp") == []
    assert sorted(os.listdir(tmp_path / "JPEGImages")) == ["1_00000", "1_00001"]


def test_stale_staging_folders_are_cleared_safely(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = tmp_path / ".tmp" / staging_name(int(finished.stdout))  # this host, process gone
    live = tmp_path / ".tmp" / staging_name()  # this process: may still be writing
    elsewhere = tmp_path / ".tmp" / "staging.another-host.12"
    for root in (dead, live, elsewhere):
        for name in ("2_00003", "1_00004"):
            (root / "JPEGImages" / name).mkdir(parents=True)
            (root / "JPEGImages" / name / "00000.jpg").write_bytes(b"partial")
        (root / "Metadata").mkdir()
        (root / "Metadata" / "2_00003.json").write_text("{}")
    old_style = tmp_path / ".tmp" / "2_00003.oldhost.7"  # an earlier writer's temp folder
    (old_style / "JPEGImages").mkdir(parents=True)
    remove_stale_staging(str(tmp_path), {"2_00003"})  # about to be rewritten by the caller
    assert not dead.exists() and not old_style.exists()
    for root in (live, elsewhere):
        assert os.listdir(root / "JPEGImages") == ["1_00004"] and os.listdir(root / "Metadata") == []


def test_write_rejects_inconsistent_sequences(tmp_path):
    seq = render_sequence(SequenceSpec("syn_val", 0, 1, 1, "homography", "polygon", "homography", False), TINY)
    with pytest.raises(ValueError, match="start with its object count"):
        write_sequence(str(tmp_path), dataclasses.replace(seq, name="2_bad"))
    broken = dataclasses.replace(seq, flow_fwd=seq.flow_fwd.copy())
    broken.flow_fwd[1, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_sequence(str(tmp_path), broken)
    assert not os.path.exists(tmp_path / "Metadata" / f"{seq.name}.json")


def test_workers_and_shards_write_the_single_process_dataset(tmp_path):
    single, sharded = str(tmp_path / "single"), str(tmp_path / "sharded")
    generate("syn_val", single, num_sequences=5, seed=7, options=TINY, workers=1, progress=False)
    generate("syn_val", sharded, num_sequences=5, seed=7, options=TINY, workers=2, shard=(0, 2), progress=False)
    summary = generate("syn_val", sharded, num_sequences=5, seed=7, options=TINY, shard=(1, 2), progress=False)
    assert (summary.planned, summary.written) == (2, 2)
    digests = _tree_digest(single)
    assert len([p for p in digests if p.startswith("Metadata")]) == 5
    assert digests == _tree_digest(sharded)


def test_resume_redoes_only_incomplete_sequences(tmp_path):
    out = str(tmp_path / "split")
    first = generate("syn_single", out, num_sequences=3, seed=1, options=TINY, progress=False)
    assert first.written == 3
    reference = _tree_digest(out)
    victim = "1_00001"
    # A crash mid-write: metadata missing, a frame folder half there, a stale temp folder.
    os.remove(os.path.join(out, "Metadata", f"{victim}.json"))
    os.remove(os.path.join(out, "JPEGImages", victim, "00002.jpg"))
    os.makedirs(os.path.join(out, ".tmp", f"{victim}.otherhost.123", "JPEGImages"))
    again = generate("syn_single", out, num_sequences=3, seed=1, options=TINY, progress=False)
    assert (again.skipped, again.written) == (2, 1)
    assert _tree_digest(out) == reference
    assert not os.path.exists(os.path.join(out, ".tmp"))
    # Another setting in the same folder is refused, naming what differs.
    with pytest.raises(ValueError, match="options"):
        generate("syn_single", out, num_sequences=3, seed=1, options=dataclasses.replace(TINY, frames=4),
                 progress=False)


@pytest.mark.filterwarnings("ignore:skipping texture")  # asserted in test_synth_assets.py
@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_sequence_names_its_index_and_seed(tmp_path, workers):
    textures = tmp_path / "textures"
    textures.mkdir()
    (textures / "broken.png").write_bytes(b"not a png")  # the only texture: every sequence fails
    options = dataclasses.replace(TINY, texture_dir=str(textures))
    with pytest.raises(SequenceGenerationError,
                       match=r"sequence index 0 \(\S+\) of split syn_val with seed 11 failed: ValueError: "
                             r"no usable texture"):
        generate("syn_val", str(tmp_path / "out"), num_sequences=1, seed=11, options=options,
                 workers=workers, progress=False)
    assert not os.path.exists(tmp_path / "out" / "Metadata")


def test_cli_generate_show_and_plan(tmp_path, capsys):
    out = str(tmp_path / "val")
    assert main(["generate", "--split", "syn_val", "--out", out, "--num-sequences", "2",
                 "--resolution", "32x48", "--frames", "3", "--quiet", "--seed", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 2 and summary["planned"] == 2
    sheet = str(tmp_path / "sheet.png")
    assert main(["show", out, "--out", sheet, "--frames", "2"]) == 0
    image = cv2.imread(sheet)
    name = sorted(os.listdir(os.path.join(out, "JPEGImages")))[0]
    columns = 3 + int(name[0]) + 1  # rgb, 2 flows, amodal layers, modal
    assert image is not None and image.shape[1] >= columns * 48 and image.shape[0] >= 2 * 32
    capsys.readouterr()
    assert main(["show", out, "--seq", "9_99999", "--out", sheet]) == 2  # no such sequence
    error = capsys.readouterr().err
    assert "no sequence '9_99999'" in error and f"2 complete sequences, e.g. {name}" in error
    assert main(["plan", "--split", "syn_single"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["sequences"] == 256 and plan["num_objects"] == {"1": 256}
    assert main(["generate", "--split", "syn_val", "--out", out, "--shard", "3/2", "--quiet"]) == 2
    assert "--shard" in capsys.readouterr().err
    shutil.rmtree(out)
