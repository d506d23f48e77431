"""Benchmark of one OCLR training step (JAX vs the PyTorch reference); prints ONE JSON line.

A step is what `oclr_jax.train` runs: forward with dropout, non-finite outputs neutralised,
Hungarian matching, the four official losses, backward, clip-by-value and Adam.  The baseline
is the official training step in PyTorch with 2 threads: the PyTorch reference model
(`oclr_jax/port/torch_reference.py`, the official network) and losses, GT modal composition and
scipy Hungarian matching written here to run the same tensor operations as the official
`train.py` / `utils.py` (clones, per-sample loops, full (T, K, K, h, w) matching cost, K!
composition loop), then `clip_grad_value_` and Adam, so it costs what the official step costs.
With `--official-repo PATH` (a checkout of the official code) the baseline's loss terms are
compared with the official functions' on the same tensors (`official_check` in the output);
without it the output says the check was skipped.

Each (framework, size, dtype) runs in its own subprocess so that its peak memory is its own:
`peak_rss_mb` is the process's peak resident memory while the timed steps run (the peak is
reset after warm-up, so compilation does not count), `step_extra_mb` the part above the
resident memory before them.  Times are medians over `--repeats` steps after one warm-up.

Sizes (batch x frames x H x W): 'tiny' = configs/tiny.py (f=8, 2 layers) at 2x8x64x112;
'small' = the paper model at 2x8x64x112; 'paper' = the paper model at 2x30x128x224.

    python tools/bench_train.py                          # every size, JAX float32 + bfloat16
    python tools/bench_train.py --sizes small --repeats 5
    python tools/bench_train.py --sizes small --dtypes float32 --rounds 2 \
        --official-repo /path/to/OCLR_model                  # interleaved, baseline checked
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))

import bench_common  # noqa: E402

SIZES = {  # name: (config file, batch, frames, height, width)
    "tiny": ("configs/tiny.py", 2, 8, 64, 112),
    "small": ("configs/oclr_paper.py", 2, 8, 64, 112),
    "paper": ("configs/oclr_paper.py", 2, 30, 128, 224),
}
TORCH_THREADS = 2  # the official step timed as on this 2-core machine
TFLOP_PER_PAPER_STEP = 2.6  # DESIGN.md §2 (forward + backward at batch 2, torch FlopCounter).


def _batch(batch, frames, height, width, num_layers, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    flow = (rng.normal(size=(batch, frames, height, width, 4)) * 3).astype(np.float32)
    amodal = np.zeros((batch, frames, height, width, num_layers), np.float32)
    for b, k in itertools.product(range(batch), range(num_layers)):
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        amodal[b, :, y:y + height // 3, x:x + width // 3, k] = 1
    return flow, amodal


def _timed(step, repeats: int) -> dict:
    timing = bench_common.timed_with_memory(step, repeats)
    return {"step_s": timing["seconds"], "peak_rss_mb": timing["peak_rss_mb"],
            "step_extra_mb": timing["extra_mb"]}


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


def _nearest_like(masks, size):
    """GT (B, T, K, H, W) resized by torch nearest to `size` over merged (B*T) frames, as the
    official criteria do on every call (a copy even when the size already agrees)."""
    import torch.nn.functional as F

    b = masks.shape[0]
    return F.interpolate(masks.flatten(0, 1), size=size).unflatten(0, (b, -1))


def _torch_compose(masks, back_to_front):
    """Modal masks for one layer order: clone, then each channel from the front one back
    (the official `find_recon_mask` costs: a clone plus 2K full-size products)."""
    import torch

    modal = masks.clone()
    covered = torch.zeros(masks.shape[0], masks.shape[1], *masks.shape[3:])
    for channel in reversed(list(back_to_front)):
        layer = masks[:, :, channel]
        modal[:, :, channel] = layer * (1 - covered)
        covered = (1 - covered) * layer + covered
    return modal


def _torch_match(amodal_logits, order_logits, gt):
    """Hungarian matching per sample, costed as the official `hungarian_matcher`: the cost
    volume (T, K, K, h, w) of BCE between every prediction and GT layer, NaN/inf -> 10, the
    frame mean on the host, scipy, then the permutation written into clones of both outputs."""
    import torch
    import torch.nn.functional as F
    from scipy.optimize import linear_sum_assignment

    b, t, k, h, w = amodal_logits.shape
    probs = amodal_logits.clone().sigmoid()[:, :, None]  # (B, T, 1, K, h, w)
    targets = _nearest_like(gt, (h, w)).clamp(0.0, 1.0).clone()[:, :, :, None]  # (B, T, K, 1, ..)
    matched = [amodal_logits.clone(), order_logits.clone()]
    for sample in range(b):
        cost = F.binary_cross_entropy(probs[sample].expand(t, k, k, h, w),
                                      targets[sample].expand(t, k, k, h, w), reduction="none")
        cost = torch.nan_to_num(cost, nan=10.0, posinf=10.0, neginf=10.0)
        cost = cost.mean(dim=(-1, -2)).detach().numpy().mean(0)  # (K_gt, K_pred)
        columns = torch.tensor(linear_sum_assignment(cost)[1].tolist())
        for value in matched:
            value[sample] = value[sample, :, columns]
    return matched


def _torch_boundary_strip(masks, width=3):
    """Shift-dilated minus shift-eroded GT over ((B*T), K, H, W), written in place on clones as
    the official `find_boundary` does (see oclr_jax.losses.boundary_strip for the rule)."""
    n = width
    grown = masks.clone()
    grown[..., n:] = (masks[..., :-n] + grown[..., n:]).clamp(0, 1)
    grown[..., :-n] = (masks[..., n:] + grown[..., :-n]).clamp(0, 1)
    grown[..., n:, :] = (grown[..., :-n, :] + grown[..., n:, :]).clamp(0, 1)
    grown[..., :-n, :] = (grown[..., n:, :] + grown[..., :-n, :]).clamp(0, 1)
    inner = masks.clone()
    inner[..., n:] = (((masks[..., :-n] + inner[..., n:]) / 2) == 1.0).float()
    inner[..., :-n] = (((masks[..., n:] + inner[..., :-n]) / 2) == 1.0).float()
    inner[..., n:, :] = (((inner[..., :-n, :] + inner[..., n:, :]) / 2) == 1.0).float()
    inner[..., :-n, :] = (((inner[..., n:, :] + inner[..., :-n, :]) / 2) == 1.0).float()
    return ((grown - inner) > 0.5).float()


def _torch_losses(amodal_logits, order_logits, gt):
    """One official training loss in torch, with the official step's costs.

    amodal_logits (B, T, K, h, w), order_logits (B, T, K) as the model returns them, GT
    (B, T, K, H, W).  Every operation the official `train.py` step and `utils.py` criteria run
    is run here too (GT modal masks composed per step, nearest resizes that copy, clones and
    per-sample loops, the permutation loop of the soft modal composition, the order loss over
    T), so the baseline costs what the official step costs; `--official-repo` checks the
    values against the official functions.  Returns (total, {term: weighted value}).
    """
    import itertools

    import torch
    import torch.nn.functional as F

    gt_modal = _torch_compose(gt, range(gt.shape[2]))
    amodal_logits = torch.nan_to_num(amodal_logits, nan=0.0, posinf=0.0, neginf=0.0)
    order_logits = torch.nan_to_num(order_logits, nan=0.0, posinf=0.0, neginf=0.0)
    amodal_logits, order_logits = _torch_match(amodal_logits, order_logits, gt)
    b, t, k, h, w = amodal_logits.shape
    frames_logits = amodal_logits.flatten(0, 1)  # ((B*T), K, h, w)
    gt_frames = _nearest_like(gt, (h, w)).flatten(0, 1)
    terms = {"amodal_bce": F.binary_cross_entropy_with_logits(frames_logits, gt_frames)}

    gt_frames = _nearest_like(gt, (h, w)).flatten(0, 1)
    strip = _torch_boundary_strip(gt_frames)
    boundary = F.binary_cross_entropy(frames_logits.sigmoid() * strip, gt_frames * strip)
    terms["boundary"] = 0.2 * boundary / (strip.sum() + 1e-12) * strip.numel()

    probs = amodal_logits.sigmoid()
    rows, cols = torch.triu_indices(k, k, 1)
    weights, composed = None, None
    for back_to_front in torch.tensor(list(itertools.permutations(range(k)))):
        permuted = order_logits[:, :, back_to_front]  # (B, T, K)
        differences = (permuted[..., :, None] - permuted[..., None, :])[:, :, rows, cols]
        weight = torch.sigmoid(differences).clamp(1e-5, 1 - 1e-5).prod(2)[None]  # (1, B, T)
        layers = _torch_compose(probs, back_to_front)[None]
        weights = weight if weights is None else torch.cat((weights, weight), 0)
        composed = layers if composed is None else torch.cat((composed, layers), 0)
    weights = weights / weights.sum(0)[None]
    modal = (weights[..., None, None, None].expand_as(composed) * composed).sum(0).clamp(0.0, 1.0)
    terms["modal"] = 0.1 * F.binary_cross_entropy(
        modal.flatten(0, 1), _nearest_like(gt_modal, (h, w)).flatten(0, 1))

    if k == 1:
        terms["order"] = torch.tensor(0.0)
    else:
        # Pairs of GT layers that overlap in some frame: target 1 ("i behind j"); others 0.5,
        # which the official loss masks out (but counts in the mean).
        overlap = (gt[:, :, None] * gt[:, :, :, None]).sum(dim=(-2, -1))  # (B, T, K, K)
        overlap = overlap * (1.0 - torch.eye(k))[None, None]
        target = ((overlap.sum(1) > 0).float() / 2 + 0.5)[:, rows, cols]  # (B, pairs)
        clip_order = order_logits.mean(1)  # (B, K)
        relative = (clip_order[:, :, None] - clip_order[:, None, :])[:, rows, cols]
        relative = torch.sigmoid(relative).clamp(1e-5, 1 - 1e-5)
        counted = 1.0 - (target == 0.5).float()
        terms["order"] = 0.05 * torch.mean(-counted * (target * relative.log()
                                                         + (1 - target) * (1 - relative).log()))
    total = (terms["amodal_bce"] + terms["boundary"]) + terms["order"] + terms["modal"]
    return total, terms


def _official_terms(official_repo: str, amodal_logits, order_logits, gt) -> dict:
    """The official `utils.py` criteria on the same tensors, weighted as the official `train.py`
    step weights them.  `official_repo` is a checkout of the official code (an oracle outside
    this repository, imported at run time only)."""
    import importlib.util

    import numpy as np
    import torch

    path = os.path.join(official_repo, "utils.py")
    if not os.path.isfile(path):
        raise SystemExit(f"error: --official-repo {official_repo}: no utils.py there; expected "
                         f"a checkout of the official OCLR code (OCLR_model)")
    spec = importlib.util.spec_from_file_location("official_oclr_utils", path)
    ut = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ut)
    gt_modal = ut.find_recon_mask(gt, torch.from_numpy(np.arange(gt.shape[2])).long())
    amodal_logits = torch.nan_to_num(amodal_logits, nan=0.0, posinf=0.0, neginf=0.0)
    order_logits = torch.nan_to_num(order_logits, nan=0.0, posinf=0.0, neginf=0.0)
    amodal_logits, order_logits = ut.hungarian_matcher(amodal_logits, gt,
                                                       [amodal_logits, order_logits])
    modal = ut.amodal_to_modal_soft(amodal_logits.sigmoid(), order_logits)
    return {"amodal_bce": 1.0 * ut.criterion_amodal_bce(amodal_logits, gt),
            "boundary": 0.2 * ut.criterion_amodal_bound(amodal_logits, gt),
            "modal": 0.1 * ut.criterion_modal(modal, gt_modal),
            "order": 0.05 * ut.criterion_order(order_logits, gt)}


def _check_against_official(official_repo, amodal_logits, order_logits, gt) -> dict:
    """Baseline loss terms vs the official functions' on the same model outputs."""
    import torch

    if not official_repo:
        return {"skipped": "no --official-repo given: the baseline's losses were not compared "
                           "with the official utils.py"}
    with torch.no_grad():
        # A state that exercises every term: the outputs of the model, and the same outputs
        # with the layers and their order values reversed (so matching permutes them).
        cases = {"model_outputs": (amodal_logits, order_logits),
                 "reversed_layers": (amodal_logits.flip(2) * 3.0, order_logits.flip(2) * 5.0)}
        worst, terms_out = 0.0, {}
        for name, (logits, order) in cases.items():
            ours = _torch_losses(logits, order, gt)[1]
            official = _official_terms(official_repo, logits, order, gt)
            for term in ours:
                diff = abs(float(ours[term]) - float(official[term]))
                worst = max(worst, diff / max(1.0, abs(float(official[term]))))
            terms_out[name] = {term: round(float(official[term]), 6) for term in official}
    return {"official_repo": official_repo, "max_rel_diff": worst, "passed": worst <= 1e-5,
            "official_terms": terms_out}


