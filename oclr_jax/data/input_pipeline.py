"""The training input pipeline: random-access sources -> per-process batches -> global arrays.

The stream of one process is a pure function of `(seed, process_index, process_count)`:

* sharding: example `i` belongs to process `i % process_count`, so the processes read disjoint
  parts that together cover the split (sizes differ by at most one);
* element `j` of a process's stream (j = 0, 1, ...) is in epoch `e = j // n_local` and is that
  process's example `index_shuffle(j % n_local, seed(e))`: a full seeded permutation per epoch
  (`config.data.shuffle_buffer = 0` turns shuffling off), repeated forever;
* its augmentations use a stateless seed folded from `(seed, process_index, j)`;
* batch `s` holds elements `s*b .. s*b+b-1`.

So `start_step=N` resumes exactly where step N left off, in O(1) (no records are read to skip),
and the iterator's only state is `iterator.step`, the number of the next batch: checkpoint that.

Sources (by config): `config.data.tfds_name` (a tfds dataset stored as ArrayRecord, e.g.
`oclr_synthetic/syn_train`, under `config.data.tfds_data_dir`) or `config.data.train_dir` (an
official-layout folder, read with `official_layout`).  TensorFlow is kept off GPUs and TPUs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from oclr_jax.data import augment as augment_lib
from oclr_jax.data import flow_codec, official_layout
from oclr_jax.data.tf_devices import hide_accelerators_from_tf
from oclr_jax.data.tfds import synthetic as tfds_synthetic

OUTPUT_KEYS = ("flow", "amodal", "num_objects")


@dataclasses.dataclass(frozen=True)
class ExampleSource:
    """Examples addressable by index.

    Attributes:
      description: what the source is, for error messages.
      num_examples: number of examples.
      load: int64 scalar tensor -> dict of `flow (L, H, W, 2 * len(gaps))` float32,
        `amodal_bits (L, H, W)` uint8 (bit k set where object k+1 is), `num_objects` int32 and
        `name` string.
      gaps: the gap of each flow channel pair of `flow`, closed under negation.
      resolution: `(H, W)` of the loaded arrays.
    """

    description: str
    num_examples: int
    load: Callable[[tf.Tensor], dict]
    gaps: tuple[int, ...]
    resolution: tuple[int, int]


def gaps_with_opposites(gaps: Sequence[int]) -> tuple[int, ...]:
    """`gaps` followed by each missing opposite gap, so temporal reversal is exact."""
    gaps = tuple(int(g) for g in gaps)
    return gaps + tuple(-g for g in gaps if -g not in gaps)


def pack_amodal(amodal: np.ndarray) -> np.ndarray:
    """`(..., n)` bool masks -> `(...)` uint8 bit planes (bit k = channel k), n <= 8."""
    weights = (1 << np.arange(amodal.shape[-1])).astype(np.uint8)
    return (np.asarray(amodal, np.uint8) * weights).sum(-1, dtype=np.uint8)


class DataReadError(ValueError):
    """A training/validation file is unreadable or wrong; the message names it (a user error,
    surfaced from inside tf.data, where it would be a stack of TF tracebacks)."""


# The first data error raised inside a tf.data worker thread, re-raised by `TrainIterator`.
_read_errors: list[Exception] = []


def _recording(read: Callable[[int], tuple]) -> Callable[[int], tuple]:
    """`read`, remembering the data errors it raises (they reach Python as a TF OpError)."""
    from oclr_jax.data import flow_io, masks_io, official_layout

    def wrapped(index: int):
        try:
            return read(index)
        except (flow_io.FlowFileError, masks_io.MaskFileError, official_layout.LayoutError,
                OSError) as error:
            if not _read_errors:
                _read_errors.append(error)
            raise

    return wrapped


def raise_recorded_read_error(op_error: Exception) -> None:
    """Raises the data error behind a tf.data `op_error` as a DataReadError, if `op_error` is
    a TF OpError and a data error was recorded; returns otherwise (the caller re-raises)."""
    if isinstance(op_error, tf.errors.OpError) and _read_errors:
        error = _read_errors[0]
        raise DataReadError(f"{error} (while reading training data; fix or remove that "
                            "sequence, then rerun: training resumes from the last checkpoint)"
                            ) from None


def _numpy_loader(read: Callable[[int], tuple], num_flow_channels: int,
                  resolution: tuple[int, int]) -> Callable[[tf.Tensor], dict]:
    """Wraps `read(index) -> (flow, amodal_bits, num_objects, name)` as a TF function."""
    read = _recording(read)

    def load(index):
        flow, bits, num_objects, name = tf.numpy_function(
            lambda i: read(int(i)), [index], [tf.float32, tf.uint8, tf.int32, tf.string],
            stateful=False)
        flow.set_shape([None, *resolution, num_flow_channels])
        bits.set_shape([None, *resolution])
        num_objects.set_shape(())
        name.set_shape(())
        return {"flow": flow, "amodal_bits": bits, "num_objects": num_objects, "name": name}

    return load


def open_tfds_source(name: str, data_dir: str | None, split: str) -> ExampleSource:
    """A tfds `oclr_synthetic` dataset (ArrayRecord files) as a random-access source."""
    builder = tfds.builder(name, data_dir=data_dir or None)
    splits = list(builder.info.splits)
    if not split:
        if len(splits) != 1:
            raise ValueError(f"tfds dataset {name} has several splits {splits}; the input pipeline "
                             "reads datasets with one split (as every oclr_synthetic config)")
        split = splits[0]
    try:
        records = builder.as_data_source(
            split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    except NotImplementedError as e:
        raise ValueError(f"tfds dataset {name} in {builder.data_dir} is not stored as ArrayRecord; "
                         "rebuild it with file_format='array_record' (the default of "
                         "oclr_synthetic)") from e
    resolution = tuple(builder.info.features["flow"].shape[1:3])
    # Parse only what training reads (not the stored modal masks and RGB frames).
    features = tfds.features.FeaturesDict({key: builder.info.features[key] for key in (
        "flow", "flow_range", "amodal", "num_objects", "name")})

    def read(index):
        # One numpy call per example (measured faster here than parsing with TF ops).
        example = features.deserialize_example_np(records[index])
        flow = flow_codec.decode(example["flow"], example["flow_range"])
        return (flow, example["amodal"], np.int32(example["num_objects"]),
                np.bytes_(example["name"]))

    return ExampleSource(description=f"tfds {name} split {split} in {builder.data_dir}",
                         num_examples=len(records), load=_numpy_loader(read, 4, resolution),
                         gaps=tfds_synthetic.FLOW_GAPS, resolution=resolution)


def open_folder_source(root: str, gaps: Sequence[int], resolution: Sequence[int]) -> ExampleSource:
    """An official-layout folder as a random-access source (read at `resolution`)."""

    names = official_layout.list_sequences(root)
    gaps = gaps_with_opposites(gaps)
    resolution = (int(resolution[0]), int(resolution[1]))

    def read(index):
        name = names[index]
        seq = official_layout.read_sequence(root, name, gaps, resolution=resolution)
        if seq.num_objects > 8:
            raise official_layout.LayoutError(
                f"sequence {name!r} in {root}: {seq.num_objects} objects; the input pipeline "
                "packs at most 8 layers")
        return (seq.stacked_flow(gaps), pack_amodal(seq.amodal), np.int32(seq.num_objects),
                name.encode())

    return ExampleSource(description=f"official-layout folder {root}", num_examples=len(names),
                         load=_numpy_loader(read, 2 * len(gaps), resolution), gaps=gaps,
                         resolution=resolution)


def open_train_source(config) -> ExampleSource:
    """The source `config.data` names: `tfds_name` when set, else `train_dir`."""
    hide_accelerators_from_tf()
    data = config.data
    if data.get("tfds_name"):
        unsupported = [g for g in data.gaps if int(g) not in tfds_synthetic.FLOW_GAPS]
        if unsupported:
            raise ValueError(f"data.gaps {tuple(data.gaps)}: {data.tfds_name} stores gaps "
                             f"{tfds_synthetic.FLOW_GAPS} only")
        return open_tfds_source(data.tfds_name, data.get("tfds_data_dir"),
                                data.get("tfds_split", ""))
    if data.get("train_dir"):
        return open_folder_source(data.train_dir, data.gaps, data.resolution)
    raise ValueError("no training data: set config.data.tfds_name or config.data.train_dir")


def process_example_indices(num_examples: int, process_index: int,
                            process_count: int) -> np.ndarray:
    """The examples of one process: `i % process_count == process_index`."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    indices = np.arange(process_index, num_examples, process_count, dtype=np.int64)
    if indices.size == 0:
        raise ValueError(f"{num_examples} examples cannot feed {process_count} processes")
    return indices


