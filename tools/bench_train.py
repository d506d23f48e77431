"""Benchmark of one OCLR training step (JAX vs the PyTorch reference); prints ONE JSON line.

A step is what `oclr_jax.train` runs: forward with dropout, non-finite outputs neutralised,
Hungarian matching, the four official losses, backward, clip-by-value and Adam.  The baseline
is the same step around the PyTorch reference model (`oclr_jax/port/torch_reference.py`) with
the losses written in torch and scipy matching on the host, as the official trainer does.

Each (framework, size, dtype) runs in its own subprocess so that its peak memory is its own:
`peak_rss_mb` is the process's peak resident memory while the timed steps run (the peak is
reset after warm-up, so compilation does not count), `step_extra_mb` the part above the
resident memory before them.  Times are medians over `--repeats` steps after one warm-up.

Sizes (batch x frames x H x W): 'tiny' = configs/tiny.py (f=8, 2 layers) at 2x8x64x112;
'small' = the paper model at 2x8x64x112; 'paper' = the paper model at 2x30x128x224.

    python tools/bench_train.py                          # every size, JAX float32 + bfloat16
    python tools/bench_train.py --sizes small --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SIZES = {  # name: (config file, batch, frames, height, width)
    "tiny": ("configs/tiny.py", 2, 8, 64, 112),
    "small": ("configs/oclr_paper.py", 2, 8, 64, 112),
    "paper": ("configs/oclr_paper.py", 2, 30, 128, 224),
}
TFLOP_PER_PAPER_STEP = 2.6  # DESIGN.md §2 (forward + backward at batch 2, torch FlopCounter).


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: resets VmHWM to the current RSS
        f.write("5")


def _batch(batch, frames, height, width, num_layers, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    flow = (rng.normal(size=(batch, frames, height, width, 4)) * 3).astype(np.float32)
    amodal = np.zeros((batch, frames, height, width, num_layers), np.float32)
    for b, k in itertools.product(range(batch), range(num_layers)):
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        amodal[b, :, y:y + height // 3, x:x + width // 3, k] = 1
    return flow, amodal


def _release_freed_memory() -> None:
    """glibc keeps memory freed by the compiler; the trainer hands it back (both frameworks
    get the same treatment here)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _timed(step, repeats: int) -> dict:
    step()  # warm-up: compiled already; allocates buffers
    _release_freed_memory()
    before = _rss_mb("VmRSS")
    _reset_peak_rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _rss_mb("VmHWM")
    return {"step_s": statistics.median(times), "peak_rss_mb": round(peak, 1),
            "step_extra_mb": round(peak - before, 1)}


def run_jax(size: str, dtype: str, repeats: int, ynn: bool = False,
            dropout_rng: str = "threefry") -> dict:
    import jax

    from oclr_jax import sharding
    from oclr_jax.config import loading as config_lib
    from oclr_jax.model import model_from_config
    from oclr_jax.train import optim
    from oclr_jax.train import step as train_step

    config_file, batch, frames, height, width = SIZES[size]
    config = config_lib.load_config(os.path.join(REPO, config_file), [
        f"data.num_frames={frames}", f"data.resolution=({height}, {width})",
        f"train.batch_size={batch}", f"model.dtype='{dtype}'", f"train.cpu_ynn_fusion={ynn}",
        f"train.dropout_rng='{dropout_rng}'"])
    mesh = sharding.make_data_mesh(jax.devices()[:1])
    model = model_from_config(config.model, in_channels=4)
    tx = optim.make_optimizer(config.train)
    state = train_step.init_train_state(model, tx, jax.random.PRNGKey(0), 4, mesh)
    flow, amodal = _batch(batch, frames, height, width, config.model.num_queries)
    data = sharding.global_batch({"flow": flow, "amodal": amodal}, mesh)
    options = train_step.compiler_options_for(config)  # what the trainer uses
    step_fn = train_step.make_train_step(model, tx, config, mesh, options)
    start = time.perf_counter()
    compiled = step_fn.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], data)
        jax.block_until_ready(metrics)

    result = _timed(step, repeats)
    analysis = compiled.memory_analysis()
    if analysis is not None:
        result["xla_temp_mb"] = round(analysis.temp_size_in_bytes / 2**20, 1)
    result.update(compile_s=round(compile_s, 1), device=str(jax.devices()[0].device_kind),
                  compiler_options=options or {})
    return result