def run_torch(size: str, repeats: int, official_repo: str = "") -> dict:
    import torch

    from oclr_jax.config import loading as config_lib
    from oclr_jax.port.torch_reference import TorchOCLR

    torch.set_num_threads(TORCH_THREADS)
    config_file, batch, frames, height, width = SIZES[size]
    m = config_lib.load_config(os.path.join(REPO, config_file)).model
    torch.manual_seed(0)
    model = TorchOCLR(4, m.num_queries, unet_features=m.unet_features, num_layers=m.num_layers,
                      num_heads=m.num_heads, num_query=m.num_queries)
    model.train()
    learning_rate = 5e-5
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    flow, amodal = _batch(batch, frames, height, width, m.num_queries)
    flow = torch.from_numpy(flow).permute(0, 1, 4, 2, 3).contiguous()  # (B, T, C, H, W)
    gt = torch.from_numpy(amodal).permute(0, 1, 4, 2, 3).contiguous()  # (B, T, K, H, W)
    with torch.no_grad():
        check = _check_against_official(official_repo, *model(flow), gt)
    iteration = {"it": 1}

    def step():  # the official train.py step (optim_freq 1, no logging/eval iteration)
        amodal_logits, order_logits = model(flow)
        loss, _ = _torch_losses(amodal_logits, order_logits, gt)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), clip_value=5.0)
        optimizer.step()
        optimizer.zero_grad()
        for group in optimizer.param_groups:  # linear warm-up, as the official loop sets it
            group["lr"] = learning_rate * iteration["it"] / 40_000
        iteration["it"] += 1

    result = _timed(step, repeats)
    result.update(threads=torch.get_num_threads(), official_check=check)
    return result


