"""Benchmark of evaluation throughput: frames/s at the paper's input size (128x224, T=30).

Two numbers, on the current JAX backend, with random weights of the paper-size model:
- `model_frames_per_s`: the jitted, sharded window step alone (flow in, modal label maps out;
  `WindowPredictor`), on random flow already in host memory.
- `eval_frames_per_s`: the whole `evaluate()` loop on a generated DAVIS2016-layout sequence at
  480p with RAFT-padded 480x856 `.flo` flows: flow reading and resizing, the model, upsampling
  to 480x854, per-window layer assignment, palette PNG writing and J/F scoring.

Prints ONE JSON line.

  python tools/bench_eval.py                     # paper size, batch 2
  python tools/bench_eval.py --config tiny.py    # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="oclr_paper.py", help="model sizes and resolution")
    parser.add_argument("--batch_size", type=int, default=2, help="windows per step")
    parser.add_argument("--steps", type=int, default=3, help="timed model steps")
    parser.add_argument("--eval_frames", type=int, default=32,
                        help="frames of the generated 480p sequence (0: skip the e2e timing)")
    return parser.parse_args(argv)


def _random_params(config):
    import jax

    from oclr_jax.checkpoint import abstract_params

    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda leaf: (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32),
        abstract_params(config))


def _write_davis_sequence(root: str, frames: int) -> None:
    """One DAVIS2016-layout sequence at 480x854 with padded 480x856 RAFT-style flows."""
    import cv2

    from oclr_jax.data import flow_io

    rng = np.random.default_rng(0)
    name = "bench"
    for t in range(frames):
        stem = f"{t:05d}"
        image_dir = os.path.join(root, "JPEGImages/480p", name)
        annotation_dir = os.path.join(root, "Annotations/480p", name)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(annotation_dir, exist_ok=True)
        cv2.imwrite(os.path.join(image_dir, stem + ".jpg"),
                    rng.integers(0, 255, (480, 854, 3), dtype=np.uint8))
        mask = np.zeros((480, 854), np.uint8)
        mask[100 + t:300 + t, 200 + 2 * t:500 + 2 * t] = 255
        cv2.imwrite(os.path.join(annotation_dir, stem + ".png"), mask)
        for gap in (1, -1):
            if (gap == 1 and t == frames - 1) or (gap == -1 and t == 0):
                continue
            flow = rng.normal(scale=3.0, size=(480, 856, 2)).astype(np.float32)
            flow_io.write_flo(os.path.join(root, f"Flows_gap{gap}", name, stem + ".flo"), flow)


def main(argv=None) -> int:
    args = _parse_args(argv)
    import jax

    from oclr_jax.checkpoint import model_for
    from oclr_jax.config.loading import load_config
    from oclr_jax.eval import inference
    from oclr_jax.eval.runner import evaluate, options_from_config

    config = load_config(args.config)
    height, width = config.data.resolution
    window = config.eval.window
    model = model_for(config)
    params = _random_params(config)
    predictor = inference.WindowPredictor(inference.model_predict_fn(model), args.batch_size,
                                          params)
    flows = np.random.default_rng(1).normal(
        size=(predictor.batch_size, window, height, width, 2 * len(config.data.gaps))
    ).astype(np.float32)
    start = time.perf_counter()
    predictor(flows)  # compile
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        predictor(flows)
    step_s = (time.perf_counter() - start) / args.steps
    result = {
        "benchmark": "eval", "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind, "devices": len(jax.local_devices()),
        "config": args.config, "resolution": [height, width], "window": window,
        "batch": predictor.batch_size, "compile_s": round(compile_s, 2),
        "step_s": round(step_s, 4),
        "model_frames_per_s": round(predictor.batch_size * window / step_s, 2),
    }
    if args.eval_frames:
        workdir = tempfile.mkdtemp(prefix="bench_eval_")
        try:
            _write_davis_sequence(workdir, args.eval_frames)
            options = options_from_config(config, dataset="davis2016", data_dir=workdir,
                                          out_dir=os.path.join(workdir, "out"),
                                          sequences="all", batch_size=args.batch_size,
                                          progress=False)
            start = time.perf_counter()
            evaluate(options, predictor=predictor)  # already compiled for this batch shape
            eval_s = time.perf_counter() - start
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        result.update(eval_frames=args.eval_frames, eval_s=round(eval_s, 2),
                      eval_frames_per_s=round(args.eval_frames / eval_s, 2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
