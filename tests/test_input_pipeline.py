"""The training input pipeline: contract, determinism and resume, multi-process sharding,
augmentation consistency, bad records, and the global jax.Array batch."""

import os

import numpy as np
import official_fixtures as fx
import pytest
import tensorflow as tf

from oclr_jax.compose import ground_truth_modal
from oclr_jax.config import loading as config_lib
from oclr_jax.data import augment, flow_io
from oclr_jax.data import input_pipeline as ip
from oclr_jax.data.tfds import synthetic as ts

NUM_SEQUENCES, NUM_FRAMES, HEIGHT, WIDTH = 7, 6, 32, 48


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An official-layout folder and its tfds copy (ArrayRecord)."""
    root = str(tmp_path_factory.mktemp("syn"))
    truths = fx.write_split(root, NUM_SEQUENCES, NUM_FRAMES, HEIGHT, WIDTH, seed=1)
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    config = ts.OclrSyntheticConfig(name="pipe", num_frames=NUM_FRAMES, resolution=(HEIGHT, WIDTH))
    ts.OclrSynthetic(config=config, data_dir=data_dir, source_dir=root).download_and_prepare()
    return root, data_dir, truths


def make_config(data, source="folder", **data_fields):
    root, data_dir, _ = data
    config = config_lib.load_config("configs/tiny.py")
    config.train.batch_size = data_fields.pop("batch_size", 2)
    config.data.num_frames = NUM_FRAMES
    config.data.resolution = (HEIGHT, WIDTH)
    config.data.shuffle_buffer = 0
    if source == "folder":
        config.data.train_dir = root
    else:
        config.data.tfds_name = "oclr_synthetic/pipe"
        config.data.tfds_data_dir = data_dir
    for key, value in data_fields.items():
        config.data[key] = value
    return config


def take(config, num_batches, **kwargs):
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    iterator = ip.make_train_iterator(config, **kwargs)
    return [next(iterator) for _ in range(num_batches)], iterator


def padded(masks, k=3):
    return np.concatenate([masks, np.zeros(masks.shape[:-1] + (k - masks.shape[-1],), bool)], -1)


@pytest.mark.parametrize("source", ["folder", "tfds"])
def test_batches_follow_the_contract_and_match_the_files(data, source):
    truths = data[2]
    names = sorted(truths)
    batches, iterator = take(make_config(data, source), 3)
    assert iterator.step == 3 and iterator.state() == {"step": 3}
    for step, batch in enumerate(batches):
        assert sorted(batch) == sorted(ip.OUTPUT_KEYS)
        assert batch["flow"].shape == (2, NUM_FRAMES, HEIGHT, WIDTH, 4)
        assert batch["flow"].dtype == np.float32 and batch["num_objects"].dtype == np.int32
        assert batch["amodal"].shape == (2, NUM_FRAMES, HEIGHT, WIDTH, 3)
        assert batch["amodal"].dtype == np.float32
        for i in range(2):  # Unshuffled: batch s holds examples 2s and 2s+1.
            truth = truths[names[(2 * step + i) % NUM_SEQUENCES]]
            expected = fx.expected_flows(truth)
            flow = np.concatenate([expected[1], expected[-1]], -1)
            tolerance = 0 if source == "folder" else 3e-4  # Half a 16-bit step of a few px.
            np.testing.assert_allclose(batch["flow"][i], flow, atol=tolerance, rtol=0)
            np.testing.assert_array_equal(batch["amodal"][i], padded(truth["amodal"]))
            # The step's modal targets, from the batch, agree with the files' ground truth.
            np.testing.assert_array_equal(ground_truth_modal(batch["amodal"][i]) > 0,
                                          padded(truth["modal"]))
            assert batch["num_objects"][i] == truth["amodal"].shape[-1]


def test_gap_order_selects_channels(data):
    truths = data[2]
    first = truths[sorted(truths)[0]]
    expected = fx.expected_flows(first)
    swapped, _ = take(make_config(data, "tfds", gaps=(-1, 1)), 1)
    np.testing.assert_allclose(swapped[0]["flow"][0, ..., :2], expected[-1], atol=3e-4)
    np.testing.assert_allclose(swapped[0]["flow"][0, ..., 2:], expected[1], atol=3e-4)
    single, _ = take(make_config(data, "folder", gaps=(1,)), 1)
    np.testing.assert_array_equal(single[0]["flow"][0], expected[1])
    with pytest.raises(ValueError, match="stores gaps"):
        take(make_config(data, "tfds", gaps=(2, -2)), 1)


def test_same_seed_same_stream_and_exact_resume(data):
    config = make_config(data, "tfds", shuffle_buffer=16, augment_flip=True,
                         augment_reverse=True, augment_temporal_crop=True, num_frames=4)
    first, _ = take(config, 7, seed=3, with_metadata=True)
    again, _ = take(config, 7, seed=3, with_metadata=True)
    resumed, iterator = take(config, 3, seed=3, start_step=4, with_metadata=True)
    assert iterator.step == 7
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    for a, b in zip(first[4:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other, _ = take(config, 7, seed=4, with_metadata=True)
    order = np.concatenate([b["example_index"] for b in first])
    assert not np.array_equal(order, np.concatenate([b["example_index"] for b in other]))
    # Shuffled, every epoch is a permutation of the examples.
    assert sorted(order[:NUM_SEQUENCES]) == list(range(NUM_SEQUENCES))
    assert sorted(order[NUM_SEQUENCES:2 * NUM_SEQUENCES]) == list(range(NUM_SEQUENCES))


@pytest.mark.parametrize("process_count", [2, 3])
def test_processes_read_disjoint_parts_that_cover_everything(data, process_count):
    config = make_config(data, "tfds", batch_size=process_count, shuffle_buffer=16)
    seen = []
    for process_index in range(process_count):
        local = ip.process_example_indices(NUM_SEQUENCES, process_index, process_count)
        batches, _ = take(config, 2 * len(local), seed=5, process_index=process_index,
                          process_count=process_count, with_metadata=True)
        indices = np.concatenate([b["example_index"] for b in batches])
        assert all(b["flow"].shape[0] == 1 for b in batches)  # b = batch_size // processes.
        epoch = sorted(indices[:len(local)])
        assert epoch == sorted(indices[len(local):]) == sorted(local)  # Each epoch covers it.
        seen.extend(epoch)
    assert sorted(seen) == list(range(NUM_SEQUENCES))  # Exactly once over all processes.


def rolled_example(num_frames=5, size=(12, 16), shift=(1, 2), seed=0):
    """Whole frames translated by an integer (dy, dx) per frame, periodic: exact flow."""
    rng = np.random.default_rng(seed)
    dy, dx = shift
    base = rng.integers(0, 255, size + (3,), dtype=np.uint8)
    mask = np.zeros(size + (2,), bool)
    mask[2:6, 3:9, 0] = True
    mask[4:9, 6:12, 1] = True
    roll = lambda a, t: np.roll(a, (t * dy, t * dx), axis=(0, 1))  # noqa: E731
    flow = np.broadcast_to(np.array([dx, dy, -dx, -dy], np.float32), (num_frames,) + size + (4,))
    return {"rgb": np.stack([roll(base, t) for t in range(num_frames)]),
            "amodal": np.stack([roll(mask, t) for t in range(num_frames)]).astype(np.uint8),
            "flow": np.ascontiguousarray(flow)}


def assert_flow_warps_frames(example, gaps):
    """Each gap's flow at frame t moves every pixel onto frame t+gap (frames and masks)."""
    flow = example["flow"]
    num_frames, height, width = flow.shape[:3]
    yy, xx = np.mgrid[0:height, 0:width]
    for slot, gap in enumerate(gaps):
        for t in range(num_frames):
            if not 0 <= t + gap < num_frames:
                continue
            u, v = flow[t, ..., 2 * slot], flow[t, ..., 2 * slot + 1]
            ty = (yy + v.astype(int)) % height
            tx = (xx + u.astype(int)) % width
            for key in ("rgb", "amodal"):
                np.testing.assert_array_equal(example[key][t + gap][ty, tx], example[key][t])