def _worker(spec: str, repeats: int, official_repo: str = "") -> dict:
    framework, size, dtype = spec.split(":")
    if framework == "torch":
        return run_torch(size, repeats, official_repo)
    return run_jax(size, dtype, repeats, ynn=framework == "jaxynn",
                   dropout_rng="rbg" if framework == "jaxrbg" else "threefry")


def _run_worker(spec: str, args) -> dict:
    arguments = ["--worker", spec, "--repeats", str(args.repeats)]
    if args.official_repo:
        arguments += ["--official-repo", args.official_repo]
    return bench_common.run_worker(__file__, arguments)


def _merge_rounds(rounds: list) -> dict:
    """Median step time over rounds (each round's listed as `round_step_s`), largest peak."""
    merged = bench_common.merge_rounds(rounds, ["step_s"], ["peak_rss_mb"])
    if "step_s_rounds" in merged:
        merged["round_step_s"] = merged.pop("step_s_rounds")
    return merged


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
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every (framework, size) process this many times, "
                             "interleaved (JAX, torch, JAX, torch, ...); medians over rounds")
    parser.add_argument("--official-repo", default="",
                        help="checkout of the official OCLR code: the torch baseline's loss "
                             "values are checked against its utils.py on the same tensors")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        bench_common.emit_result(_worker(args.worker, args.repeats, args.official_repo))
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
        rounds = {spec: [] for spec in specs}
        for _ in range(max(1, args.rounds)):
            for spec in specs:
                rounds[spec].append(_run_worker(spec, args))
        for spec in specs:
            results[spec.replace(":", "_")] = _merge_rounds(rounds[spec])
        jax_f32, torch_f32 = results.get(f"jax_{size}_float32"), results.get(f"torch_{size}_float32")
        if jax_f32 and torch_f32 and "step_s" in jax_f32 and "step_s" in torch_f32:
            results[f"{size}_speedup_vs_torch"] = round(torch_f32["step_s"] / jax_f32["step_s"], 3)
            results[f"{size}_time_ratio_vs_official"] = round(
                jax_f32["step_s"] / torch_f32["step_s"], 3)
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
    results["machine"] = bench_common.machine()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
