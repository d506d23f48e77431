"""The `oclr_synthetic` tfds builder: the flow codec, ingestion of official-layout folders
(source_dir and manual_dir), generation with the synthetic generator, decoding, the Apache
Beam path and the `tfds build` command line (these two run where apache-beam is installed)."""

import os
import subprocess
import sys

import numpy as np
import official_fixtures as fx
import pytest
import tensorflow_datasets as tfds

from oclr_jax.data import flow_codec
from oclr_jax.data import official_layout as ol
from oclr_jax.data.tfds import synthetic as ts
from oclr_jax.errors import UserError

TINY = dict(num_frames=4, resolution=(32, 48))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(name="tiny", **kwargs):
    return ts.OclrSyntheticConfig(name=name, split="train", **(TINY | kwargs))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """An official-layout folder of 5 sequences and its tfds build (with RGB)."""
    root = str(tmp_path_factory.mktemp("syn"))
    truths = fx.write_split(root, num_sequences=5, num_frames=4, height=32, width=48)
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = ts.OclrSynthetic(config=tiny_config(with_rgb=True), data_dir=data_dir,
                               source_dir=root)
    builder.download_and_prepare()
    return root, truths, builder


def test_flow_codec_round_trip_is_within_half_a_step():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:12, 0:20].astype(np.float32)
    smooth = np.stack([0.3 * xx - 0.2 * yy + 40.0, 0.1 * yy, -0.3 * xx, np.sin(xx / 3)], -1)
    flow = (smooth + rng.normal(0, 5, size=(3, 12, 20, 4))).astype(np.float32)
    flow[..., 2] = -1.5  # A constant channel must come back exactly.
    residuals, flow_range = flow_codec.encode(flow)
    assert residuals.dtype == np.uint16 and residuals.shape == flow.shape
    np.testing.assert_array_equal(flow_range, np.stack([flow.min((0, 1, 2)), flow.max((0, 1, 2))]))
    # The codes are the prediction residuals of independently computed quantised values.
    step = (flow.max((0, 1, 2)).astype(np.float64) - flow.min((0, 1, 2))) / 65535.0
    codes = np.round((flow - flow.min((0, 1, 2))) / np.where(step > 0, step, 1)).astype(np.int64)
    padded = np.pad(codes, ((0, 0), (1, 0), (1, 0), (0, 0)))
    expected = padded[:, 1:, 1:] - padded[:, 1:, :-1] - padded[:, :-1, 1:] + padded[:, :-1, :-1]
    np.testing.assert_array_equal(residuals, np.mod(expected, 65536))
    decoded = flow_codec.decode(residuals, flow_range)
    error = np.abs(decoded - flow).max(axis=(0, 1, 2))
    assert np.all(error <= step / 2 + 1e-5 * np.abs(flow).max())
    assert error[2] == 0.0


def test_encode_rejects_bad_sequences():
    truth = fx.moving_squares(3, 16, 16, 2, seed=0)
    args = (truth["flow_fwd"], truth["flow_bwd"], truth["amodal"], truth["modal"])
    bad_flow = truth["flow_fwd"].copy()
    bad_flow[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="'2_x'.*NaN"):
        ts.encode_example("2_x", bad_flow, *args[1:])
    with pytest.raises(ValueError, match="'2_x'.*\\(T, H, W, 2\\)"):
        ts.encode_example("2_x", truth["flow_fwd"][:, :8], *args[1:])
    overlapping = truth["amodal"]  # Amodal masks overlap where the squares cross.
    with pytest.raises(ValueError, match="'2_x'.*overlap"):
        ts.encode_example("2_x", *args[:3], np.ones_like(overlapping))


def _assert_matches(decoded, flow, amodal, modal, rgb=None):
    """Flow within half a quantisation step; masks exact."""
    step = (flow.max(axis=(0, 1, 2)) - flow.min(axis=(0, 1, 2))) / 65535.0
    assert decoded["flow"].shape == flow.shape and decoded["flow"].dtype == np.float32
    assert np.all(np.abs(decoded["flow"] - flow).max(axis=(0, 1, 2)) <= step / 2 + 1e-5)
    np.testing.assert_array_equal(decoded["amodal"], amodal)
    np.testing.assert_array_equal(decoded["modal"], modal)
    n = amodal.shape[-1]
    np.testing.assert_array_equal(decoded["order"], np.arange(n)[::-1])
    assert decoded["num_objects"] == n
    if rgb is not None:
        # The ingested JPEG bytes are stored as they are; decoders may differ by rounding.
        assert np.abs(decoded["rgb"].astype(int) - rgb).max() <= 2


