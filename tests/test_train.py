"""The train step on 8 fake devices vs one, kill-and-resume, and the trainer's files."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from oclr_jax import sharding
from oclr_jax.model import model_from_config
from oclr_jax.train import optim
from oclr_jax.train import step as train_step
from oclr_jax.train import trainer as train
from tests.train_fakes import FAST_COMPILE, moving_squares_batches, small_config


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Identical programs (each run re-jits the same step) compile once per module."""
    previous = (jax.config.jax_compilation_cache_dir,
                jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])


def _max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_sharded_step_equals_single_device_step():
    config = small_config()
    model = model_from_config(config.model, in_channels=4)
    tx = optim.make_optimizer(config.train)
    one = sharding.make_data_mesh(jax.devices()[:1])
    eight = sharding.make_data_mesh()
    assert eight.size == 8
    host_state = jax.device_get(train_step.init_train_state(
        model, tx, jax.random.PRNGKey(0), 4, one, FAST_COMPILE))
    local = next(moving_squares_batches(config, process_index=0, process_count=1))
    results = {}
    for name, mesh in (("one", one), ("eight", eight)):  # two updates each
        step = train_step.make_train_step(model, tx, config, mesh, FAST_COMPILE)
        state = sharding.put_replicated(host_state, mesh)
        states, metrics_per_step = [], []
        for _ in range(2):
            batch = sharding.global_batch(train_step.select_keys(local, train_step.TRAIN_KEYS),
                                          mesh)
            state, metrics = step(state, batch)
            states.append(jax.device_get(state))
            metrics_per_step.append(jax.device_get(metrics))
        results[name] = (states, metrics_per_step)
    (states_one, metrics_one), (states_eight, metrics_eight) = results["one"], results["eight"]
    state_one, state_eight = states_one[-1], states_eight[-1]
    assert metrics_one[0]["nonfinite"] == metrics_one[1]["nonfinite"] == 0
    terms = ("loss", "amodal_bce", "boundary", "order", "modal", "grad_norm")
    # Step 1 starts from identical params: only the cross-device sums round differently.
    for term in terms:
        np.testing.assert_allclose(metrics_eight[0][term], metrics_one[0][term], rtol=1e-5)
    # Step 2 starts from params one Adam update apart, and Adam's first update is lr * g / |g|:
    # gradients that are zero up to rounding can flip sign (seen: loss 0.434928 vs 0.434920).
    for term in terms:
        np.testing.assert_allclose(metrics_eight[1][term], metrics_one[1][term], rtol=1e-4)
    assert _max_abs_diff(state_one.params, state_eight.params) < 1e-5
    assert _max_abs_diff(state_one.params, host_state.params) > 1e-6  # the params did move
    # Adam's moments are (running averages of) the clipped gradients, element by element.  They
    # are compared on the global scale, not element by element: the cross-device sum rounds
    # differently, some gradients are zero up to rounding (the order head's last bias shifts
    # every order value alike), and at initialisation the layers' predictions are nearly equal,
    # so near-tied matching costs can hand a nearly equal gradient to a different layer.  Seen
    # (AMD EPYC, 2026-12-06): relative L2 difference 1e-3, largest element difference 2.3e-4 of
    # the largest element.  A real sharding bug (a missing or doubled cross-device sum, one
    # device's examples dropped) changes both by the order of the gradient itself.
    for step_index in range(2):
        for moment in ("mu", "nu"):
            flat_one, flat_eight = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(
                getattr(states[step_index].opt_state[1][0], moment))])
                for states in (states_one, states_eight)]
            where = f"{moment} after step {step_index + 1}"
            relative_l2 = np.linalg.norm(flat_eight - flat_one) / np.linalg.norm(flat_one)
            assert relative_l2 < 1e-2, (where, relative_l2)
            np.testing.assert_allclose(flat_eight, flat_one, rtol=1e-2,
                                       atol=2e-3 * np.abs(flat_one).max(), err_msg=where)


