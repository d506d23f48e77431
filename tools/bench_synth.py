"""Benchmark of the synthetic data generator: sequences per second per worker.

Renders Syn-Train sequences at 128x224x30 with exact ground-truth flow and writes them in
the official layout (JPEG, two .flo per frame, amodal and modal PNGs, metadata), exactly what
`generate` does in each worker, with one OpenCV/BLAS thread.  Prints ONE JSON line.

  python tools/bench_synth.py                      # 48 sequences = one balanced Table B5 block
  python tools/bench_synth.py --workers 2          # also the aggregate rate of a 2-process pool

`file_create_ms` is the CPU cost of creating one empty file in the output folder just before
timing: ~0.03 ms on this machine's ext4 when quiet, ten times more for a few minutes after
many files were deleted (ext4 without a journal scans past recently freed inodes), which
inflates `write_seconds_per_sequence`; `--out /dev/shm/x` leaves the file system out.
"""

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # a worker is one thread; set before numpy loads

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402

from oclr_jax.data.synth import RenderOptions, generate, plan_split, render_sequence  # noqa: E402
from oclr_jax.data.synth.writer import SequenceWriter  # noqa: E402


def _folder_size(path: str) -> tuple[float, int]:
    """(megabytes, files) under a folder."""
    total = count = 0
    for folder, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
        count += len(files)
    return total / 1e6, count


def _file_create_ms(out: str, count: int = 200) -> float:
    """CPU milliseconds to create one empty file in a new folder under `out` (the files are
    kept: deleting them would slow the timed writes down)."""
    os.makedirs(out, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="file_system_probe_", dir=out)
    start = time.process_time()
    for index in range(count):
        os.close(os.open(os.path.join(folder, str(index)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return (time.process_time() - start) / count * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-sequences", type=int, default=48)
    parser.add_argument("--split", default="syn_train")
    parser.add_argument("--flow", default="gt", choices=("gt", "dis"))
    parser.add_argument("--workers", type=int, default=1, help="> 1: also time a pool of this size")
    parser.add_argument("--out", default=None,
                        help="a new output folder, kept (default: a temporary one, deleted)")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    options = RenderOptions(flow_mode=args.flow)
    out = args.out or tempfile.mkdtemp(prefix="bench_synth_")
    specs = plan_split(args.split, args.num_sequences, seed=0)
    try:
        # One writer per output, as each `generate` worker holds one.  Nothing is deleted while
        # timing: on ext4 without a journal, freed inodes slow later file creation for minutes.
        warmup = SequenceWriter(os.path.join(out, "warmup"))
        warmup.write(render_sequence(specs[0], options))
        file_create_ms = _file_create_ms(out)
        writer = SequenceWriter(os.path.join(out, "single"))
        render_seconds = write_seconds = 0.0
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for spec in specs:
            start = time.perf_counter()
            sequence = render_sequence(spec, options)
            middle = time.perf_counter()
            writer.write(sequence)
            write_seconds += time.perf_counter() - middle
            render_seconds += middle - start
        wall = time.perf_counter() - wall_start
        cpu = time.process_time() - cpu_start
        writer.close()
        warmup.close()
        megabytes, files = _folder_size(os.path.join(out, "single"))
        result = {
            "benchmark": "synth_generate",
            "split": args.split, "resolution": list(options.resolution), "frames": options.frames,
            "flow": args.flow, "sequences": len(specs),
            "sequences_per_second_per_worker": round(len(specs) / wall, 3),
            "render_seconds_per_sequence": round(render_seconds / len(specs), 4),
            "write_seconds_per_sequence": round(write_seconds / len(specs), 4),
            "cpu_seconds_per_sequence": round(cpu / len(specs), 4),
            "megabytes_per_sequence": round(megabytes / len(specs), 2),
            "files_per_sequence": round(files / len(specs), 1), "file_create_ms": round(file_create_ms, 3),
            "syn_train_minutes_at_this_rate_2_workers": round(4608 / (2 * len(specs) / wall) / 60, 1),
            "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
        }
        if args.workers > 1:
            pool_specs = len(specs)
            summary = generate(args.split, os.path.join(out, "pool"), num_sequences=pool_specs, seed=1,
                               options=options, workers=args.workers, progress=False)
            result["pool_workers"] = args.workers
            result["pool_sequences_per_second"] = round(summary.sequences_per_second, 3)
        print(json.dumps(result))
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
