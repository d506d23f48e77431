"""Benchmark of the Flax OCLR forward and forward+backward; prints ONE JSON line.

For each size (B, T, H, W) and compute dtype: median wall time of the jitted inference forward
and of a jitted value_and_grad of a mean-squared loss, plus XLA's memory estimate of each
compiled program (arguments + outputs + temporaries; on GPU also the allocator's peak).  On a
CPU backend the PyTorch reference model is timed in the same run as the baseline
(`*_speedup_vs_torch` = torch time / JAX time).

    python tools/bench_model.py                              # (2,8,64,112) and paper size
    python tools/bench_model.py --sizes 2x8x64x112 --dtypes float32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from oclr_jax.model import OCLR, init_params  # noqa: E402

DEFAULT_SIZES = ("2x8x64x112", "2x30x128x224")
TORCH_THREADS = 2  # the official model timed as on this 2-core machine


def parse_size(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"size {text!r} must be BxTxHxW")
    return parts


def compiled_bytes(compiled) -> int | None:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes)


def time_call(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up (compiled already; first run allocates)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_one(size, dtype_name: str, repeats: int, remat: bool,
              forward_only: bool = False) -> dict:
    b, t, h, w = size
    model = OCLR(dtype=jnp.dtype(dtype_name), remat=remat)
    flow = jax.random.normal(jax.random.PRNGKey(0), (b, t, h, w, 4), jnp.float32) * 3
    params = init_params(model, jax.random.PRNGKey(1), (1, 1, 16, 16, 4))

    def forward(p, x):
        return model.apply({"params": p}, x)

    def loss(p, x, key):
        out = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
        return jnp.mean(out["amodal_logits"] ** 2) + jnp.mean(out["order_logits"] ** 2)

    key = jax.random.PRNGKey(2)
    result = {"size": list(size), "dtype": dtype_name, "remat": remat}
    programs = [("forward", forward, (params, flow)),
                ("forward_backward", jax.value_and_grad(loss), (params, flow, key))]
    for name, fn, args in programs[:1] if forward_only else programs:
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        result[f"{name}_compile_s"] = round(time.perf_counter() - start, 3)
        result[f"{name}_s"] = round(time_call(compiled, args, repeats), 4)
        result[f"{name}_xla_bytes"] = compiled_bytes(compiled)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    return result


def bench_torch(size, repeats: int, forward_only: bool = False) -> dict | None:
    """The PyTorch reference model (our re-implementation of the official one, same operations,
    in-place activations included) at the same size, forward (eval, no_grad) and
    forward+backward (train mode), float32 on the CPU, 2 threads."""
    try:
        import torch
    except ImportError:
        return None
    from oclr_jax.port.torch_reference import TorchOCLR

    b, t, h, w = size
    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    model = TorchOCLR(4, 3)
    flow = torch.randn(b, t, 4, h, w) * 3

    def forward():
        model.eval()
        with torch.no_grad():
            model(flow)

    def forward_backward():
        model.train()
        model.zero_grad()
        amodal, order = model(flow)
        ((amodal ** 2).mean() + (order ** 2).mean()).backward()

    result = {}
    programs = [("forward", forward), ("forward_backward", forward_backward)]
    for name, fn in programs[:1] if forward_only else programs:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        result[f"torch_{name}_s"] = round(statistics.median(times), 4)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[parse_size(s) for s in DEFAULT_SIZES], help="BxTxHxW each")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--remat", action="store_true", help="rematerialise blocks")
    parser.add_argument("--forward-only", action="store_true",
                        help="time the inference forward only (no forward+backward)")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the PyTorch reference baseline (run on CPU backends only)")
    args = parser.parse_args(argv)
    runs = []
    for size in args.sizes:
        baseline = None
        if not args.no_torch and jax.default_backend() == "cpu":
            baseline = bench_torch(size, args.repeats, args.forward_only)
        for dtype in args.dtypes:
            run = bench_one(size, dtype, args.repeats, args.remat, args.forward_only)
            if baseline:
                run.update(baseline)
                for name in ("forward",) if args.forward_only else ("forward", "forward_backward"):
                    run[f"{name}_time_ratio_vs_torch"] = round(
                        run[f"{name}_s"] / baseline[f"torch_{name}_s"], 3)
                    run[f"{name}_speedup_vs_torch"] = round(
                        baseline[f"torch_{name}_s"] / run[f"{name}_s"], 3)
            runs.append(run)
    print(json.dumps({"bench": "model", "backend": jax.default_backend(),
                      "device": str(jax.devices()[0].device_kind), "runs": runs}))


if __name__ == "__main__":
    main()
