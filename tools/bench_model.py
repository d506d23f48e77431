"""Benchmark of the Flax OCLR forward and forward+backward; prints ONE JSON line.

For each size (B, T, H, W) and compute dtype: median wall time of the jitted inference forward
and of a jitted value_and_grad of a mean-squared loss, XLA's memory estimate of each compiled
program (arguments + outputs + temporaries; on GPU also the allocator's peak) and the process's
peak resident memory while it ran.  On a CPU backend the PyTorch model is timed as the
baseline at 2 threads: with `--official-repo PATH` the official `OCLR` class itself (imported
from that checkout, given the reference model's weights, its outputs checked against the
reference's: `official_check`), otherwise our PyTorch reference model
(`oclr_jax/port/torch_reference.py`, the official network re-written).
Every (framework, size, dtype) runs in its own process (tools/bench_common.py); `--rounds N`
alternates them N times and reports medians over rounds.  `forward_time_ratio_vs_torch` is
JAX time / torch time.

    python tools/bench_model.py                              # (2,8,64,112) and paper size
    python tools/bench_model.py --sizes 1x30x128x224 --dtypes float32 --forward-only \
        --rounds 2 --official-repo /path/to/OCLR_model        # the paper-size inference forward
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))
sys.path.insert(0, TOOLS)

import bench_common  # noqa: E402

DEFAULT_SIZES = ("2x8x64x112", "2x30x128x224")
TORCH_THREADS = 2  # the official model timed as on this 2-core machine
PROGRAMS = ("forward", "forward_backward")


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


def bench_one(size, dtype_name: str, repeats: int, remat: bool,
              forward_only: bool = False) -> dict:
    import jax
    import jax.numpy as jnp

    from oclr_jax.model import OCLR, init_params

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
        timing = bench_common.timed_with_memory(
            lambda c=compiled, a=args: jax.block_until_ready(c(*a)), repeats)
        result[f"{name}_s"] = round(timing["seconds"], 4)
        result[f"{name}_peak_rss_mb"] = timing["peak_rss_mb"]
        result[f"{name}_xla_bytes"] = compiled_bytes(compiled)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    result["device"] = str(jax.devices()[0].device_kind)
    result["backend"] = jax.default_backend()
    return result


def _official_model(official_repo: str, reference):
    """The official `OCLR` class from a checkout, with the reference model's weights."""
    if not os.path.isfile(os.path.join(official_repo, "models", "oclr.py")):
        raise SystemExit(f"error: --official-repo {official_repo}: no models/oclr.py there; "
                         f"expected a checkout of the official OCLR code (OCLR_model)")
    sys.path.insert(0, os.path.abspath(official_repo))
    from models.oclr import OCLR as OfficialOCLR  # the oracle, imported at run time only

    model = OfficialOCLR(4, 3, num_query=3)
    model.load_state_dict(reference.state_dict())
    return model


def bench_torch(size, repeats: int, forward_only: bool = False, official_repo: str = "") -> dict:
    """The PyTorch baseline at the same size: forward (eval, no_grad) and forward+backward
    (train mode), float32 on the CPU, 2 threads.  The official model with `official_repo`
    (its eval outputs compared with our reference model's), else the reference model."""
    import torch

    from oclr_jax.port.torch_reference import TorchOCLR

    b, t, h, w = size
    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    model = TorchOCLR(4, 3)
    flow = torch.randn(b, t, 4, h, w) * 3
    result = {"baseline": "reference", "threads": TORCH_THREADS}
    if official_repo:
        reference = model.eval()
        model = _official_model(official_repo, reference).eval()
        probe = flow[:1, :min(t, 4)]  # outputs of the two models on the same input
        with torch.no_grad():
            ours, theirs = reference(probe), model(probe)
        diff = max(float((a - o).abs().max()) for a, o in zip(ours, theirs))
        result = {"baseline": "official", "threads": TORCH_THREADS,
                  "official_check": {"official_repo": official_repo, "max_abs_diff": diff,
                                     "passed": diff <= 1e-4}}
        del reference

    def forward():
        model.eval()
        with torch.no_grad():
            model(flow)

    def forward_backward():
        model.train()
        model.zero_grad()
        amodal, order = model(flow)
        ((amodal ** 2).mean() + (order ** 2).mean()).backward()

    programs = [("forward", forward), ("forward_backward", forward_backward)]
    for name, fn in programs[:1] if forward_only else programs:
        timing = bench_common.timed_with_memory(fn, repeats)
        result[f"torch_{name}_s"] = round(timing["seconds"], 4)
        result[f"torch_{name}_peak_rss_mb"] = timing["peak_rss_mb"]
    return result


