"""Benchmark of the training input pipeline: sequences/s delivered to the training loop.

Builds a small `oclr_synthetic` dataset with the generator (or reuses `--data_dir`), then
times `make_train_iterator` at the paper's input size (batch 2, T=30, 128x224, gaps +1/-1 ->
4 channels).  Prints ONE JSON line.

  python tools/bench_input.py                         # tfds source, built in a temp dir
  python tools/bench_input.py --source folder          # official-layout folder source
  python tools/bench_input.py --augment                # with flip, reversal and crop
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("tfds", "folder"), default="tfds",
                        help="read a tfds build (default) or an official-layout folder")
    parser.add_argument("--data_dir", default="",
                        help="existing tfds data_dir holding oclr_synthetic/bench (or an "
                             "official-layout folder with --source folder); default: build one")
    parser.add_argument("--num_sequences", type=int, default=16, help="sequences to generate")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--num_batches", type=int, default=100, help="timed batches")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--augment", action="store_true", help="enable all augmentations")
    return parser.parse_args(argv)


def _build(args, workdir: str) -> str:
    """Generates the benchmark data; returns the tfds data_dir or the folder."""
    from oclr_jax.data.tfds import synthetic as tfds_synthetic

    config = tfds_synthetic.OclrSyntheticConfig(
        name="bench", num_sequences=args.num_sequences, num_frames=args.frames,
        resolution=(args.height, args.width))
    if args.source == "tfds":
        builder = tfds_synthetic.OclrSynthetic(config=config, data_dir=workdir)
        builder.download_and_prepare()
        return workdir
    from oclr_jax.data import synth
    from oclr_jax.data.synth.writer import write_sequence

    options = tfds_synthetic.synth_options(config)
    for spec in synth.plan_split("syn_train", args.num_sequences, 0):
        write_sequence(workdir, synth.render_sequence(spec, options))
    return workdir


def _config(args, data_dir: str):
    from oclr_jax.config import loading as config_lib

    config = config_lib.load_config("configs/oclr_paper.py")
    config.train.batch_size = args.batch_size
    config.data.num_frames = args.frames
    config.data.resolution = (args.height, args.width)
    config.data.gaps = (1, -1)
    config.data.augment_flip = config.data.augment_reverse = args.augment
    config.data.augment_temporal_crop = args.augment
    if args.source == "tfds":
        config.data.tfds_name = "oclr_synthetic/bench"
        config.data.tfds_data_dir = data_dir
    else:
        config.data.train_dir = data_dir
    return config


def main(argv=None) -> None:
    args = _parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from oclr_jax.data import input_pipeline, tf_devices

    tf_devices.hide_accelerators_from_tf()
    workdir = None
    build_s = 0.0
    data_dir = args.data_dir
    if not data_dir:
        workdir = tempfile.mkdtemp(prefix="bench_input_")
        start = time.perf_counter()
        data_dir = _build(args, workdir)
        build_s = time.perf_counter() - start
    try:
        config = _config(args, data_dir)
        iterator = input_pipeline.make_train_iterator(config, seed=0, process_index=0,
                                                      process_count=1)
        for _ in range(args.warmup):
            batch = next(iterator)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.num_batches):
            batch = next(iterator)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({
        "benchmark": "input_pipeline",
        "source": args.source,
        "sequences_per_s": round(args.num_batches * args.batch_size / elapsed, 2),
        # CPU seconds this process spent per sequence: what the rate would be on free cores
        # (cpu_count / cpu_s_per_sequence) when other work shares the machine.
        "cpu_s_per_sequence": round(cpu / (args.num_batches * args.batch_size), 4),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "batch_size": args.batch_size,
        "frames": args.frames,
        "resolution": [args.height, args.width],
        "channels": int(batch["flow"].shape[-1]),
        "augment": args.augment,
        "num_sequences": args.num_sequences,
        "build_s": round(build_s, 1),
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