def _fold(seed, *values):
    key = tf.constant([int(seed) & 0x7FFFFFFFFFFFFFFF, 0], tf.int64)
    for value in values:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
    return key


def unpack_masks(amodal_bits, num_channels: int):
    """uint8 bit planes `(...)` -> amodal masks `(..., K)` float32 (bit k = channel k).

    The modal targets are not shipped: the train step derives them from these
    (`compose.ground_truth_modal`), as the official training does.
    """
    shifted = tf.bitwise.right_shift(amodal_bits[..., None],
                                     tf.cast(tf.range(num_channels), amodal_bits.dtype))
    return tf.cast(tf.bitwise.bitwise_and(shifted, 1), tf.float32)


def _check_example(example: dict, num_channels: int) -> dict:
    """Fails with the sequence's name on NaN/inf flow or too many objects."""
    checks = [
        tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(example["flow"])),
                            ["non-finite flow in sequence", example["name"]]),
        tf.debugging.Assert(example["num_objects"] <= num_channels,
                            ["more objects than model.num_queries in sequence", example["name"],
                             example["num_objects"]]),
        tf.debugging.Assert(tf.shape(example["flow"])[0] > 0,
                            ["no frames in sequence", example["name"]]),
    ]
    with tf.control_dependencies(checks):
        return {key: tf.identity(value) for key, value in example.items()}