def _batches_with_sigterm_at(step_to_kill):
    def batches(config, *, process_index, process_count, start_step=0):
        for step, batch in enumerate(moving_squares_batches(
                config, process_index=process_index, process_count=process_count,
                start_step=start_step), start=start_step):
            if step == step_to_kill:  # the batch of update step_to_kill + 1 is being fetched
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch
    return batches


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    config = small_config("train.num_steps=4", "train.checkpoint_every=3")
    devices = jax.devices()[:1]
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"), devices=devices,
                                        train_batches=moving_squares_batches,
                                        compiler_options=FAST_COMPILE)
    assert int(straight.step) == 4
    assert os.path.isfile(tmp_path / "straight" / "model" / "config.json")

    workdir = str(tmp_path / "interrupted")
    stopped = train.train_and_evaluate(config, workdir, devices=devices,
                                       train_batches=_batches_with_sigterm_at(1),
                                       compiler_options=FAST_COMPILE)
    assert int(stopped.step) == 2  # SIGTERM during step 2: that step finishes, saves, exits
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    assert not os.path.exists(os.path.join(workdir, "model"))  # not finished: no export
    resumed = train.train_and_evaluate(config, workdir, devices=devices,
                                       train_batches=moving_squares_batches,
                                       compiler_options=FAST_COMPILE)
    assert int(resumed.step) == 4
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3", "4"]
    # Same data, rng and state: the same numbers (updates are ~lr = 2e-6 per step, so a wrong
    # batch or key would show far above this tolerance, in the params and in Adam's moments).
    assert _max_abs_diff(straight.params, resumed.params) < 1e-8
    assert _max_abs_diff(straight.opt_state, resumed.opt_state) < 1e-9
    with open(os.path.join(workdir, "train_config.json")) as f:
        assert json.load(f)["train"]["num_steps"] == 4
    assert any(name.startswith("events.out.tfevents")
               for name in os.listdir(os.path.join(workdir, "tensorboard")))

    other_model = small_config("train.num_steps=4", "model.ff_dim=64")
    with pytest.raises(ValueError, match="different model"):
        train.train_and_evaluate(other_model, workdir, devices=devices,
                                 train_batches=moving_squares_batches)  # fails before compiling


def test_syn_val_problems_fail_early_or_lose_no_training(tmp_path):
    from tests import official_fixtures as fx

    val_dir = str(tmp_path / "syn_val")
    fx.write_split(val_dir, num_sequences=2, num_frames=2, height=32, width=32)
    config = small_config("train.num_steps=1", "train.eval_every=1", "train.eval_num_sequences=3")
    config.data.val_dir = val_dir
    workdir = tmp_path / "too_few"
    with pytest.raises(ValueError, match=r"eval_num_sequences=3 .*has 2 sequences"):
        train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1],
                                 train_batches=moving_squares_batches)
    assert not workdir.exists()  # failed before initialising or compiling anything

    def failing_val_batches(config, *, process_index, process_count):
        raise RuntimeError("Syn-Val unreadable")

    workdir = tmp_path / "eval_fails"
    with pytest.raises(RuntimeError, match="Syn-Val unreadable"):
        train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1],
                                 train_batches=moving_squares_batches,
                                 val_batches=failing_val_batches, compiler_options=FAST_COMPILE)
    assert os.listdir(workdir / "checkpoints") == ["1"]  # the step was saved before Syn-Val


def test_batch_size_must_split_over_devices():
    mesh = sharding.make_data_mesh()
    with pytest.raises(ValueError, match="multiple of 8"):
        sharding.check_batch_size(4, mesh)
    with pytest.raises(ValueError, match="grad_accum_steps"):
        sharding.check_batch_size(8, mesh, microbatches=3)
    sharding.check_batch_size(16, mesh, microbatches=2)