def test_ingested_dataset_matches_the_source_files(ingested):
    root, truths, builder = ingested
    assert builder.info.file_format.value == "array_record"
    assert builder.info.splits["train"].num_examples == len(truths)
    names = []
    for example in builder.as_data_source("train"):
        decoded = ts.decode_example(example)
        names.append(decoded["name"])
        seq = ol.read_sequence(root, decoded["name"], (1, -1), with_rgb=True)
        flow = np.concatenate([seq.flows[1], seq.flows[-1]], -1)
        _assert_matches(decoded, flow, seq.amodal, seq.modal, seq.rgb)
        # And against the fixture's own ground truth (no file reader involved).
        truth = truths[decoded["name"]]
        expected = fx.expected_flows(truth)
        _assert_matches(decoded, np.concatenate([expected[1], expected[-1]], -1),
                        truth["amodal"], truth["modal"])
    assert names == sorted(truths)  # Stored in generation order (disable_shuffling).


def test_decode_pads_channels(ingested):
    _, truths, builder = ingested
    records = builder.as_data_source("train")
    decoded = ts.decode_example(records[0], num_channels=3)
    n = decoded["num_objects"]
    assert decoded["amodal"].shape[-1] == 3 and n == 1
    np.testing.assert_array_equal(decoded["amodal"][..., :n], truths[decoded["name"]]["amodal"])
    assert not decoded["amodal"][..., n:].any() and not decoded["modal"][..., n:].any()