def make_train_dataset(config, *, seed: int, process_index: int, process_count: int,
                       start_step: int = 0, source: ExampleSource | None = None,
                       with_metadata: bool = False) -> tf.data.Dataset:
    """The per-process batch stream as a `tf.data.Dataset` (see the module docstring).

    Batches hold `flow (b, T, H, W, 2 * len(gaps))` float32 in gap order, `amodal`/`modal
    (b, T, H, W, K)` float32 0/1 (channel k = object k+1, zero-padded to K =
    model.num_queries), `num_objects (b,)` int32, with b = train.batch_size // process_count;
    `with_metadata` adds `name (b,)` and `example_index (b,)`.
    """
    hide_accelerators_from_tf()
    data = config.data
    if config.train.batch_size % process_count:
        raise ValueError(f"train.batch_size {config.train.batch_size} is not divisible by "
                         f"{process_count} processes")
    batch_size = config.train.batch_size // process_count
    num_channels = int(config.model.num_queries)
    resolution = tuple(int(r) for r in data.resolution)
    source = source or open_train_source(config)
    local = process_example_indices(source.num_examples, process_index, process_count)
    shuffle = int(data.get("shuffle_buffer", 1)) > 0
    local_indices = tf.constant(local)
    num_local = tf.constant(local.size, tf.int64)

    def element(position):
        offset = position % num_local
        if shuffle:
            epoch_key = _fold(seed, process_index, position // num_local)
            offset = tf.random.experimental.index_shuffle(offset, epoch_key, num_local - 1)
        index = tf.gather(local_indices, offset)
        example = _check_example(source.load(index), num_channels)
        if source.resolution != resolution:
            example = augment_lib.resize_example(example, resolution)
        example = augment_lib.augment_example(
            example, _fold(seed, process_index, position, 1), gaps=source.gaps,
            num_frames=int(data.num_frames), temporal_crop=bool(data.augment_temporal_crop),
            flip=bool(data.augment_flip), reverse=bool(data.augment_reverse))
        out = {
            "flow": augment_lib.select_gaps(example["flow"], source.gaps, data.gaps),
            "amodal_bits": example["amodal_bits"],
            "num_objects": tf.cast(example["num_objects"], tf.int32),
        }
        if with_metadata:
            out.update(name=example["name"], example_index=index)
        return out

    def finish(batch):
        batch = dict(batch)
        batch["amodal"] = unpack_masks(batch.pop("amodal_bits"), num_channels)
        return batch

    dataset = tf.data.Dataset.counter(start=int(start_step) * batch_size)
    dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(finish).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return dataset.with_options(options)


class TrainIterator:
    """Iterator over per-process numpy batches.

    Attributes:
      step: the number of the next batch; pass it back as `start_step` to resume exactly.
    """

    def __init__(self, dataset: tf.data.Dataset, start_step: int):
        self._iterator = dataset.as_numpy_iterator()
        self.step = int(start_step)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.step += 1
        return batch

    def state(self) -> dict[str, int]:
        """What to checkpoint: `{'step': next batch number}`."""
        return {"step": self.step}


def make_train_iterator(config, *, seed: int, process_index: int, process_count: int,
                        start_step: int = 0, with_metadata: bool = False) -> TrainIterator:
    """Per-process training batches (see `make_train_dataset` for the arrays)."""
    dataset = make_train_dataset(config, seed=seed, process_index=process_index,
                                 process_count=process_count, start_step=start_step,
                                 with_metadata=with_metadata)
    return TrainIterator(dataset, start_step)


def to_global_batch(batch: dict[str, Any], mesh, axis: str = "data") -> dict[str, Any]:
    """Per-process numpy batch -> global `jax.Array`s sharded along `mesh`'s `axis` (numeric
    arrays only; names and other strings are dropped).  The global batch is the processes'
    batches concatenated in process order."""
    import jax

    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in batch.items() if np.asarray(value).dtype.kind in "biuf"}
