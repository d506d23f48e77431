"""The `oclr_benchmarks` tfds builder on tiny fake copies written in the real layouts."""

import os

import eval_fakes as ef
import numpy as np
import pytest
import tensorflow_datasets as tfds

from oclr_jax.data import benchmarks, flow_io
from oclr_jax.data.tfds import benchmarks as tb

RESOLUTION = (ef.H, ef.W)  # No resizing: stored flows must equal the files exactly.


def build(tmp_path, config_name, root, resolution=RESOLUTION, **kwargs):
    config = tb.OclrBenchmarkConfig(name=config_name + "_small", dataset=config_name,
                                    resolution=resolution)
    builder = tb.OclrBenchmarks(config=config, data_dir=str(tmp_path / "tfds"), **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    return [tb.decode_example(r) for r in builder.as_data_source("validation")]


def expected_flow(bits):
    """What eval_fakes writes (u = 4 bits gap, v = 0.5), with the official end fallback."""
    forward = np.stack([4.0 * bits, np.full(bits.shape, 0.5)], -1).astype(np.float32)
    backward = np.stack([-4.0 * bits, np.full(bits.shape, 0.5)], -1).astype(np.float32)
    forward[-1], backward[0] = -backward[-1], -forward[0]
    return np.concatenate([forward, backward], -1)


def assert_flow_close(stored, flow):
    step = (flow.max(axis=(0, 1, 2)) - flow.min(axis=(0, 1, 2))) / 65535.0
    assert np.all(np.abs(stored - flow).max(axis=(0, 1, 2)) <= step / 2 + 1e-5)


def test_davis2017_motion_ids_void_and_flows(tmp_path):
    labels = np.zeros((4, ef.H, ef.W), np.uint8)
    labels[:, 5:20, 5:30] = 1
    labels[:, 25:40, 30:60] = 2
    labels[:, 0, :] = 255  # Void.
    root = tmp_path / "davis2017m"
    ef.write_davis(str(root), "davis2017m", {"dogs-jump": labels}, image_set=True)
    (example,) = build(tmp_path, "davis2017m", tmp_path)  # Found as <manual_dir>/davis2017m.
    assert example["name"] == "dogs-jump"
    assert example["frame_names"] == ("00000", "00001", "00002", "00003")
    assert example["image_size"] == example["flow_size"] == (ef.H, ef.W)
    np.testing.assert_array_equal(example["labels"], labels)
    np.testing.assert_array_equal(example["annotated"], np.arange(4))
    assert_flow_close(example["flow"], expected_flow(ef.bits_of_labels(labels)))


def test_fbms_sparse_annotations_and_resized_flow(tmp_path):
    fg = np.zeros((5, ef.H, ef.W), bool)
    fg[:, 10:30, 20:50] = True
    ef.write_binary_dataset(str(tmp_path), {"cars1": fg}, annotated={"cars1": [0, 3]})
    examples = build(tmp_path, "fbms59", tmp_path, resolution=(2 * ef.H, 2 * ef.W),
                     sequences="all")
    (example,) = examples
    np.testing.assert_array_equal(example["annotated"], [0, 3])
    np.testing.assert_array_equal(example["labels"], fg[[0, 3]].astype(np.uint8))
    assert example["flow"].shape == (5, 2 * ef.H, 2 * ef.W, 4)
    # Doubling both sides doubles u (4 px per bit -> 8) and v (0.5 -> 1); frame 0 has no
    # backward file, so its gap -1 is the negated forward flow (u <= 0, v = -1).
    np.testing.assert_allclose(example["flow"][0].max(axis=(0, 1)), [8.0, 1.0, 0.0, -1.0],
                               atol=1e-3)
    np.testing.assert_allclose(example["flow"][1].max(axis=(0, 1)), [8.0, 1.0, 0.0, 1.0],
                               atol=1e-3)


def test_moca_boxes(tmp_path):
    csv_path = ef.write_moca(str(tmp_path), {"crab": (6, {0: (4, 5, 20, 10), 5: (8, 6, 20, 10)})})
    examples = build(tmp_path, "moca", tmp_path, sequences="all", annotations_csv=csv_path)
    (example,) = examples
    np.testing.assert_array_equal(example["annotated"], [0, 5])
    np.testing.assert_allclose(example["boxes"], [[4, 5, 24, 15], [8, 6, 28, 16]])
    assert example["box_motion"] == ("0", "0")
    assert "labels" not in example


def test_segtrack_with_all_flow_files_and_missing_flow_error(tmp_path):
    fg = np.zeros((3, ef.H, ef.W), bool)
    fg[:, 3:9, 3:9] = True
    ef.write_binary_dataset(str(tmp_path / "st"), {"worm": fg})
    (example,) = build(tmp_path, "segtrackv2", tmp_path / "st", sequences="all")
    assert_flow_close(example["flow"], expected_flow(fg.astype(np.int64)))
    for gap in (1, -1):
        os.remove(os.path.join(tmp_path, "st", f"Flows_gap{gap}", "worm", "00001.flo"))
    reader = benchmarks.Benchmark("segtrackv2", str(tmp_path / "st"), (1, -1), "all")
    with pytest.raises(benchmarks.BenchmarkError, match=r"worm.*00001.*no flow"):
        tb.benchmark_example(reader, "worm", RESOLUTION)
    flow_io.write_flo(os.path.join(tmp_path, "st", "Flows_gap1", "worm", "00001.flo"),
                      np.zeros((8, 8, 2), np.float32))
    with pytest.raises(benchmarks.BenchmarkError, match=r"00001\.flo.*size"):
        tb.benchmark_example(reader, "worm", RESOLUTION)