def test_cli_parses_overrides_and_help(capsys):
    args, overrides = train._parse_args(["--config", "configs/tiny.py", "--workdir", "/tmp/x",
                                         "--config.train.learning_rate=1e-3"])
    assert args.workdir == "/tmp/x" and overrides == ["train.learning_rate=1e-3"]
    with pytest.raises(SystemExit):
        train._parse_args(["--help"])
    assert "--workdir" in capsys.readouterr().out


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch():
    # Without dropout and without the boundary term (normalised by the strip area of the
    # whole batch), the mean loss over two equal microbatches is the mean over the batch.
    config = small_config("model.dropout_rate=0.0", "loss.boundary_weight=0.0")
    model = model_from_config(config.model, in_channels=4)
    tx = optim.make_optimizer(config.train)
    mesh = sharding.make_data_mesh(jax.devices()[:2])  # microbatches stay split over devices
    host_state = jax.device_get(train_step.init_train_state(
        model, tx, jax.random.PRNGKey(0), 4, sharding.make_data_mesh(jax.devices()[:1]),
        FAST_COMPILE))
    local = next(moving_squares_batches(config, process_index=0, process_count=1))
    results = []
    for accum in (1, 2):
        config.train.grad_accum_steps = accum
        step = train_step.make_train_step(model, tx, config, mesh, FAST_COMPILE)
        batch = sharding.global_batch(train_step.select_keys(local, train_step.TRAIN_KEYS), mesh)
        results.append(jax.device_get(step(sharding.put_replicated(host_state, mesh), batch)))
    (state_1, metrics_1), (state_2, metrics_2) = results
    for term in ("loss", "amodal_bce", "order", "modal", "grad_norm"):
        np.testing.assert_allclose(metrics_2[term], metrics_1[term], rtol=1e-5)
    mu = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(s.opt_state[1][0].mu)])
          for s in (state_1, state_2)]
    np.testing.assert_allclose(mu[1], mu[0], rtol=1e-3, atol=1e-4 * np.abs(mu[0]).max())


def test_nonfinite_update_is_skipped_and_rbg_dropout_is_deterministic():
    """A NaN batch leaves params and Adam's moments untouched (the step counter still
    advances); the next finite batch updates them.  `train.dropout_rng='rbg'` steps are
    reproducible and draw other masks than threefry's."""
    config = small_config("train.dropout_rng='rbg'")
    model = model_from_config(config.model, in_channels=4)
    tx = optim.make_optimizer(config.train)
    mesh = sharding.make_data_mesh(jax.devices()[:1])
    initial = jax.device_get(train_step.init_train_state(
        model, tx, jax.random.PRNGKey(0), 4, mesh, FAST_COMPILE))
    local = train_step.select_keys(next(moving_squares_batches(
        config, process_index=0, process_count=1)), train_step.TRAIN_KEYS)
    poisoned = dict(local, flow=np.full_like(local["flow"], np.nan))
    step = train_step.make_train_step(model, tx, config, mesh, FAST_COMPILE)

    state, metrics = step(sharding.put_replicated(initial, mesh),
                          sharding.global_batch(poisoned, mesh))
    after_nan = jax.device_get(state)
    assert metrics["nonfinite"] == 1 and int(after_nan.step) == 1
    assert _max_abs_diff(after_nan.params, initial.params) == 0
    assert _max_abs_diff(after_nan.opt_state, initial.opt_state) == 0

    finals = []
    for _ in range(2):  # the same finite step twice from the same state
        state, metrics = step(sharding.put_replicated(after_nan, mesh),
                              sharding.global_batch(local, mesh))
        assert metrics["nonfinite"] == 0
        finals.append(jax.device_get(state.params))
    assert _max_abs_diff(finals[0], finals[1]) == 0
    assert _max_abs_diff(finals[0], initial.params) > 1e-6

    threefry = small_config()  # same everything but the dropout bits
    step = train_step.make_train_step(model, tx, threefry, mesh, FAST_COMPILE)
    state, _ = step(sharding.put_replicated(after_nan, mesh), sharding.global_batch(local, mesh))
    assert _max_abs_diff(jax.device_get(state.params), finals[0]) > 1e-7


def test_init_params_from_warm_starts_params_only(tmp_path):
    devices = jax.devices()[:1]
    source = train.train_and_evaluate(small_config("train.num_steps=2"), str(tmp_path / "a"),
                                      devices=devices, train_batches=moving_squares_batches,
                                      compiler_options=FAST_COMPILE)
    model_dir = str(tmp_path / "a" / "model")
    config = small_config("train.num_steps=2", f"train.init_params_from={model_dir}")
    warm = train.train_and_evaluate(config, str(tmp_path / "b"), devices=devices,
                                    train_batches=moving_squares_batches, stop_at_step=0,
                                    compiler_options=FAST_COMPILE)
    assert int(warm.step) == 0
    assert _max_abs_diff(warm.params, source.params) == 0.0
    # Fresh optimizer: Adam's moments are zero, not the source run's.
    assert max(float(np.max(np.abs(x))) for x in jax.tree.leaves(warm.opt_state)
               if np.asarray(x).dtype == np.float32) == 0.0
    # A resumed run continues its own state and ignores init_params_from.
    stepped = train.train_and_evaluate(config, str(tmp_path / "b"), devices=devices,
                                       train_batches=moving_squares_batches, stop_at_step=1,
                                       compiler_options=FAST_COMPILE)
    resumed = train.train_and_evaluate(config, str(tmp_path / "b"), devices=devices,
                                       train_batches=moving_squares_batches, stop_at_step=1,
                                       compiler_options=FAST_COMPILE)
    assert int(resumed.step) == 1 and _max_abs_diff(resumed.params, stepped.params) == 0.0
    other = small_config("train.num_steps=2", "model.ff_dim=64",
                         f"train.init_params_from={model_dir}")
    with pytest.raises(ValueError, match="init_params_from.*ff_dim 128 != 64"):
        train.train_and_evaluate(other, str(tmp_path / "c"), devices=devices,
                                 train_batches=moving_squares_batches)