def _size_text(size) -> str:
    return "x".join(str(v) for v in size)


def _worker(spec: str, args) -> dict:
    framework, size, dtype = spec.split(":")
    size = parse_size(size)
    if framework == "torch":
        import jax

        if jax.default_backend() != "cpu":
            return {"skipped": f"JAX runs on {jax.default_backend()}: no CPU torch baseline"}
        return bench_torch(size, args.repeats, args.forward_only, args.official_repo)
    return bench_one(size, dtype, args.repeats, args.remat, args.forward_only)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[parse_size(s) for s in DEFAULT_SIZES], help="BxTxHxW each")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every (framework, size, dtype) process this many times, "
                             "interleaved; medians over rounds")
    parser.add_argument("--remat", action="store_true", help="rematerialise blocks")
    parser.add_argument("--forward-only", action="store_true",
                        help="time the inference forward only (no forward+backward)")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the PyTorch baseline (run on CPU backends only)")
    parser.add_argument("--official-repo", default="",
                        help="checkout of the official OCLR code: its OCLR class is the torch "
                             "baseline (else our PyTorch reference model)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        bench_common.emit_result(_worker(args.worker, args))
        return
    if args.official_repo and not os.path.isfile(
            os.path.join(args.official_repo, "models", "oclr.py")):
        parser.error(f"--official-repo {args.official_repo}: no models/oclr.py there; expected "
                     f"a checkout of the official OCLR code (OCLR_model)")
    # The parent never initialises a JAX backend (on a GPU it would hold the memory the
    # workers need); the torch worker skips itself when JAX's backend is not the CPU.
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    names = PROGRAMS[:1] if args.forward_only else PROGRAMS
    forwarded = ["--repeats", str(args.repeats)] + (["--remat"] if args.remat else []) + (
        ["--forward-only"] if args.forward_only else []) + (
        ["--official-repo", args.official_repo] if args.official_repo else [])
    runs = []
    for size in args.sizes:
        specs = [f"jax:{_size_text(size)}:{dtype}" for dtype in args.dtypes]
        if with_torch:
            specs.append(f"torch:{_size_text(size)}:float32")
        rounds = {spec: [] for spec in specs}
        for _ in range(max(1, args.rounds)):
            for spec in specs:
                rounds[spec].append(bench_common.run_worker(
                    __file__, ["--worker", spec] + forwarded))
        baseline = None
        if with_torch and "skipped" not in rounds[specs[-1]][-1]:
            baseline = bench_common.merge_rounds(
                rounds[specs[-1]], [f"torch_{n}_s" for n in names],
                [f"torch_{n}_peak_rss_mb" for n in names])
        for spec in specs[:len(args.dtypes)]:
            run = bench_common.merge_rounds(rounds[spec], [f"{n}_s" for n in names],
                                            [f"{n}_peak_rss_mb" for n in names])
            if baseline and "error" not in baseline and "error" not in run:
                run.update(baseline)
                for name in names:
                    run[f"{name}_time_ratio_vs_torch"] = round(
                        run[f"{name}_s"] / baseline[f"torch_{name}_s"], 3)
                    run[f"{name}_speedup_vs_torch"] = round(
                        baseline[f"torch_{name}_s"] / run[f"{name}_s"], 3)
                    run[f"{name}_peak_rss_ratio_vs_torch"] = round(
                        run[f"{name}_peak_rss_mb"] / baseline[f"torch_{name}_peak_rss_mb"], 3)
            elif baseline and "error" in baseline:
                run["torch_error"] = baseline["error"]
            runs.append(run)
    first = runs[0] if runs else {}
    print(json.dumps({"bench": "model", "backend": first.get("backend"),
                      "device": first.get("device"), "runs": runs,
                      "machine": bench_common.machine()}))


if __name__ == "__main__":
    main()