@pytest.mark.parametrize("gaps", [(1, -1), (-1, 1), (1,)])
def test_flip_and_reversal_keep_flow_frames_and_masks_consistent(gaps):
    example = rolled_example()
    flow = example["flow"]
    example["flow"] = np.concatenate([flow[..., :2] if g == 1 else flow[..., 2:] for g in gaps], -1)
    assert_flow_warps_frames(example, gaps)
    tensors = {key: tf.constant(value) for key, value in example.items()}
    flipped = {k: v.numpy() for k, v in augment.flip_horizontal(tensors).items()}
    assert_flow_warps_frames(flipped, gaps)
    assert flipped["flow"][0, 0, 0, 0] == -example["flow"][0, 0, 0, 0]
    reversed_ = {k: v.numpy() for k, v in augment.reverse_time(tensors, gaps).items()}
    assert_flow_warps_frames(reversed_, gaps)
    np.testing.assert_array_equal(reversed_["rgb"], example["rgb"][::-1])
    both = augment.reverse_time(augment.flip_horizontal(tensors), gaps)
    assert_flow_warps_frames({k: v.numpy() for k, v in both.items()}, gaps)


def test_temporal_crop_takes_consecutive_frames():
    flow = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None, None], (10, 4, 4, 4))
    example = {"flow": tf.constant(flow), "amodal_bits": tf.zeros((10, 4, 4), tf.uint8)}
    starts = set()
    for i in range(40):
        seed = tf.constant([7, i], tf.int64)
        out = augment.augment_example(example, seed, gaps=(1, -1), num_frames=4,
                                      temporal_crop=True)
        frames = out["flow"].numpy()[:, 0, 0, 0]
        assert frames[0] in range(7)
        np.testing.assert_array_equal(frames, frames[0] + np.arange(4))
        assert out["amodal_bits"].shape == (4, 4, 4)
        starts.add(int(frames[0]))
    assert len(starts) >= 5  # Random starts, all inside the sequence.
    short = augment.temporal_window(example, 12, 0)["flow"].numpy()[:, 0, 0, 0]
    np.testing.assert_array_equal(short, list(range(10)) + [9, 9])  # Repeats the last frame.


