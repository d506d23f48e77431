"""`python -m oclr_jax.data.build_tfds` given hostile input and interrupted, as a user runs it.

Mistakes end with exit 2, the culprit named, no traceback (a truncated flow in the folder being
ingested included, and nothing published); SIGINT/SIGTERM during a Beam build with two worker
processes end the build and every worker, and a rerun builds the dataset.
"""

import os
import shutil
import signal

import hostile
import pytest

MODULE = "oclr_jax.data.build_tfds"


@pytest.fixture(scope="module")
def syn_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "syn_val"
    result = hostile.run("oclr_jax.data.synth", "generate", "--split", "syn_val", "--out", root,
                         "--num-sequences", "3", "--resolution", "32x48", "--frames", "4",
                         "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.parametrize("args,culprits", [
    (["oclr_nope/x"], ["oclr_nope"]),
    (["oclr_synthetic/syn_nope"], ["syn_nope"]),
    (["oclr_synthetic/syn_train", "--config_name", "s", "--num_sequences", "0"],
     ["--num_sequences"]),
    (["oclr_synthetic/syn_train", "--config_name", "s", "--resolution", "8", "8"],
     ["--resolution"]),
    (["oclr_synthetic/syn_val", "--source_dir", "/no/such/syn"], ["--source_dir", "/no/such"]),
    (["oclr_benchmarks/davis2016", "--manual_dir", "/no/such/davis"], ["--manual_dir"]),
    (["oclr_synthetic/syn_train", "--num_frames", "8"], ["--config_name"]),
])
def test_argument_mistakes(tmp_path, args, culprits):
    result = hostile.call(MODULE, *args, "--data_dir", tmp_path / "tfds")
    hostile.assert_user_error(result, *culprits)
    assert not os.path.exists(tmp_path / "tfds" / "oclr_synthetic")


@pytest.mark.slow
def test_truncated_flow_in_the_ingested_folder_is_named(tmp_path, syn_dir):
    source = tmp_path / "syn_val"
    shutil.copytree(syn_dir, source)
    sequence = sorted(os.listdir(source / "Flows_gap1"))[1]
    path = source / "Flows_gap1" / sequence / "00001.flo"
    path.write_bytes(path.read_bytes()[:100])
    result = hostile.run(MODULE, "oclr_synthetic/syn_val", "--config_name", "small_val",
                         "--resolution", "32", "48", "--num_frames", "4", "--num_sequences", "3",
                         "--source_dir", source, "--data_dir", tmp_path / "tfds")
    hostile.assert_user_error(result, f"{sequence}/00001.flo", "data bytes")
    version = tmp_path / "tfds" / "oclr_synthetic" / "small_val" / "1.0.0"
    assert not version.exists()  # nothing half-built published


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_beam_build_ends_its_workers_and_reruns(tmp_path, signum):
    args = ["oclr_synthetic/syn_train", "--config_name", "tiny_beam", "--num_sequences", "64",
            "--num_frames", "4", "--resolution", "32", "48", "--data_dir", tmp_path / "tfds",
            "--beam_pipeline_options",
            "runner=FnApiRunner,direct_num_workers=2,direct_running_mode=multi_processing"]
    process = hostile.start(MODULE, *args)
    workers = hostile.wait_for(lambda: len(hostile.python_descendants(process.pid)) >= 2 and
                               hostile.python_descendants(process.pid), 300, "the Beam workers")
    status, err = hostile.interrupt(process, signum)
    assert status == 128 + signum, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err, err[-3000:]
    hostile.wait_for(lambda: not any(hostile.alive(p) for p in workers), 20,
                     f"workers {workers} to end")
    rerun = hostile.run(MODULE, *args, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "train 64 examples" in rerun.stderr