def test_ingests_from_manual_dir_and_resizes(tmp_path):
    manual = tmp_path / "manual"
    truths = fx.write_split(str(manual / "tiny_up"), num_sequences=2, num_frames=3, height=16,
                            width=24)
    builder = ts.OclrSynthetic(config=tiny_config("tiny_up", num_frames=3),
                               data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    records = builder.as_data_source("train")
    assert len(records) == 2
    for example in records:
        decoded = ts.decode_example(example)
        flow = decoded["flow"]
        assert flow.shape == (3, 32, 48, 4)
        truth = fx.expected_flows(truths[decoded["name"]])
        # Squares move by whole pixels; doubling the grid doubles the vectors (u by 48/24).
        np.testing.assert_allclose(flow[..., :2].max(axis=(0, 1, 2)),
                                   2 * truth[1].max(axis=(0, 1, 2)), atol=1e-3)
        assert decoded["amodal"].shape == (3, 32, 48, decoded["num_objects"])


def test_generated_folder_ingested_at_another_resolution(tmp_path):
    """Our generator's folder (with modal label maps) built at another size: nearest-resized
    visible masks stay inside their bilinear-resized amodal masks (no refusal)."""
    from oclr_jax.data import synth
    from oclr_jax.data.synth.writer import write_sequence

    small = tiny_config("gen_small", num_sequences=3, num_frames=4, resolution=(40, 72))
    folder = str(tmp_path / "folder")
    for spec in synth.plan_split("syn_train", 3, small.seed):
        write_sequence(folder, synth.render_sequence(spec, ts.synth_options(small)))
    config = tiny_config("ingest_up", num_sequences=3, num_frames=4, resolution=(64, 112))
    builder = ts.OclrSynthetic(config=config, data_dir=str(tmp_path / "tfds"), source_dir=folder)
    builder.download_and_prepare()
    for record in builder.as_data_source("train"):
        decoded = ts.decode_example(record)
        assert decoded["amodal"].shape[1:3] == (64, 112)
        assert not (decoded["modal"] & ~decoded["amodal"]).any()
        assert decoded["modal"].any()


def test_generated_dataset_matches_the_generator_and_its_written_folder(tmp_path):
    from oclr_jax.data import synth
    from oclr_jax.data.synth.writer import write_sequence

    config = tiny_config("gen_tiny", num_sequences=3, with_rgb=True)
    generated = ts.OclrSynthetic(config=config, data_dir=str(tmp_path / "gen"))
    generated.download_and_prepare()
    options = ts.synth_options(config)
    sequences = [synth.render_sequence(spec, options)
                 for spec in synth.plan_split("syn_train", 3, config.seed)]
    folder = str(tmp_path / "folder")
    for seq in sequences:
        write_sequence(folder, seq)
    ingested = ts.OclrSynthetic(config=config, data_dir=str(tmp_path / "ingested"),
                                source_dir=folder)
    ingested.download_and_prepare()
    records = generated.as_data_source("train")
    copies = ingested.as_data_source("train")
    assert len(records) == len(copies) == 3
    copies = {ts.decode_example(copy)["name"]: copy for copy in copies}
    for seq, record in zip(sequences, records):  # Generated in plan order.
        decoded = ts.decode_example(record)
        assert decoded["name"] == seq.name
        copy = copies[seq.name]
        # Against the generator's arrays (its modal masks know the occluder).
        _assert_matches(decoded, np.concatenate([seq.flow_fwd, seq.flow_bwd], -1), seq.amodal,
                        seq.modal)
        # Against the written files, read by the official-layout reader; both sides encode
        # RGB with OpenCV at JPEG quality 95.
        files = ol.read_sequence(folder, seq.name, (1, -1), with_rgb=True)
        _assert_matches(decoded, np.concatenate([files.flows[1], files.flows[-1]], -1),
                        files.amodal, decoded["modal"], files.rgb)
        # Generating and ingesting the written folder store identical flow and masks.
        for key in ("flow", "flow_range", "amodal", "modal", "order", "num_objects"):
            np.testing.assert_array_equal(np.asarray(record[key]), np.asarray(copy[key]))


def test_file_format_defaults_to_array_record_unless_asked(tmp_path):
    """`tfds build --file_format tfrecord` passes the format to the constructor; it wins over
    our ArrayRecord default (which the input pipeline's random access needs)."""
    config = tiny_config("format_tiny", num_sequences=1, num_frames=2)
    asked = ts.OclrSynthetic(config=config, data_dir=str(tmp_path / "a"), file_format="tfrecord")
    asked.download_and_prepare()
    default = ts.OclrSynthetic(config=config, data_dir=str(tmp_path / "b"))
    default.download_and_prepare()
    assert asked.info.file_format.value == "tfrecord"
    assert default.info.file_format.value == "array_record"
    assert [p.name.split("-")[1] for p in (tmp_path / "a").glob("**/*-train.*-00000-of-*")] \
        == ["train.tfrecord"]


def test_incomplete_generated_sequences_are_left_out(tmp_path):
    from oclr_jax.data import synth
    from oclr_jax.data.synth.writer import metadata_path, write_sequence

    options = synth.RenderOptions(resolution=(32, 48), frames=3)
    names = [write_sequence(str(tmp_path), synth.render_sequence(spec, options))
             for spec in synth.plan_split("syn_train", 2, 0)]
    os.remove(metadata_path(str(tmp_path), names[1]))
    with pytest.warns(UserWarning, match="incomplete"):
        assert ol.list_sequences(str(tmp_path)) == names[:1]


def test_command_line_builds_a_custom_variant(tmp_path):
    from oclr_jax.data import build_tfds

    build_tfds.main(["oclr_synthetic/syn_single", "--config_name", "single_cli",
                     "--num_sequences", "2", "--num_frames", "3", "--resolution", "32", "48",
                     "--data_dir", str(tmp_path)])
    builder = tfds.builder("oclr_synthetic/single_cli", data_dir=str(tmp_path))
    examples = [ts.decode_example(r) for r in builder.as_data_source("train")]
    assert [e["num_objects"] for e in examples] == [1, 1]  # Syn-Single's plan.
    assert examples[0]["flow"].shape == (3, 32, 48, 4)
    with pytest.raises(UserError, match="config_name"):  # exit 2 through run_cli
        build_tfds.main(["oclr_synthetic/syn_train", "--num_sequences", "2"])


def _in_process_beam_runner(beam):
    """Beam's FnApiRunner, counting its pipelines.  (Beam >= 2.6x's DirectRunner first tries
    the Prism runner, fetching its binary from GitHub, and falls back to FnApiRunner offline;
    the test runs the same engine without the network.)"""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    class CountingRunner(FnApiRunner):
        pipelines_run = 0

        def run_pipeline(self, pipeline, options):
            CountingRunner.pipelines_run += 1
            return super().run_pipeline(pipeline, options)

    return CountingRunner()


def test_beam_path_builds_the_same_dataset(tmp_path, monkeypatch, caplog):
    beam = pytest.importorskip("apache_beam")  # Runs where apache-beam is installed.
    config = tiny_config("beam_tiny", num_sequences=3)
    plain = ts.OclrSynthetic(config=config, data_dir=str(tmp_path / "plain"))
    plain.download_and_prepare()
    runner = _in_process_beam_runner(beam)
    with_beam = ts.OclrSynthetic(config=config, data_dir=str(tmp_path / "beam"))
    # A runner without options must not make Beam read the caller's command line.
    monkeypatch.setattr(sys, "argv", ["caller", "--not_a_beam_flag", "-q"])
    with caplog.at_level("WARNING"):
        with_beam.download_and_prepare(
            download_config=tfds.download.DownloadConfig(beam_runner=runner))
    assert "not_a_beam_flag" not in caplog.text
    assert runner.pipelines_run == 1  # The examples really went through Beam.
    assert with_beam.info.file_format.value == "array_record"
    expected = list(plain.as_data_source("train"))
    records = list(with_beam.as_data_source("train"))
    assert len(records) == len(expected) == 3
    for record, reference in zip(records, expected):  # Same plan order, same bytes.
        for key in ("name", "num_objects", "order", "flow", "flow_range", "amodal", "modal"):
            np.testing.assert_array_equal(np.asarray(record[key]), np.asarray(reference[key]))


def _run_tfds_build(args, cwd):
    """`tfds build ARGS` in a fresh interpreter (the `tfds` script runs this module)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    result = subprocess.run(
        [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.parametrize("route", ["imports_json_config_beam", "script_path_paper_config"])
def test_tfds_build_command_line(tmp_path, route):
    """The real `tfds build` (it imports apache_beam and mlcroissant at start-up) finds the
    builder through `--imports` or the builder's file, builds it, and the records equal what
    the generator renders."""
    pytest.importorskip("apache_beam")
    pytest.importorskip("mlcroissant")
    from oclr_jax.data import synth

    data_dir = str(tmp_path / "tfds")
    if route == "imports_json_config_beam":
        # A custom variant as JSON config kwargs, generated on a Beam runner.
        name, plan_split, num_frames, resolution = "tfds_cli_tiny", "syn_single", 3, (32, 48)
        config = ('{"name": "tfds_cli_tiny", "plan_split": "syn_single", "num_sequences": 4, '
                  '"num_frames": 3, "resolution": [32, 48]}')
        result = _run_tfds_build(["oclr_synthetic", "--imports", "oclr_jax.data.tfds.synthetic",
                         "--config", config, "--data_dir", data_dir,
                         "--beam_pipeline_options", "runner=FnApiRunner",
                         "--max_examples_per_split", "2"], cwd=str(tmp_path))
        split = "train"
    else:
        # The paper config by name, cut to its first 2 sequences; no Beam.
        name, plan_split, num_frames, resolution = "syn_val", "syn_val", 30, (128, 224)
        result = _run_tfds_build([os.path.join("oclr_jax", "data", "tfds", "synthetic.py"),
                         "--config", "syn_val", "--data_dir", data_dir,
                         "--max_examples_per_split", "2"], cwd=REPO_ROOT)
        split = "validation"
    # tfds logs its writer choice; only the Beam route may have used the Beam writer.
    used_beam = "using BeamWriter" in result.stdout + result.stderr
    assert used_beam == (route == "imports_json_config_beam")
    builder = tfds.builder(f"oclr_synthetic/{name}", data_dir=data_dir)
    assert builder.info.file_format.value == "array_record"
    records = builder.as_data_source(split)
    assert len(records) == 2
    options = synth.RenderOptions(frames=num_frames, resolution=resolution)
    for record, spec in zip(records, synth.plan_split(plan_split, 2, 0)):
        seq = synth.render_sequence(spec, options)
        decoded = ts.decode_example(record)
        assert decoded["name"] == seq.name
        _assert_matches(decoded, np.concatenate([seq.flow_fwd, seq.flow_bwd], -1), seq.amodal,
                        seq.modal)
        assert ("rgb" in decoded) == (name == "syn_val")
