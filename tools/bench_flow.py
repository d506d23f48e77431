"""Benchmark of RAFT flow: frame pairs per second; prints ONE JSON line.

The Flax RAFT (test mode, `--iters` refinement iterations, random weights: speed does not
depend on them) on the current JAX backend, for each correlation implementation (`all_pairs`:
the official volume; `on_the_fly`: dot products per window every iteration), with XLA's memory
estimate of each compiled program (arguments + outputs + temporaries).  On a CPU backend our
PyTorch RAFT reference is timed in the same run as the baseline (`torch.set_num_threads`).
Frames are a smooth texture moving 3 px per frame at the given size (a multiple of 8, as the
padded DAVIS frames 480x856).

    python tools/bench_flow.py                               # 480x856, 20 iterations, 2 pairs
    python tools/bench_flow.py --size 240x432 --corr all_pairs --repeats 1 --no-torch
    python tools/bench_flow.py --pause-training              # SIGSTOP the run in /tmp/oclr_train.pids meanwhile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from oclr_jax.flow import convert, corr, raft  # noqa: E402

TRAINING_PIDS = "/tmp/oclr_train.pids"


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(p) for p in text.lower().split("x"))
    if height % 8 or width % 8:
        raise argparse.ArgumentTypeError(f"--size {text}: both sides must be multiples of 8 (padded frames)")
    return height, width


def frames(batch: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (B, H, W, 3) float32 batches: a blurred random texture and the same moved by (3, 3)."""
    import cv2

    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (height + 8, width + 8, 3)).astype(np.float32), (0, 0), 2)
    first, second = texture[4:4 + height, 4:4 + width], texture[1:1 + height, 1:1 + width]
    return np.repeat(first[None], batch, 0), np.repeat(second[None], batch, 0)


def bench_jax_impl(size, iters: int, batch: int, repeats: int, impl: str) -> dict:
    variables = jax.device_put(convert.random_variables())
    image1, image2 = (jax.device_put(x) for x in frames(batch, *size))
    fn = raft.make_flow_fn(raft.RAFT(), iters, impl)
    start = time.perf_counter()
    compiled = fn.lower(variables, image1, image2).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    seconds = statistics.median(bench_common.time_calls(
        lambda: jax.block_until_ready(compiled(variables, image1, image2)), repeats))
    result = {"pairs_per_s": round(batch / seconds, 4), "s_per_call": round(seconds, 3),
              "compile_s": round(compile_s, 1)}
    if analysis is not None:
        result["xla_bytes"] = int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                                  + analysis.temp_size_in_bytes)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
    return result


def bench_torch(size, iters: int, batch: int, repeats: int, threads: int) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    from oclr_jax.flow.torch_reference import TorchRAFT

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = TorchRAFT().eval()
    image1, image2 = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous() for x in frames(batch, *size))

    def call():
        with torch.no_grad():
            model(image1, image2, iters=iters)

    seconds = statistics.median(bench_common.time_calls(call, repeats))
    return {"pairs_per_s": round(batch / seconds, 4), "s_per_call": round(seconds, 3), "threads": threads}


@contextlib.contextmanager
def paused_training(enabled: bool):
    """SIGSTOPs the training processes listed in /tmp/oclr_train.pids; always SIGCONTs them."""
    pids = []
    if enabled and os.path.exists(TRAINING_PIDS):
        pids = [int(line) for line in open(TRAINING_PIDS).read().split() if line.strip().isdigit()]
    stopped = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def resume(*_):
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def on_signal(signum, frame):
        resume()
        raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield stopped
    finally:
        resume()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(480, 856), help="HxW, multiples of 8 (default 480x856)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1, help="pairs per call")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after one warm-up call")
    parser.add_argument("--corr", default=",".join(corr.CORR_IMPLS), help="comma-separated: all_pairs,on_the_fly")
    parser.add_argument("--threads", default="2,1",
                        help="torch CPU thread counts to time, comma-separated (default 2,1: on a loaded "
                             "2-core machine torch's 2-thread runs can be many times slower than 1 thread)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    parser.add_argument("--pause-training", action="store_true",
                        help=f"SIGSTOP the processes in {TRAINING_PIDS} while timing (SIGCONT after)")
    args = parser.parse_args(argv)

    result = {"bench": "flow", "size": list(args.size), "iters": args.iters, "batch": args.batch,
              "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
              "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
              "load_before": round(os.getloadavg()[0], 2)}
    with paused_training(args.pause_training) as stopped:
        result["paused_training_pids"] = stopped
        for impl in args.corr.split(","):
            result[f"jax_{impl}"] = bench_jax_impl(args.size, args.iters, args.batch, args.repeats, impl)
        if not args.no_torch and jax.default_backend() == "cpu":
            for threads in (int(t) for t in args.threads.split(",")):
                baseline = bench_torch(args.size, args.iters, args.batch, args.repeats, threads)
                if baseline is None:
                    break
                result[f"torch_cpu_{threads}_threads"] = baseline
            timed = [v["pairs_per_s"] for k, v in result.items() if k.startswith("torch_cpu_")]
            if timed:  # against the faster torch run: the fair baseline
                for impl in args.corr.split(","):
                    result[f"jax_{impl}_speedup_vs_torch"] = round(result[f"jax_{impl}"]["pairs_per_s"] / max(timed), 3)
    result["load_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