def test_pipeline_augmentations_are_flips_and_reversals_of_the_source(data):
    truths = data[2]
    names = sorted(truths)
    config = make_config(data, "folder", augment_flip=True, augment_reverse=True)
    batches, _ = take(config, 7, seed=1, with_metadata=True)
    seen = set()
    for batch in batches:
        for i, index in enumerate(batch["example_index"]):
            truth = truths[names[index]]
            expected = fx.expected_flows(truth)
            source = {"flow": np.concatenate([expected[1], expected[-1]], -1),
                      "amodal": padded(truth["amodal"]).astype(np.float32)}
            candidates = {}
            for flip in (False, True):
                for reverse in (False, True):
                    flow, amodal = source["flow"], source["amodal"]
                    if flip:  # Independent numpy versions of the two augmentations.
                        flow, amodal = flow[:, :, ::-1] * [-1, 1, -1, 1], amodal[:, :, ::-1]
                    if reverse:
                        flow, amodal = flow[::-1][..., [2, 3, 0, 1]], amodal[::-1]
                    candidates[(flip, reverse)] = (flow, amodal)
            match = [key for key, (flow, amodal) in candidates.items()
                     if np.array_equal(batch["flow"][i], flow)
                     and np.array_equal(batch["amodal"][i], amodal)]
            assert match, f"example {index} is no flip/reversal of its source"
            seen.add(match[0])
    assert len(seen) >= 3  # The augmentations do happen.