def _torch_losses(amodal_logits, order_logits, gt):
    """The official losses in torch (layout B, T, K, H, W), scipy matching on the host."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from scipy.optimize import linear_sum_assignment

    amodal_logits = torch.nan_to_num(amodal_logits, nan=0.0, posinf=0.0, neginf=0.0)
    order_logits = torch.nan_to_num(order_logits, nan=0.0, posinf=0.0, neginf=0.0)
    b, _, k = order_logits.shape[:3]
    with torch.no_grad():
        probs = amodal_logits.sigmoid()[:, :, None]  # (B, T, 1, K, H, W)
        target = gt[:, :, :, None]  # (B, T, K, 1, H, W)
        bce = -(target * probs.log().clamp(min=-100) + (1 - target) * (1 - probs).log().clamp(min=-100))
        cost = torch.nan_to_num(bce, nan=10.0, posinf=10.0, neginf=10.0).mean(dim=(1, 4, 5))
        index = torch.as_tensor(np.stack([linear_sum_assignment(c)[1] for c in cost.numpy()]))
    rows = torch.arange(b)[:, None]
    amodal_logits = amodal_logits.permute(0, 2, 1, 3, 4)[rows, index].permute(0, 2, 1, 3, 4)
    order = order_logits[:, 0][rows, index]  # (B, K)
    loss_bce = F.binary_cross_entropy_with_logits(amodal_logits, gt)

    def shifted(x, source, s, dim, combine):
        n = x.shape[dim]
        out = x.clone()
        if s > 0:
            out.narrow(dim, s, n - s).copy_(combine(source.narrow(dim, 0, n - s), x.narrow(dim, s, n - s)))
        else:
            out.narrow(dim, 0, n + s).copy_(combine(source.narrow(dim, -s, n + s), x.narrow(dim, 0, n + s)))
        return out

    union = lambda a, c: (a + c).clamp(0, 1)
    both = lambda a, c: (((a + c) / 2) == 1).float()
    dil, ero = gt, gt
    for s in (3, -3):
        dil, ero = shifted(dil, gt, s, 4, union), shifted(ero, gt, s, 4, both)
    for s in (3, -3):
        dil, ero = shifted(dil, dil, s, 3, union), shifted(ero, ero, s, 3, both)
    strip = ((dil - ero) > 0.5).float()
    loss_bound = (F.binary_cross_entropy(amodal_logits.sigmoid() * strip, gt * strip)
                  / (strip.sum() + 1e-12) * strip.numel())
    rows_k, cols_k = torch.triu_indices(k, k, 1)
    overlap = torch.einsum("btihw,btjhw->bij", gt, gt)[:, rows_k, cols_k] > 0
    probs_order = torch.sigmoid(order[:, rows_k] - order[:, cols_k]).clamp(1e-5, 1 - 1e-5)
    loss_order = torch.where(overlap, -probs_order.log(), torch.zeros_like(probs_order)).mean()
    probs = amodal_logits.sigmoid()
    weights, composed = [], []
    for perm in itertools.permutations(range(k)):
        weights.append(torch.stack([torch.sigmoid(order[:, perm[i]] - order[:, perm[j]]).clamp(1e-5, 1 - 1e-5)
                                    for i in range(k) for j in range(i + 1, k)]).prod(0))
        covered, layers = torch.zeros_like(probs[:, :, 0]), [None] * k
        for channel in reversed(perm):
            layers[channel] = probs[:, :, channel] * (1 - covered)
            covered = (1 - covered) * probs[:, :, channel] + covered
        composed.append(torch.stack(layers, 2))
    weights = torch.stack(weights)
    weights = weights / weights.sum(0, keepdim=True)
    modal = (weights[:, :, None, None, None, None] * torch.stack(composed)).sum(0).clamp(0, 1)
    covered, gt_modal = torch.zeros_like(gt[:, :, 0]), [None] * k
    for channel in reversed(range(k)):
        gt_modal[channel] = gt[:, :, channel] * (1 - covered)
        covered = (1 - covered) * gt[:, :, channel] + covered
    loss_modal = F.binary_cross_entropy(modal, torch.stack(gt_modal, 2))
    return loss_bce + 0.2 * loss_bound + 0.05 * loss_order + 0.1 * loss_modal


def run_torch(size: str, repeats: int) -> dict:
    import torch

    from oclr_jax.config import loading as config_lib
    from oclr_jax.port.torch_reference import TorchOCLR

    config_file, batch, frames, height, width = SIZES[size]
    m = config_lib.load_config(os.path.join(REPO, config_file)).model
    torch.manual_seed(0)
    model = TorchOCLR(4, m.num_queries, unet_features=m.unet_features, num_layers=m.num_layers,
                      num_heads=m.num_heads, num_query=m.num_queries)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
    flow, amodal = _batch(batch, frames, height, width, m.num_queries)
    flow = torch.from_numpy(flow).permute(0, 1, 4, 2, 3).contiguous()  # (B, T, C, H, W)
    gt = torch.from_numpy(amodal).permute(0, 1, 4, 2, 3).contiguous()  # (B, T, K, H, W)

    def step():
        amodal_logits, order_logits = model(flow)
        loss = _torch_losses(amodal_logits, order_logits, gt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 5.0)
        optimizer.step()

    result = _timed(step, repeats)
    result.update(threads=torch.get_num_threads())
    return result


def _worker(spec: str, repeats: int) -> dict:
    framework, size, dtype = spec.split(":")
    if framework == "torch":
        return run_torch(size, repeats)
    return run_jax(size, dtype, repeats, ynn=framework == "jaxynn",
                   dropout_rng="rbg" if framework == "jaxrbg" else "threefry")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch baseline")
    parser.add_argument("--with_ynn", action="store_true",
                        help="also time float32 with XLA CPU's YNNPACK fusions on (XLA's "
                             "default; the trainer turns them off)")
    parser.add_argument("--with_rbg", action="store_true",
                        help="also time float32 with train.dropout_rng='rbg' (the default "
                             "is threefry)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(_worker(args.worker, args.repeats)), flush=True)
        return
    results = {}
    for size in args.sizes:
        specs = [f"jax:{size}:{dtype}" for dtype in args.dtypes]
        if args.with_ynn:
            specs.append(f"jaxynn:{size}:float32")
        if args.with_rbg:
            specs.append(f"jaxrbg:{size}:float32")
        if not args.no_torch:
            specs.append(f"torch:{size}:float32")
        for spec in specs:
            proc = subprocess.run([sys.executable, __file__, "--worker", spec,
                                   "--repeats", str(args.repeats)],
                                  capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            results[spec.replace(":", "_")] = (json.loads(lines[-1][7:]) if lines else
                                               {"error": proc.stderr.strip()[-500:]})
        jax_f32, torch_f32 = results.get(f"jax_{size}_float32"), results.get(f"torch_{size}_float32")
        if jax_f32 and torch_f32 and "step_s" in jax_f32 and "step_s" in torch_f32:
            results[f"{size}_speedup_vs_torch"] = round(torch_f32["step_s"] / jax_f32["step_s"], 3)
            results[f"{size}_peak_rss_ratio_vs_torch"] = round(
                jax_f32["peak_rss_mb"] / torch_f32["peak_rss_mb"], 3)
            rbg = results.get(f"jaxrbg_{size}_float32", {})
            if "step_s" in rbg:
                results[f"{size}_rbg_speedup_vs_torch"] = round(
                    torch_f32["step_s"] / rbg["step_s"], 3)
        if size == "paper":
            for dtype in args.dtypes:
                entry = results.get(f"jax_paper_{dtype}", {})
                if "step_s" in entry:
                    entry["tflops"] = round(TFLOP_PER_PAPER_STEP / entry["step_s"], 3)
    import platform

    results["machine"] = f"{platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(json.dumps(results))


if __name__ == "__main__":
    main()
