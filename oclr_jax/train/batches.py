"""Where the trainer's batches come from: the input pipeline, or sequences rendered in memory.

`config.data.source` picks one:

- 'pipeline' (default): `oclr_jax.data.input_pipeline` (tf.data over a tfds dataset or an
  official-layout folder).  Syn-Val is read from `config.data.val_dir` / `val_tfds_name`.
- 'synthetic_inline': sequences rendered on the fly by `oclr_jax.data.synth` at the config's
  resolution and length, from `config.data.synthetic_split` (default 'syn_train') for training
  and 'syn_val' for validation.  No files; for tiny runs, tests and smoke checks.

Both give every process its own rows: global example `e` of step `s` is row `e - s * B` of the
global batch, and process `p` loads rows `p * b .. p * b + b - 1` (b = B / processes).
Resuming at step `s` continues the same stream.  The train step never sees where batches come
from.
"""

from __future__ import annotations

import copy
import functools
from typing import Iterator

import numpy as np

SOURCES = ("pipeline", "synthetic_inline")


def data_source(config) -> str:
    source = config.data.get("source", "pipeline") or "pipeline"
    if source not in SOURCES:
        raise ValueError(f"config.data.source={source!r}; expected one of {SOURCES}")
    return source


# ----------------------------------------------------------------------------- in memory

def _render_example(config, split: str, index: int) -> dict:
    """One synthetic sequence as the pipeline's arrays (flow (T,H,W,C), amodal/modal
    (T,H,W,K) float32, num_objects)."""
    from oclr_jax.data import synth  # numpy/cv2 only; imported when this source is used

    options = synth.RenderOptions(resolution=tuple(config.data.resolution),
                                  frames=int(config.data.num_frames))
    sequence = synth.render_sequence(synth.spec_for_index(split, int(config.seed), index), options)
    by_gap = {1: sequence.flow_fwd, -1: sequence.flow_bwd}
    unsupported = [g for g in config.data.gaps if int(g) not in by_gap]
    if unsupported:
        raise ValueError(f"data.source='synthetic_inline' renders gaps +1 and -1 only; "
                         f"data.gaps={tuple(config.data.gaps)}")
    flow = np.concatenate([by_gap[int(g)] for g in config.data.gaps], axis=-1)
    num_layers = int(config.model.num_queries)
    count = sequence.amodal.shape[-1]
    if count > num_layers:
        raise ValueError(f"synthetic sequence {sequence.name} has {count} objects, more than "
                         f"model.num_queries={num_layers}")
    amodal = np.zeros(sequence.amodal.shape[:3] + (num_layers,), np.float32)
    amodal[..., :count] = sequence.amodal
    return {"flow": flow.astype(np.float32), "amodal": amodal, "num_objects": np.int32(count)}


def _stack(examples: list[dict]) -> dict:
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


SPEC_BLOCK = 48  # a Syn-Train / Syn-Val block: every composition cell once.


@functools.lru_cache(maxsize=64)
def _indices_with_counts(split: str, seed: int, block: int, counts: tuple[int, ...]) -> tuple:
    from oclr_jax.data.synth import spec_for_index

    first = block * SPEC_BLOCK
    return tuple(i for i in range(first, first + SPEC_BLOCK)
                 if spec_for_index(split, seed, i).num_objects in counts)


def synthetic_sequence_index(config, split: str, example: int) -> int:
    """The sequence index of global training example `example`.

    Every sequence in order, or with `data.synthetic_num_objects` (e.g. (2, 3)) only those
    with that many objects, in order: blocks of 48 hold each count equally often, so example
    e is the (e mod n)-th such sequence of block e // n (n per block).
    """
    counts = tuple(sorted(int(c) for c in (config.data.get("synthetic_num_objects") or ())))
    if not counts:
        return example
    seed = int(config.seed)
    per_block = len(_indices_with_counts(split, seed, 0, counts))
    block, rank = divmod(example, per_block) if per_block else (0, 0)
    chosen = _indices_with_counts(split, seed, block, counts)
    if len(chosen) != per_block or not per_block:
        raise ValueError(f"data.synthetic_num_objects={counts}: split {split} does not hold "
                         f"them equally in every block of {SPEC_BLOCK} sequences")
    return chosen[rank]


def synthetic_train_batches(config, *, process_index: int, process_count: int,
                            start_step: int = 0) -> Iterator[dict]:
    """Endless per-process batches of freshly rendered sequences (index: see
    `synthetic_sequence_index`)."""
    split = config.data.get("synthetic_split", "syn_train") or "syn_train"
    global_batch = int(config.train.batch_size)
    local_batch = global_batch // process_count
    step = int(start_step)
    while True:
        first = step * global_batch + process_index * local_batch
        yield _stack([_render_example(config, split,
                                      synthetic_sequence_index(config, split, first + r))
                      for r in range(local_batch)])
        step += 1


