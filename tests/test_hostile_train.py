"""`python -m oclr_jax.train` given hostile input and interrupted, as a user runs it.

Input mistakes end with exit 2, no traceback, the culprit named, before any work (the workdir
is not even created); a truncated flow inside train_dir is named instead of ending in TF
tracebacks and a C++ abort; Ctrl-C saves like SIGTERM, and the rerun ends with the params of an
uninterrupted run.
"""

import os
import re
import signal

import hostile
import pytest

MODULE = "oclr_jax.train"
SMALL = ["--config", "configs/tiny.py", "--config.data.num_frames=2",
         "--config.data.resolution=(32,32)", "--config.model.num_layers=1",
         "--config.train.eval_every=0", "--config.train.batch_size=8",
         "--config.train.learning_rate=2e-6", "--config.train.warmup_steps=0",
         "--xla_option", "xla_backend_optimization_level=1"]


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data") / "syn"
    result = hostile.run("oclr_jax.data.synth", "generate", "--split", "syn_train", "--out", root,
                         "--num-sequences", "8", "--resolution", "32x32", "--frames", "4",
                         "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.parametrize("args,culprits", [
    (["--config", "configs/no_such.py"], ["no_such.py", "not found"]),
    (["--config.train.no_such_key=1"], ["no_such_key"]),
    ([], ["config.data.train_dir"]),
    (["--config.data.train_dir=/no/such/folder"], ["/no/such/folder"]),
    (["--config.train.batch_size=0"], ["config.train.batch_size"]),
    (["--config.train.checkpoint_every=0"], ["config.train.checkpoint_every"]),
    (["--config.train.learning_rate=-1.0"], ["config.train.learning_rate"]),
    (["--config.train.batch_size=3"], ["batch_size", "devices"]),
    (["--config.loss.matcher=greedy"], ["config.loss.matcher"]),
    (["--config.train.init_params_from=/no/such/model"], ["init_params_from", "does not exist"]),
    (["--config.train.init_params_from=SHIPPED"], ["init_params_from", "differs", "model.num_layers"]),
])
def test_input_mistakes_fail_before_any_work(tmp_path, train_dir, args, culprits):
    """In this process (the same `run_cli` and messages; a fresh interpreter per case costs
    half a minute on a loaded machine); `test_a_mistake_as_a_user_runs_it` runs one for real."""
    with_data = [] if any("train_dir" in c for c in culprits) else [
        f"--config.data.train_dir={train_dir}"]
    from oclr_jax.demo.run import DEFAULT_CHECKPOINT  # a model of another size
    args = [a.replace("SHIPPED", DEFAULT_CHECKPOINT) for a in args]
    result = hostile.call(MODULE, *SMALL, "--workdir", tmp_path / "run", *with_data, *args)
    hostile.assert_user_error(result, *culprits)
    assert not os.path.exists(tmp_path / "run")


def test_a_mistake_as_a_user_runs_it(tmp_path, train_dir):
    result = hostile.run(MODULE, *SMALL, "--workdir", tmp_path / "run",
                         f"--config.data.train_dir={train_dir}", "--config.train.batch_size=0")
    hostile.assert_user_error(result, "config.train.batch_size")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("kind", ["file", "foreign"])
def test_workdir_that_is_not_ours_is_refused_untouched(tmp_path, train_dir, kind):
    workdir = tmp_path / "run"
    if kind == "file":
        workdir.write_text("notes")
    else:
        workdir.mkdir()
        (workdir / "model").mkdir()  # export_model would replace this folder
        (workdir / "model" / "mine.txt").write_text("mine")
    before = hostile.snapshot(str(tmp_path))
    result = hostile.call(MODULE, *SMALL, "--workdir", workdir,
                         f"--config.data.train_dir={train_dir}", "--config.train.num_steps=1")
    hostile.assert_user_error(result, "--workdir")
    assert hostile.snapshot(str(tmp_path)) == before


@pytest.mark.slow
def test_truncated_flow_in_train_dir_is_named(tmp_path, train_dir):
    import shutil

    data = tmp_path / "syn"
    shutil.copytree(train_dir, data)
    sequence = sorted(os.listdir(data / "Flows_gap1"))[0]
    path = data / "Flows_gap1" / sequence / "00001.flo"
    path.write_bytes(path.read_bytes()[:100])
    result = hostile.run(MODULE, *SMALL, "--workdir", tmp_path / "run",
                         f"--config.data.train_dir={data}", "--config.train.num_steps=2",
                         "--config.data.shuffle_buffer=0")
    hostile.assert_user_error(result, f"{sequence}/00001.flo", "data bytes")


def _params_digest(stderr: str) -> str:
    found = re.findall(r"step (\d+), params sha256 ([0-9a-f]+)", stderr)
    assert found, stderr[-3000:]
    return found[-1]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT])
def test_ctrl_c_saves_and_the_rerun_matches_an_uninterrupted_run(tmp_path, train_dir, signum):
    steps = ["--config.train.num_steps=40", "--config.train.checkpoint_every=1000",
             f"--config.data.train_dir={train_dir}"]
    reference = hostile.run(MODULE, *SMALL, *steps, "--workdir", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    workdir = tmp_path / "run"
    log = tmp_path / "log.txt"
    import subprocess
    import sys
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", MODULE, *SMALL, *steps, "--workdir",
                                    str(workdir)], cwd=hostile.REPO, env=hostile.env(),
                                   stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)
        hostile.wait_for(lambda: re.search(r"\b([2-9]|[1-3]\d)/40\b", log.read_text()), 300,
                         "a few training steps")
        os.killpg(process.pid, signum)  # Ctrl-C reaches the whole process group
        status = process.wait(timeout=120)
    err = log.read_text()
    assert status == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    saved = re.search(r"saved step (\d+)", err)
    assert saved and 1 <= int(saved.group(1)) < 40, err[-3000:]
    assert os.path.isdir(workdir / "checkpoints" / saved.group(1))
    assert not os.path.exists(workdir / "model")  # exported only when training is complete
    rerun = hostile.run(MODULE, *SMALL, *steps, "--workdir", workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"training steps {saved.group(1)} -> 40" in rerun.stderr
    assert _params_digest(rerun.stderr) == _params_digest(reference.stderr)