def test_synthetic_num_objects_picks_those_sequences_in_order():
    from oclr_jax.data.synth import spec_for_index
    from oclr_jax.train import batches as train_data

    config = small_config()
    assert [train_data.synthetic_sequence_index(config, "syn_train", e)
            for e in range(5)] == list(range(5))  # default: every sequence
    config.data.synthetic_num_objects = (3, 2)
    indices = [train_data.synthetic_sequence_index(config, "syn_train", e) for e in range(96)]
    expected = [i for i in range(144) if spec_for_index("syn_train", 0, i).num_objects > 1]
    assert indices == expected[:96]  # 32 per block of 48, in order, none skipped or repeated
    config.data.synthetic_num_objects = (2,)
    with pytest.raises(ValueError, match="synthetic_num_objects"):
        train_data.synthetic_sequence_index(config, "syn_single", 0)


def test_export_any_checkpoint_step_as_a_model_folder(tmp_path, capsys):
    from oclr_jax.checkpoint import load_checkpoint
    from oclr_jax.errors import run_cli
    from oclr_jax.train import export
    from oclr_jax.train.state_io import read_meta

    workdir = str(tmp_path / "run")
    config = small_config("train.num_steps=2", "train.checkpoint_every=1")
    run = lambda **kw: train.train_and_evaluate(  # noqa: E731
        config, workdir, devices=jax.devices()[:1], train_batches=moving_squares_batches,
        compiler_options=FAST_COMPILE, **kw)
    import time

    start = time.process_time()
    run(stop_at_step=1)
    first, first_call = read_meta(workdir, 1)["cpu_seconds"], time.process_time() - start
    start = time.process_time()
    final = run()  # resumes at 1: the record adds this call's CPU time to the first's
    second_call = time.process_time() - start
    assert export.checkpoint_steps(workdir) == [1, 2]
    assert 0 < first <= first_call + 0.1
    assert first <= read_meta(workdir, 2)["cpu_seconds"] <= first + second_call + 0.1
    assert run_cli(export.main, ["--workdir", workdir, "--list"]) == 0
    assert capsys.readouterr().out.split() == ["1", "2"]
    assert run_cli(export.main, ["--workdir", workdir, "--step", "1",
                                 "--out", str(tmp_path / "s1")]) == 0
    assert run_cli(export.main, ["--workdir", workdir, "--out", str(tmp_path / "newest")]) == 0
    _, newest, config = load_checkpoint(str(tmp_path / "newest"))
    _, step1, _ = load_checkpoint(str(tmp_path / "s1"))
    _, trainer_export, _ = load_checkpoint(os.path.join(workdir, "model"))
    assert _max_abs_diff(newest, final.params) == 0.0
    assert _max_abs_diff(newest, trainer_export) == 0.0
    assert _max_abs_diff(step1, newest) > 0.0  # one more update
    assert config.model.to_dict() == small_config().model.to_dict()
    # an earlier export is replaced; mistakes are user errors that write nothing
    assert run_cli(export.main, ["--workdir", workdir, "--step", "1",
                                 "--out", str(tmp_path / "newest")]) == 0
    capsys.readouterr()
    assert run_cli(export.main, ["--workdir", workdir, "--step", "7",
                                 "--out", str(tmp_path / "s7")]) == 2
    assert "no checkpoint of step 7; the workdir has steps 1, 2" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s7")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run_cli(export.main, ["--workdir", workdir, "--out", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "mine"
    assert run_cli(export.main, ["--workdir", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a training workdir" in capsys.readouterr().err