def _padded_batches(load, num_examples: int, global_batch: int, process_index: int,
                    process_count: int) -> Iterator[dict]:
    """Fixed-size per-process batches covering examples 0..num_examples-1 once; rows past the
    end repeat the last example with `weight` 0, so every process runs the same steps."""
    local_batch = global_batch // process_count
    num_steps = -(-num_examples // global_batch)
    for step in range(num_steps):
        first = step * global_batch + process_index * local_batch
        indices = [first + r for r in range(local_batch)]
        batch = _stack([load(min(i, num_examples - 1)) for i in indices])
        batch["weight"] = np.array([i < num_examples for i in indices], np.float32)
        yield batch


# ----------------------------------------------------------------------------- dispatch

def make_train_batches(config, *, process_index: int, process_count: int,
                       start_step: int = 0) -> Iterator[dict]:
    """Per-process training batches (numpy dicts with flow, amodal, modal, num_objects)."""
    if data_source(config) == "synthetic_inline":
        return synthetic_train_batches(config, process_index=process_index,
                                       process_count=process_count, start_step=start_step)
    from oclr_jax.data import input_pipeline  # TensorFlow: only when this source is used

    return input_pipeline.make_train_iterator(config, seed=int(config.seed),
                                              process_index=process_index,
                                              process_count=process_count, start_step=start_step)


def _val_pipeline_config(config):
    """The training pipeline pointed at Syn-Val: no shuffling, no augmentation."""
    val = copy.deepcopy(config)
    data = val.data
    if data.get("val_tfds_name"):
        data.tfds_name, data.train_dir = data.val_tfds_name, ""
    elif data.get("val_dir"):
        data.tfds_name, data.train_dir = "", data.val_dir
    else:
        raise ValueError("periodic Syn-Val evaluation needs config.data.val_dir (or "
                         "val_tfds_name); set train.eval_every=0 to train without it")
    data.shuffle_buffer = 0
    data.augment_reverse = data.augment_flip = data.augment_temporal_crop = False
    return val


def make_val_batches(config, *, process_index: int, process_count: int) -> Iterator[dict]:
    """Per-process Syn-Val batches of `train.batch_size` global rows with a `weight` per row,
    covering the first `train.eval_num_sequences` sequences once."""
    num_examples = int(config.train.eval_num_sequences)
    global_batch = int(config.train.batch_size)
    if data_source(config) == "synthetic_inline":
        load = lambda i: _render_example(config, "syn_val", i)
        return _padded_batches(load, num_examples, global_batch, process_index, process_count)
    return _pipeline_val_batches(config, num_examples, process_index, process_count)


def check_val_source(config) -> None:
    """Raises now, before any training, what Syn-Val evaluation would raise at its first run:
    a missing or unreadable val source, or fewer sequences than `train.eval_num_sequences`."""
    if data_source(config) != "synthetic_inline":
        _open_val_source(_val_pipeline_config(config), int(config.train.eval_num_sequences))


def _open_val_source(val_config, num_examples: int):
    """The source `_val_pipeline_config` names, checked to hold `num_examples` sequences."""
    from oclr_jax.data import input_pipeline

    source = input_pipeline.open_train_source(val_config)
    if num_examples > source.num_examples:
        raise ValueError(f"train.eval_num_sequences={num_examples} but {source.description} "
                         f"has {source.num_examples} sequences: generate more, or evaluate "
                         f"fewer with --config.train.eval_num_sequences={source.num_examples}")
    return source


def _pipeline_val_batches(config, num_examples: int, process_index: int,
                          process_count: int) -> Iterator[dict]:
    from oclr_jax.data import input_pipeline

    val_config = _val_pipeline_config(config)
    source = _open_val_source(val_config, num_examples)
    # Without shuffling, this process's stream is its examples (index % processes == p) in
    # ascending order, repeated: the first `mine` elements are exactly its examples below
    # num_examples; later rows are padding.
    mine = len(range(process_index, num_examples, process_count))
    global_batch = int(config.train.batch_size)
    local_batch = global_batch // process_count
    num_steps = -(-max(len(range(p, num_examples, process_count))
                       for p in range(process_count)) // local_batch)
    dataset = input_pipeline.make_train_dataset(val_config, seed=int(config.seed),
                                                process_index=process_index,
                                                process_count=process_count, source=source)
    iterator = input_pipeline.TrainIterator(dataset, 0)
    for step in range(num_steps):
        batch = next(iterator)
        rows = step * local_batch + np.arange(local_batch)
        batch["weight"] = (rows < mine).astype(np.float32)
        yield batch
