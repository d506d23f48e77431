"""Benchmark of the DINO test-time adaptation's three kernels; prints ONE JSON line.

Median wall time (after compilation) of, at one frame size with ViT-S/8 and random weights:
  features_s_per_frame   embedding + 12 blocks + norm for one frame (`feature_batch_size` 1);
  finetune_step_s        one Adam step on one frame pair (2 blocks, loss, update);
  propagation_step_s     one frame of label propagation with the full context (key + window);
and the estimate for one sequence of T frames:
  T * features + iterations * finetune_step + (2 T) * propagation (+ T * 2-block features);
and XLA's memory estimate (arguments + outputs + temporaries) of each compiled kernel.

    python tools/bench_tta.py                           # 480x832 (DAVIS, 60x104 patches)
    python tools/bench_tta.py --height 240 --width 416 --frames 50 --repeats 2
    python tools/bench_tta.py --compile-only       # XLA memory estimates only (no timing)
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
import numpy as np  # noqa: E402

from oclr_jax.config.loading import load_config  # noqa: E402
from oclr_jax.tta import adapt, finetune, propagation  # noqa: E402
from oclr_jax.tta.loss import trimap  # noqa: E402
from oclr_jax.tta.vit import init_vit_params, vit_from_config  # noqa: E402


def compiled_bytes(jitted, *args, **kwargs) -> int | None:
    """XLA's estimate of a program's memory: arguments + outputs + temporaries."""
    analysis = jitted.lower(*args, **kwargs).compile().memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes)


def median_seconds(fn, repeats: int) -> float:
    if repeats <= 0:  # --compile-only
        return float("nan")
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=70, help="T for the per-sequence estimate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-only", action="store_true",
                        help="only XLA's memory estimates, no timing (cheap at any size)")
    args = parser.parse_args(argv)
    if args.compile_only:
        args.repeats = 0

    tta = load_config("configs/oclr_paper.py").tta
    model = vit_from_config(tta)
    params = init_vit_params(model, seed=0)
    grid_hw = model.grid_shape((args.height, args.width))
    num_patches = grid_hw[0] * grid_hw[1]
    split = model.depth - tta.trainable_blocks
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, args.height, args.width, 3)),
                         jnp.float32)

    def features():
        tokens = adapt._frozen_tokens(params, images, model=model, stop_block=split)
        return adapt._normalized_features(params, tokens, model=model, start_block=split)

    features_s = median_seconds(features, args.repeats)

    settings = finetune.FinetuneSettings.from_config(tta)
    tokens = jax.random.normal(jax.random.key(1), (2, 1 + num_patches, model.embed_dim))
    masks = np.zeros((2, 3) + grid_hw, np.float32)
    masks[:, 0, grid_hw[0] // 4:grid_hw[0] // 2, grid_hw[1] // 4:grid_hw[1] // 2] = 1
    positive, negative = (x.reshape(2, 3, -1) for x in trimap(jnp.asarray(masks)))
    state = {"params": jax.tree.map(jnp.copy, params)}
    state["opt"] = finetune.make_optimizer(params, model.depth, settings).init(state["params"])

    def step():
        state["params"], state["opt"], loss = finetune.train_step(
            state["params"], state["opt"], tokens, positive, negative, model=model,
            settings=settings)
        return loss

    step_s = median_seconds(step, args.repeats)

    unit = jax.random.normal(jax.random.key(2), (num_patches, model.embed_dim))
    unit = unit / jnp.linalg.norm(unit, axis=-1, keepdims=True)
    labels = jax.nn.one_hot(jnp.arange(num_patches) % 4, 4)
    holder = {"context": propagation.empty_context(unit, labels, tta.window)}

    def propagate():
        context, soft, error = propagation._propagation_step(
            holder["context"], unit, labels, jnp.float32(1.0), jnp.int32(1), grid_hw=grid_hw,
            topk=tta.topk, temperature=tta.propagation_temperature, radius=tta.neighborhood,
            push_flow=False)
        holder["context"] = context
        return soft

    propagation_s = median_seconds(propagate, args.repeats)
    memory_gib = {
        "features": compiled_bytes(adapt._frozen_tokens, params, images, model=model,
                                   stop_block=split),
        "finetune_step": compiled_bytes(finetune.train_step, state["params"], state["opt"],
                                        tokens, positive, negative, model=model,
                                        settings=settings),
        "propagation_step": compiled_bytes(
            propagation._propagation_step, holder["context"], unit, labels, jnp.float32(1.0),
            jnp.int32(1), grid_hw=grid_hw, topk=tta.topk,
            temperature=tta.propagation_temperature, radius=tta.neighborhood, push_flow=False)}
    memory_gib = {k: None if v is None else round(v / 2 ** 30, 2) for k, v in memory_gib.items()}
    head_share = tta.trainable_blocks / model.depth  # features again after fine-tuning
    sequence_s = (args.frames * features_s * (1 + head_share) + tta.num_iterations * step_s
                  + 2 * args.frames * propagation_s)
    def seconds(value, digits=4):
        return None if value != value else round(value, digits)  # NaN (compile-only) -> null

    print(json.dumps({
        "benchmark": "tta_dino_vits8", "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(), "image_hw": [args.height, args.width],
        "grid_hw": list(grid_hw), "features_s_per_frame": seconds(features_s),
        "finetune_step_s": seconds(step_s), "propagation_step_s": seconds(propagation_s),
        "frames": args.frames, "iterations": tta.num_iterations,
        "estimated_sequence_s": seconds(sequence_s, 1), "xla_memory_gib": memory_gib}))


if __name__ == "__main__":
    main()