def test_bad_records_fail_naming_the_sequence(tmp_path, data):
    root = str(tmp_path / "bad")
    fx.write_split(root, 3, num_frames=3, height=16, width=16)
    config = make_config(data, "folder", num_frames=3, resolution=(16, 16))
    config.data.train_dir = root
    path = os.path.join(root, "Flows_gap1", "2_000001", "00001.flo")
    flow = flow_io.read_flo(path)
    flow[0, 0, 1] = np.nan
    flow_io.write_flo(path, flow)
    with pytest.raises(tf.errors.OpError, match=r"2_000001/00001\.flo.*NaN"):
        take(config, 2)
    os.remove(path)
    os.remove(path.replace("Flows_gap1", "Flows_gap-1"))
    with pytest.raises(tf.errors.OpError, match=r"2_000001.*missing flow"):
        take(config, 2)
    flow_io.write_flo(path, np.zeros((8, 16, 2), np.float32))
    with pytest.raises(tf.errors.OpError, match=r"2_000001/00001\.flo.*shape"):
        take(config, 2)


def test_checks_name_the_sequence_for_nan_flow_and_too_many_objects(data):
    config = make_config(data, "folder")

    def load(index):
        flow = tf.fill([NUM_FRAMES, HEIGHT, WIDTH, 4], float("nan"))
        return {"flow": flow, "amodal_bits": tf.zeros([NUM_FRAMES, HEIGHT, WIDTH], tf.uint8),
                "num_objects": tf.constant(1), "name": tf.constant("2_broken")}

    source = ip.ExampleSource("fake", 2, load, (1, -1), (HEIGHT, WIDTH))
    dataset = ip.make_train_dataset(config, seed=0, process_index=0, process_count=1,
                                    source=source)
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite flow.*2_broken"):
        next(iter(dataset))
    config = make_config(data, "tfds")
    config.model.num_queries = 1  # Batch 1 holds 2_000001, which has two objects.
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_queries.*2_000001"):
        take(config, 2)


def test_resizes_to_the_config_resolution(data):
    truths = data[2]
    config = make_config(data, "tfds", resolution=(2 * HEIGHT, 2 * WIDTH))
    batches, _ = take(config, 1)
    assert batches[0]["flow"].shape == (2, NUM_FRAMES, 2 * HEIGHT, 2 * WIDTH, 4)
    truth = fx.expected_flows(truths[sorted(truths)[0]])
    np.testing.assert_allclose(batches[0]["flow"][0].max(axis=(0, 1, 2))[:2],
                               2 * truth[1].max(axis=(0, 1, 2)), atol=1e-3)
    assert batches[0]["amodal"].shape == (2, NUM_FRAMES, 2 * HEIGHT, 2 * WIDTH, 3)


def test_tensorflow_is_kept_off_accelerators(data, monkeypatch):
    calls = []
    monkeypatch.setattr(tf.config, "set_visible_devices",
                        lambda devices, kind: calls.append((list(devices), kind)))
    ip.make_train_dataset(make_config(data, "tfds"), seed=0, process_index=0, process_count=1)
    assert ([], "GPU") in calls and ([], "TPU") in calls


def test_global_batch_is_sharded_along_data(data):
    import jax

    config = make_config(data, "tfds", batch_size=8, num_frames=2)
    batch = take(config, 1)[0][0]
    devices = np.array(jax.devices())
    assert devices.size == 8
    mesh = jax.sharding.Mesh(devices, ("data",))
    global_batch = ip.to_global_batch(batch, mesh)
    assert sorted(global_batch) == sorted(ip.OUTPUT_KEYS)
    for key, value in global_batch.items():
        assert value.shape == batch[key].shape
        assert value.sharding.spec == jax.sharding.PartitionSpec("data")
        np.testing.assert_array_equal(np.asarray(value), batch[key])
        shard = value.addressable_shards[3]
        np.testing.assert_array_equal(np.asarray(shard.data), batch[key][3:4])
