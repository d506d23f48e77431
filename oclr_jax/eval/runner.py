"""`python -m oclr_jax.eval`: the paper's evaluation on DAVIS2016, DAVIS2017-motion,
SegTrackv2, FBMS-59, MoCA and Syn-Val (DESIGN.md §5; docs/evaluation.md).

    python -m oclr_jax.eval --dataset davis2016 --data-dir /data/DAVIS2016 --checkpoint CKPT
    python -m oclr_jax.eval --dataset davis2017m --data-dir D --checkpoint OCLR.pth \
        --model-source torch --out results/d17m --save-vis
    python -m oclr_jax.eval --dataset fbms59 --data-dir D --predictions published_masks/
    python -m oclr_jax.eval --dataset davis2016 --data-dir D --checkpoint CKPT \
        --tta dino --dino-checkpoint dino_deitsmall8_pretrain.pth      # docs/tta.md

Library use (and the seam for tests and other front ends): `evaluate(options, predict_fn,
params)` with an `EvalOptions`, where `predict_fn(flow)` (or `predict_fn(params, flow)`)
maps flow (B, T, H, W, C) to {'amodal_logits', 'order_logits'}.  `EvalOptions.refine` is a
hook that may rewrite each sequence's label maps before they are saved and scored (e.g.
test-time adaptation).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from oclr_jax import sharding
from oclr_jax.config import paper
from oclr_jax.config.checks import check_config
from oclr_jax.data.benchmarks import DATASETS, DEFAULT_FLOW_DIR, Benchmark, SequenceRecord
from oclr_jax.errors import UserError
from oclr_jax.eval import inference, scoring
from oclr_jax.eval import outputs as eval_outputs

Refine = Callable[[SequenceRecord, np.ndarray], np.ndarray]

# The one source of the evaluation defaults: the paper config (a checkpoint saved before a
# field existed, and a .pth that has no config at all, get these).
_PAPER = paper.get_config()


def _user_errors() -> tuple[type, ...]:
    """Exceptions that mean bad input (printed as one line by the CLI, no traceback)."""
    from oclr_jax.config.loading import ConfigError
    from oclr_jax.data.benchmarks import BenchmarkError
    from oclr_jax.data.flow_io import FlowFileError
    from oclr_jax.data.masks_io import MaskFileError
    from oclr_jax.errors import UserError
    from oclr_jax.tta.dino_port import DinoCheckpointError

    errors = [BenchmarkError, ConfigError, FlowFileError, MaskFileError,
              inference.FlowMissingError, DinoCheckpointError, UserError]
    try:
        from oclr_jax.checkpoint import CheckpointError
        errors.append(CheckpointError)
    except ImportError:  # the checkpoint module pulls in the model; predictions need neither.
        pass
    return tuple(errors)


@dataclasses.dataclass
class EvalOptions:
    """Everything that decides an evaluation run.

    Attributes:
      dataset, data_dir: the benchmark and its folder.
      out_dir: where masks and results go (None: nothing is written).
      gaps, resolution, window, threshold: model input gaps, (H, W), frames per window,
        sigmoid threshold (from the checkpoint's config).
      upsample: 'bilinear' | 'nearest' (masks to the annotation size).
      unpad_flow: crop RAFT's padding off the flows before resizing.
      batch_size: windows per device call (rounded up to a multiple of the devices).
      sequences: None (official list), 'all', or names.
      flow_dir_name, annotation_dir, annotations_csv: layout overrides.
      predictions_dir: score saved masks instead of running a model.
      save_masks, save_vis: write palette PNGs / overlays.
      resume: reuse per-sequence results of an earlier run with the same settings.
      source: what produced the masks (checkpoint path), recorded in results.json.
      refine: optional `refine(record, labels) -> labels` applied before saving and scoring.
      progress: show a progress bar and per-sequence lines.
    """

    dataset: str
    data_dir: str
    out_dir: Optional[str] = None
    gaps: tuple[int, ...] = tuple(_PAPER.data.gaps)
    resolution: tuple[int, int] = tuple(_PAPER.data.resolution)
    window: int = _PAPER.eval.window
    threshold: float = _PAPER.eval.threshold
    upsample: str = _PAPER.eval.upsample
    unpad_flow: bool = _PAPER.eval.unpad_flow
    batch_size: int = _PAPER.eval.batch_size
    sequences: Any = None
    flow_dir_name: str = DEFAULT_FLOW_DIR
    annotation_dir: Optional[str] = None
    annotations_csv: Optional[str] = None
    predictions_dir: Optional[str] = None
    save_masks: bool = True
    save_vis: bool = False
    resume: bool = True
    source: str = ""
    refine: Optional[Refine] = None
    progress: bool = True

    def settings(self) -> dict:
        """The options that change per-sequence results (for the resume fingerprint)."""
        keep = ("dataset", "gaps", "resolution", "window", "threshold", "upsample", "unpad_flow",
                "flow_dir_name", "annotation_dir", "annotations_csv", "predictions_dir", "source")
        # Another data folder, or a checkpoint re-saved under the same path, must not reuse
        # old results (each sequence's own files are added per sequence in `evaluate`).
        return {k: getattr(self, k) for k in keep} | {
            "refine": repr(self.refine),
            "data_dir": os.path.abspath(self.data_dir),
            "source_files": eval_outputs.files_identity(self.source) if self.source else None}


def options_from_config(config, **kwargs) -> EvalOptions:
    """EvalOptions with the model/data/eval settings of an ml_collections config."""
    eval_config = {**_PAPER.eval.to_dict(), **config.get("eval", {})}
    values = dict(gaps=tuple(int(g) for g in config.data.gaps),
                  resolution=tuple(int(s) for s in config.data.resolution),
                  window=int(eval_config["window"]),
                  threshold=float(eval_config["threshold"]),
                  upsample=str(eval_config["upsample"]),
                  unpad_flow=bool(eval_config["unpad_flow"]),
                  batch_size=int(eval_config["batch_size"]))
    values.update({k: v for k, v in kwargs.items() if v is not None})
    return EvalOptions(**values)


# ----------------------------------------------------------------------------- one sequence

def assemble_prediction(prediction: inference.SequencePrediction, upsample: str
                        ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Per-window model outputs -> the sequence's saved label maps (and amodal layers).

    Each window's layers are resized to the annotation size, assigned to objects as the
    official code does before saving, and every frame is taken from its first window.
    Returns (labels (T, H, W) uint8, amodal (T, H, W, K) bool or None, and per window the
    (T, H, W, K) bool amodal layers in the model's layer order (empty without amodal)).
    """
    record = prediction.record
    size = record.annotation_size
    num_layers = prediction.num_layers
    labels, amodal, amodal_layers = [], [], []
    for w, indices in enumerate(prediction.windows):
        onehot = inference.labels_to_onehot(prediction.labels[w], num_layers)
        layers = inference.upsample_layers(onehot, size, upsample)  # (T, H, W, K)
        window_labels, label_of_layer = scoring.window_output_labels(record, indices, layers)
        labels.append(window_labels)
        if prediction.amodal_probs is not None:
            probs = inference.upsample_layers(prediction.amodal_probs[w], size, upsample)
            amodal_layers.append(probs)
            amodal.append(probs[..., _layers_by_label(label_of_layer)])
    labels = inference.stitch(prediction.windows, labels, record.num_frames)
    amodal_out = inference.stitch(prediction.windows, amodal, record.num_frames) if amodal \
        else None
    return labels, amodal_out, amodal_layers


def _layers_by_label(label_of_layer: Sequence[int]) -> list[int]:
    """Layer order for saving amodal masks: by output label, layers never shown last."""
    shown = sorted((label, k) for k, label in enumerate(label_of_layer) if label > 0)
    hidden = [k for k, label in enumerate(label_of_layer) if label == 0]
    return [k for _, k in shown] + hidden


def _finish_sequence(options: EvalOptions, record: SequenceRecord, labels: np.ndarray,
                     amodal: Optional[np.ndarray], num_layers: Optional[int], key: str,
                     extra: Optional[dict] = None) -> dict:
    flow_only_labels = labels
    if options.refine is not None:
        labels = options.refine(record, labels)
    if options.out_dir and options.save_masks and options.predictions_dir is None:
        eval_outputs.write_masks(options.out_dir, record, labels, amodal)
    if options.out_dir and options.save_vis:
        eval_outputs.write_overlays(options.out_dir, record, labels)
    windows = inference.cut_windows(record.num_frames, options.window)
    row = scoring.score_sequence(record, labels, amodal, windows, num_layers)
    row.update(extra or {})
    if options.refine is not None:  # the unrefined scores, reported beside the refined ones
        row["flow_only"] = scoring.score_sequence(record, flow_only_labels, amodal, windows,
                                                  num_layers)
    if options.out_dir:
        eval_outputs.save_cached_row(options.out_dir, row, key)
    return row


# ----------------------------------------------------------------------------- processes

def process_share(names: Sequence[str], index: int, count: int) -> list[str]:
    """The sequences process `index` of `count` evaluates: every count-th name from its index
    (round robin, so long and short sequences spread over processes)."""
    return list(names[index::count])


def gather_rows(rows: dict) -> dict:
    """Every process's per-sequence rows, merged (an all-gather of their JSON through JAX, so
    the processes need no shared file system).  With one process: `rows` itself."""
    if jax.process_count() == 1:
        return dict(rows)
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(eval_outputs._json_safe(rows)).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # (processes, max size)
    merged: dict = {}
    for size, blob in zip(sizes.reshape(-1), gathered):
        merged.update(json.loads(blob[:int(size)].tobytes().decode()))
    return merged


# ----------------------------------------------------------------------------- a dataset

def evaluate(options: EvalOptions, predict_fn: Optional[Callable[..., dict]] = None,
             params: Any = None, predictor: Optional[inference.WindowPredictor] = None
             ) -> dict:
    """Runs one evaluation.  Returns {'dataset', 'summary', 'sequences', 'options'}.

    With `options.predictions_dir` the saved masks are scored and no model is needed;
    otherwise `predict_fn` (and `params`) run on every window, or an already compiled
    `predictor` is reused.
    """
    from tqdm import tqdm

    if options.predictions_dir is None and predict_fn is None and predictor is None:
        raise ValueError("evaluate needs a predict_fn, a predictor or options.predictions_dir")
    model_mode = options.predictions_dir is None
    benchmark = Benchmark(options.dataset, options.data_dir,
                          gaps=options.gaps if model_mode else (),
                          sequences=options.sequences, flow_dir_name=options.flow_dir_name,
                          annotation_dir=options.annotation_dir,
                          annotations_csv=options.annotations_csv)
    settings = options.settings()
    # Several JAX processes (a pod): each evaluates its share on its local devices; the rows
    # are merged afterwards and process 0 writes the results.
    index, count = jax.process_index(), jax.process_count()
    mine = process_share(benchmark.sequences, index, count)
    rows: dict[str, dict] = {}
    keys: dict[str, str] = {}
    if options.out_dir:
        # Keyed by every option, the data folder, the checkpoint's files and the sequence's
        # own files (and saved masks): a cached row is reused only for the same inputs.
        for name in mine:
            files = benchmark.sequence_files(name)
            if options.predictions_dir:
                files += eval_outputs.files_identity(os.path.join(options.predictions_dir, name))
            keys[name] = eval_outputs.fingerprint(settings | {"sequence_files": files})
            cached = (eval_outputs.load_cached_row(options.out_dir, name, keys[name])
                      if options.resume else None)
            if cached is not None:
                rows[name] = cached
        if rows and options.progress:
            print(f"reused {len(rows)} sequences from {options.out_dir}/sequences (same data, "
                  "checkpoint and options); --no-resume to recompute", file=sys.stderr)
    todo = [n for n in mine if n not in rows]
    bar = tqdm(total=len(mine), initial=len(rows), unit="seq",
               desc=options.dataset if count == 1 else f"{options.dataset} [{index}/{count}]",
               disable=not options.progress)

    def done(row: dict) -> None:
        rows[row["sequence"]] = row
        bar.update(1)
        column = scoring.TABLE_COLUMNS[options.dataset][0]
        value = eval_outputs.format_value(row.get(column))
        bar.set_postfix_str(f"{row['sequence']} {column}={value}")

    try:  # the bar ends its line even when a sequence fails, so the error reads clearly
        records = (benchmark.read_sequence(n) for n in todo)
        if model_mode:
            if predictor is None:
                predictor = inference.WindowPredictor(predict_fn, options.batch_size, params,
                                                      options.threshold,
                                                      with_amodal=options.dataset == "synval")
            elif predictor.with_amodal != (options.dataset == "synval"):
                raise ValueError("the predictor must return amodal masks for synval (only)")
            for prediction in inference.predict_sequences(records, predictor, options.gaps,
                                                          options.resolution, options.window,
                                                          options.unpad_flow):
                labels, amodal, amodal_layers = assemble_prediction(prediction,
                                                                    options.upsample)
                extra = None
                if options.dataset == "synval" and prediction.order_logits is not None:
                    extra = scoring.synval_order_row(prediction.record, prediction.windows,
                                                     amodal_layers, prediction.order_logits)
                done(_finish_sequence(options, prediction.record, labels, amodal,
                                      prediction.num_layers, keys.get(prediction.record.name, ""),
                                      extra))
        else:
            for record in records:
                labels, amodal = eval_outputs.read_prediction_masks(options.predictions_dir, record)
                done(_finish_sequence(options, record, labels, amodal, None,
                                      keys.get(record.name, "")))
    finally:
        bar.close()
    rows = gather_rows(rows)
    ordered = [rows[n] for n in benchmark.sequences]
    results = {"dataset": options.dataset,
               "summary": scoring.summarize(options.dataset, ordered),
               "sequences": ordered,
               "options": {k: v for k, v in options.settings().items()} | {
                   "data_dir": os.path.abspath(options.data_dir),
                   "sequences": list(benchmark.sequences)}}
    if ordered and all("flow_only" in r for r in ordered):
        results["summary_flow_only"] = scoring.summarize(options.dataset,
                                                         [r["flow_only"] for r in ordered])
    if options.out_dir and index == 0:
        eval_outputs.write_results(options.out_dir, results)
    return results


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (extend it by adding arguments to the returned parser)."""
    parser = argparse.ArgumentParser(
        prog="python -m oclr_jax.eval",
        description="Evaluate OCLR on a benchmark (or score saved masks). Any config field "
                    "can be overridden with --config.section.field=value (e.g. "
                    "--config.eval.upsample=nearest).")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", required=True, help="the benchmark's root folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="oclr-jax checkpoint folder, training workdir, "
                                             "or official PyTorch .pth")
    source.add_argument("--predictions", help="score saved masks in the DAVIS layout "
                                              "(<dir>/<seq>/<frame>.png) instead of a model")
    parser.add_argument("--model-source", choices=("auto", "flax", "torch"), default="auto",
                        help="how to read --checkpoint (auto: .pth/.pt is PyTorch)")
    parser.add_argument("--out", help="output folder (default: eval_results/<dataset>)")
    parser.add_argument("--save-vis", action="store_true", help="also write overlay JPEGs")
    parser.add_argument("--batch-size", type=int, help="windows per step (default: "
                        "config.eval.batch_size, rounded up to a multiple of the devices)")
    parser.add_argument("--flow-dir-name", default=DEFAULT_FLOW_DIR,
                        help="flow folder per gap relative to --data-dir (default %(default)s)")
    parser.add_argument("--sequences", help="comma-separated names, or 'all' (default: the "
                                            "official evaluation list)")
    parser.add_argument("--annotation-dir", help="annotation folder relative to --data-dir")
    parser.add_argument("--annotations-csv", help="MoCA box CSV (default: "
                                                  "<data-dir>/annotations.csv)")
    parser.add_argument("--config", default="paper",
                        help="config for --predictions runs (window length); with "
                             "--checkpoint its own config is used")
    parser.add_argument("--no-resume", action="store_true",
                        help="recompute sequences already scored in --out")
    parser.add_argument("--tta", choices=("none", "dino"), default="none",
                        help="refine the masks with RGB test-time adaptation (DINO ViT-S/8, "
                             "settings config.tta, docs/tta.md); flow-only scores are "
                             "reported beside the adapted ones")
    sharding.add_distributed_flags(parser, "each process evaluates a share of the sequences")
    parser.add_argument("--dino-checkpoint", help="DINO ViT-S/8 weights for --tta dino, e.g. "
                                                  "dino_deitsmall8_pretrain.pth (needs torch)")
    return parser


def load_run_config(args, overrides: Sequence[str]):
    """(config, predict_fn, params, source) for the parsed command line."""
    from oclr_jax.config.loading import apply_override, load_config

    defaults = paper.get_config()  # a fresh copy: overrides below edit it in place
    if args.predictions:
        if not os.path.isdir(args.predictions):
            raise UserError(f"{args.predictions}: --predictions folder does not exist")
        config = load_config(args.config, overrides)
        check_config(config, ("data", "eval"))
        return config, None, None, os.path.abspath(args.predictions)
    from oclr_jax.checkpoint import CheckpointError, load_checkpoint, reads_as_torch

    model, params, config = load_checkpoint(args.checkpoint, model_source=args.model_source)
    if "eval" not in config:
        config.eval = defaults.eval
    for key, value in defaults.eval.items():  # fields added after the checkpoint was saved.
        if key not in config.eval:
            config.eval[key] = value
    if "tta" not in config:  # test-time adaptation settings are not part of a checkpoint.
        config.tta = defaults.tta
    for assignment in overrides:
        apply_override(config, assignment)
    check_config(config, ("model", "data", "eval"))
    if reads_as_torch(args.checkpoint, args.model_source):
        # A state dict records the architecture only: say which data settings were assumed.
        print(f"note: {args.checkpoint} holds no data settings; evaluating with the paper's "
              f"unless overridden: resolution {tuple(config.data.resolution)}, window "
              f"{config.eval.window}, gaps {tuple(config.data.gaps)} (e.g. "
              f"--config.data.resolution='(64, 112)' --config.eval.window=8)", file=sys.stderr)
    expected = 2 * len(config.data.gaps)
    if model.in_channels is not None and model.in_channels != expected:
        raise CheckpointError(
            f"{args.checkpoint}: the model reads {model.in_channels} flow channels but "
            f"config.data.gaps={tuple(config.data.gaps)} gives {expected}")
    return config, inference.model_predict_fn(model), params, os.path.abspath(args.checkpoint)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from oclr_jax.config.loading import split_config_overrides

    overrides, rest = split_config_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(rest)
    if args.tta == "dino" and not args.dino_checkpoint:
        parser.error("--tta dino needs --dino-checkpoint PATH (DINO ViT-S/8 .pth)")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    user_errors = _user_errors()
    out_dir = args.out or os.path.join("eval_results", args.dataset)
    sharding.initialize_distributed(args)
    try:
        # Before any work: the output folder is new or an earlier eval output.
        eval_outputs.claim_output_dir(out_dir)
        config, predict_fn, params, source = load_run_config(args, overrides)
        refine = None
        if args.tta == "dino":
            from oclr_jax.tta.eval_hook import TTARefiner, load_tta_vit_params

            refine = TTARefiner(load_tta_vit_params(args.dino_checkpoint, config.tta),
                                config.tta, checkpoint=os.path.abspath(args.dino_checkpoint),
                                progress=True)
        sequences = args.sequences
        if sequences and sequences != "all":
            sequences = [s for s in sequences.split(",") if s]
        options = options_from_config(
            config, dataset=args.dataset, data_dir=args.data_dir,
            out_dir=out_dir,
            batch_size=args.batch_size, sequences=sequences, flow_dir_name=args.flow_dir_name,
            annotation_dir=args.annotation_dir, annotations_csv=args.annotations_csv,
            predictions_dir=args.predictions, save_vis=args.save_vis,
            resume=not args.no_resume, source=source, refine=refine)
        eval_outputs.mark_output_dir(out_dir)
        results = evaluate(options, predict_fn, params)
    except user_errors as e:  # bad data, files, configs, checkpoints: no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(eval_outputs.format_table(args.dataset, results["sequences"], results["summary"]))
    if "summary_flow_only" in results:
        print("flow only: " + eval_outputs.format_summary(args.dataset,
                                                          results["summary_flow_only"]))
        print("with TTA:  " + eval_outputs.format_summary(args.dataset, results["summary"]))
    else:
        print(eval_outputs.format_summary(args.dataset, results["summary"]))
    print(f"results: {os.path.join(options.out_dir, 'results.json')}")
    return 0

