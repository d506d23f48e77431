"""Per-dataset scoring of predicted masks: which layer becomes which object, and the tables.

Predictions arrive as per-window layers at the annotation size (model mode) or as saved label
maps (`--predictions`).  The official code assigns the predicted layers of each window to the
ground-truth objects by the frame-averaged IoU before saving (`hungarian_matcher_iou`), and the
saved masks are what the official evaluators score; `window_output_labels` does the same:

- 'merged' datasets (SegTrackv2, FBMS-59): every layer is foreground (label 1).
- 'best_layer' datasets (DAVIS2016, MoCA): the layer assigned to the object (label 1).
- 'layers' datasets (DAVIS2017-motion, Syn-Val): layer assigned to object i gets label i+1;
  layers left over get the next free labels.

`score_sequence` then applies each benchmark's evaluator (see `oclr_jax.eval.metrics`) and
`summarize` averages the way each benchmark reports; `RULES` holds both per benchmark.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from oclr_jax.compose import ground_truth_modal
from oclr_jax.data.benchmarks import LAYOUTS, SequenceRecord
from oclr_jax.eval import metrics

VOID_ID = 255


# ----------------------------------------------------------------------------- ground truth

def num_objects(record: SequenceRecord) -> int:
    """Objects of a sequence: the largest id of its first annotation (the DAVIS 2017 rule)."""
    if record.labels is not None:
        if record.dataset != "davis2017m":
            return 1
        first = record.labels[0]
        ids = first[first != VOID_ID]
        return int(ids.max()) if ids.size else 0
    if record.amodal is not None:
        return record.amodal.shape[-1]
    return 1


def ground_truth_layers(record: SequenceRecord, annotation_rows: Sequence[int]
                        ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Ground-truth object masks of some annotated frames (rows of the annotation arrays).

    Returns (gt (N, O, H, W) bool, void (N, H, W) bool or None).  Syn-Val objects are the
    visible (modal) masks; MoCA objects are the filled boxes.
    """
    rows = list(annotation_rows)
    if record.labels is not None:
        labels = record.labels[rows]
        if record.dataset != "davis2017m":
            return (labels != 0)[:, None], None
        void = labels == VOID_ID
        gt = np.stack([labels == k for k in range(1, num_objects(record) + 1)], axis=1) \
            if num_objects(record) else np.zeros((len(rows), 0, *labels.shape[1:]), bool)
        return gt, (void if void.any() else None)
    if record.amodal is not None:
        modal = ground_truth_modal(record.amodal[rows])  # (N, H, W, O)
        return np.moveaxis(modal, -1, 1), None
    size = record.annotation_size
    boxes = [metrics.box_to_mask(record.boxes[r], size) for r in rows]
    return np.stack(boxes)[:, None], None


# ----------------------------------------------------------------------------- layers -> labels

def window_output_labels(record: SequenceRecord, indices: Sequence[int],
                         layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The saved label maps of one window.

    Args:
      record: the sequence (its ground truth decides the layer assignment).
      indices: (T,) frame index of each window position.
      layers: (T, H, W, K) bool modal layers at the annotation size.
    Returns:
      (labels (T, H, W) uint8, label_of_layer (K,) int: the label each layer was given, 0
      for a layer that is not saved).
    """
    output = LAYOUTS[record.dataset].output
    num_layers = layers.shape[-1]
    if output == "merged":
        return layers.any(axis=-1).astype(np.uint8), np.ones(num_layers, np.int64)
    row_of_frame = {frame: row for row, frame in enumerate(record.annotated)}
    positions = [p for p, f in enumerate(indices) if int(f) in row_of_frame]
    object_of_layer = np.full(num_layers, -1)
    num_gt = 0
    if positions:
        gt, void = ground_truth_layers(record, [row_of_frame[int(indices[p])] for p in positions])
        num_gt = gt.shape[1]
        pred = np.moveaxis(layers[positions], -1, 1)  # (N, K, H, W)
        if num_gt:
            object_of_layer = metrics.match_layers_to_objects(pred, gt, void)
    if output == "best_layer":
        chosen = np.flatnonzero(object_of_layer == 0)
        layer = int(chosen[0]) if chosen.size else 0  # no annotation here: the first layer.
        label_of_layer = np.zeros(num_layers, np.int64)
        label_of_layer[layer] = 1
        return layers[..., layer].astype(np.uint8), label_of_layer
    label_of_layer = np.zeros(num_layers, np.int64)
    next_free = max(num_gt, 0) + 1
    for k in range(num_layers):
        if object_of_layer[k] >= 0:
            label_of_layer[k] = object_of_layer[k] + 1
        else:
            label_of_layer[k], next_free = next_free, next_free + 1
    out = np.zeros(layers.shape[:-1], np.uint8)
    for k in range(num_layers):
        out[layers[..., k]] = label_of_layer[k]
    return out, label_of_layer


# ----------------------------------------------------------------------------- scoring

def _stats(prefix: str, values: np.ndarray) -> dict:
    mean, recall, decay = metrics.db_statistics(values)
    return {f"{prefix}_mean": mean, f"{prefix}_recall": recall, f"{prefix}_decay": decay}


def official_window_j(pred_layers: np.ndarray, gt_layers: np.ndarray,
                      windows: Sequence[np.ndarray]) -> np.ndarray:
    """Per-frame J of the official code: window Hungarian, repeats averaged as its meter does.

    pred_layers (T, P, H, W), gt_layers (T, O, H, W) bool -> (T,) float.
    """
    values: dict[int, float] = {}
    for indices in windows:
        per_frame = metrics.window_hungarian_iou(pred_layers[indices], gt_layers[indices])
        for frame, value in zip(indices.tolist(), per_frame.tolist()):
            values[frame] = value if frame not in values else (values[frame] + value) / 2
    return np.array([values[t] for t in range(len(pred_layers))])


# ----------------------------------------------------------------------------- per benchmark
# Each benchmark's evaluator: a function scoring one sequence's saved label maps, a function
# averaging the rows as that benchmark reports, and the numbers the tables show.

def _score_davis2016(record, labels, amodal, windows, num_layers) -> dict:
    """The DAVIS 2016 evaluator: J and F of the single object, per annotated frame."""
    j, f = metrics.davis2016_sequence(labels != 0, record.labels != 0)
    return {**_stats("J", j), **_stats("F", f), "frames": len(j)}


def _score_merged(record, labels, amodal, windows, num_layers) -> dict:
    """SegTrackv2 / FBMS-59: every predicted layer is one foreground against all objects."""
    pred = metrics.merged_foreground(labels[list(record.annotated)])
    gt = record.labels != 0
    return {**_stats("J", metrics.region_iou(pred, gt)), **_stats("F", metrics.boundary_f(pred, gt))}


def _score_davis2017m(record, labels, amodal, windows, num_layers) -> dict:
    """The DAVIS 2017 unsupervised evaluator per object, plus the official code's window J."""
    gt, void = ground_truth_layers(record, range(len(record.annotated)))
    pred = metrics.labels_to_layers(labels)  # (P, T, H, W): ids 1..max, as the evaluator
    j, f, _ = metrics.davis2017_unsupervised(pred, np.moveaxis(gt, 1, 0), void)
    objects = [{"object": o + 1, **_stats("J", j[o]), **_stats("F", f[o])} for o in range(len(j))]
    row: dict = {key: float(np.mean([o[key] for o in objects])) if objects else float("nan")
                 for key in _JF_KEYS}
    row.update(num_objects=len(objects), objects=objects)
    if windows is not None:
        row["J_official"] = float(official_window_j(np.moveaxis(pred, 0, 1), gt, windows).mean())
    return row


def _score_moca(record, labels, amodal, windows, num_layers) -> dict:
    """MoCA: the box around the predicted mask against the annotated box, success rates."""
    ious = []
    for r, frame in enumerate(record.annotated):
        box = metrics.moca_box_from_mask(labels[frame] != 0, record.image_size)
        ious.append(0.0 if box is None else metrics.box_iou(record.boxes[r], box))
    counts = metrics.success_counts(ious)
    return {"box_iou_mean": float(np.mean(ious)),
            **{f"SR_{t}": c / len(ious) for t, c in zip(metrics.MOCA_THRESHOLDS, counts)},
            "success_counts": counts.tolist()}


def _score_synval(record, labels, amodal, windows, num_layers) -> dict:
    """Syn-Val: the official per-window Hungarian J of modal (and amodal) layers."""
    gt_amodal = np.moveaxis(record.amodal, -1, 1)  # (T, O, H, W)
    gt_modal = np.moveaxis(ground_truth_modal(record.amodal), -1, 1)
    pred = np.moveaxis(metrics.labels_to_layers(labels, num_layers), 0, 1)  # (T, P, H, W)
    row = {"J_modal": float(metrics.window_hungarian_iou(pred, gt_modal).mean()),
           "num_objects": int(record.amodal.shape[-1])}
    if amodal is not None:
        pred_amodal = np.moveaxis(amodal, -1, 1)
        row["J_amodal"] = float(metrics.window_hungarian_iou(pred_amodal, gt_amodal).mean())
    return row


def _mean(rows: Sequence[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
    return float(np.mean(values)) if values else float("nan")


def _pooled(rows: Sequence[dict], key: str) -> float:
    """Frame-pooled mean (every scored frame weighs the same)."""
    pairs = [(r[key], r["frames"]) for r in rows if key in r]
    total = sum(n for _, n in pairs)
    return float(sum(v * n for v, n in pairs) / total) if total else float("nan")


def _summarize_sequence_means(rows: Sequence[dict]) -> dict:
    """DAVIS 2016: the mean of per-sequence means."""
    summary = {k: _mean(rows, k) for k in _JF_KEYS}
    summary["JF_mean"] = (summary["J_mean"] + summary["F_mean"]) / 2
    return summary


def _summarize_merged(rows: Sequence[dict]) -> dict:
    """SegTrackv2 / FBMS-59: per-sequence means, and the frame-pooled ones beside them."""
    return {**_summarize_sequence_means(rows), "J_framewise": _pooled(rows, "J_mean"),
            "F_framewise": _pooled(rows, "F_mean")}


def _summarize_davis2017m(rows: Sequence[dict]) -> dict:
    """The evaluator averages objects; the official code weights sequences by object count."""
    objects = [o for r in rows for o in r["objects"]]
    summary: dict = {"objects": len(objects), **{k: _mean(objects, k) for k in _JF_KEYS}}
    summary["JF_mean"] = (summary["J_mean"] + summary["F_mean"]) / 2
    weighted = [(r["J_official"], r["num_objects"]) for r in rows if "J_official" in r]
    if weighted and sum(n for _, n in weighted):
        # The official code weights each sequence by its object count (its table of
        # 2x / 3x / 5x sequences) to turn per-sequence IoU into an object average.
        summary["J_official_object_weighted"] = float(
            sum(v * n for v, n in weighted) / sum(n for _, n in weighted))
    return summary


def _summarize_moca(rows: Sequence[dict]) -> dict:
    """Success rates over all annotated frames; the box IoU as a mean over videos."""
    counts = np.sum([r["success_counts"] for r in rows], axis=0)
    rates = counts / max(int(sum(r["frames"] for r in rows)), 1)
    summary = {f"SR_{t}": float(v) for t, v in zip(metrics.MOCA_THRESHOLDS, rates)}
    summary.update(SR_mean=float(np.mean(rates)), box_iou_mean=_mean(rows, "box_iou_mean"))
    return summary


def _summarize_synval(rows: Sequence[dict]) -> dict:
    """The official 'framewise' mean."""
    summary = {"J_modal": _pooled(rows, "J_modal")}
    if any("J_amodal" in r for r in rows):
        summary["J_amodal"] = _pooled(rows, "J_amodal")
    summary.update(synval_breakdown(rows))
    return summary


def synval_order_row(record: SequenceRecord, windows: Sequence[np.ndarray],
                     amodal_layers: Sequence[np.ndarray], order_logits: np.ndarray) -> dict:
    """Order scores of one Syn-Val sequence from its per-window model outputs.

    Args:
      record: the sequence (its amodal annotations, a higher channel in front).
      windows: the frame indices of each window.
      amodal_layers: per window, (T, H, W, K) bool amodal layers at the annotation size.
      order_logits: (W, K) order values per window (smaller = nearer).
    Returns:
      {'order_right', 'order_pairs'} summed over windows (`metrics.order_pair_counts`), and
      'order_logits' (W x K list).
    """
    row_of_frame = {frame: row for row, frame in enumerate(record.annotated)}
    right = pairs = 0
    for indices, layers, order in zip(windows, amodal_layers, order_logits):
        positions = [p for p, f in enumerate(indices) if int(f) in row_of_frame]
        if not positions:
            continue
        gt = np.moveaxis(record.amodal[[row_of_frame[int(indices[p])] for p in positions]], -1, 1)
        pred = np.moveaxis(np.asarray(layers)[positions], -1, 1)
        r, n = metrics.order_pair_counts(pred, order, gt)
        right, pairs = right + r, pairs + n
    return {"order_right": right, "order_pairs": pairs,
            "order_logits": np.asarray(order_logits, np.float64).round(6).tolist()}


def synval_breakdown(rows: Sequence[dict]) -> dict:
    """Syn-Val scores by object count, the order accuracy over overlapping pairs, and how
    much the order logits vary between windows (0 when the order head ignores its input)."""
    out: dict = {}
    for count in sorted({r["num_objects"] for r in rows if "num_objects" in r}):
        subset = [r for r in rows if r.get("num_objects") == count]
        out[f"J_modal_{count}obj"] = _pooled(subset, "J_modal")
        if any("J_amodal" in r for r in subset):
            out[f"J_amodal_{count}obj"] = _pooled(subset, "J_amodal")
    scored = [r for r in rows if "order_pairs" in r]
    if scored:
        pairs = sum(r["order_pairs"] for r in scored)
        out["order_pairs"] = pairs
        out["order_accuracy"] = (sum(r["order_right"] for r in scored) / pairs if pairs
                                 else float("nan"))
        logits = np.concatenate([np.asarray(r["order_logits"], np.float64).reshape(
            -1, np.shape(r["order_logits"])[-1]) for r in scored if r.get("order_logits")])
        if len(logits) > 1:
            out["order_logit_std"] = float(logits.std(axis=0).mean())
    return out


_JF_KEYS = ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")
ScoreFn = Callable[[SequenceRecord, np.ndarray, Optional[np.ndarray],
                    Optional[Sequence[np.ndarray]], int], dict]


@dataclasses.dataclass(frozen=True)
class BenchmarkRules:
    """How one benchmark is scored and reported.

    Attributes:
      score: `(record, labels, amodal, windows, num_layers) -> row` for one sequence.
      summarize: `rows -> summary`, averaged as the benchmark reports.
      headline: the summary number the paper's tables show.
      columns: the per-sequence columns of the printed table.
    """

    score: ScoreFn
    summarize: Callable[[Sequence[dict]], dict]
    headline: str
    columns: tuple[str, ...]


RULES: Mapping[str, BenchmarkRules] = {
    "davis2016": BenchmarkRules(_score_davis2016, _summarize_sequence_means, "J_mean", _JF_KEYS),
    "davis2017m": BenchmarkRules(_score_davis2017m, _summarize_davis2017m, "JF_mean",
                                 _JF_KEYS + ("J_official",)),
    "segtrackv2": BenchmarkRules(_score_merged, _summarize_merged, "J_mean", ("J_mean", "F_mean")),
    "fbms59": BenchmarkRules(_score_merged, _summarize_merged, "J_mean", ("J_mean", "F_mean")),
    "moca": BenchmarkRules(_score_moca, _summarize_moca, "SR_mean",
                           ("box_iou_mean",) + tuple(f"SR_{t}" for t in metrics.MOCA_THRESHOLDS)),
    "synval": BenchmarkRules(_score_synval, _summarize_synval, "J_modal",
                             ("J_modal", "J_amodal", "num_objects", "order_right", "order_pairs")),
}
HEADLINE = {name: rules.headline for name, rules in RULES.items()}
TABLE_COLUMNS = {name: rules.columns for name, rules in RULES.items()}


# ----------------------------------------------------------------------------- entry points

def score_sequence(record: SequenceRecord, labels: np.ndarray,
                   amodal: Optional[np.ndarray] = None,
                   windows: Optional[Sequence[np.ndarray]] = None,
                   num_layers: Optional[int] = None) -> dict:
    """Scores one sequence's predicted label maps with its benchmark's evaluator (`RULES`).

    Args:
      record: the sequence with its annotations.
      labels: (T, H, W) uint8 predicted label maps at the annotation size (0 background).
      amodal: (T, H, W, K) bool amodal masks (Syn-Val), or None.
      windows: the official windows (for DAVIS2017-motion's official-code J).
      num_layers: the model's layers K (saved masks: None, the largest label is used).
    Returns:
      A flat dict of numbers for the table (plus 'objects' for DAVIS2017-motion).
    """
    dataset = record.dataset
    if dataset not in RULES:
        raise ValueError(f"unknown dataset {dataset!r}")
    # Syn-Val layers: every label present and at least the model's K (a layer never visible
    # is still an empty prediction in the official per-window J).
    num_layers = max(num_layers or 0, int(labels.max(initial=0)))
    if labels.shape[0] != record.num_frames or (
            dataset != "moca" and labels.shape[1:] != tuple(record.annotation_size)):
        raise ValueError(f"{record.name}: predictions of shape {labels.shape} do not match "
                         f"{record.num_frames} frames of {record.annotation_size}")
    row: dict = {"sequence": record.name, "frames": len(record.annotated)}
    row.update(RULES[dataset].score(record, labels, amodal, windows, num_layers))
    return row


def summarize(dataset: str, rows: Sequence[dict]) -> dict:
    """Dataset-level numbers from per-sequence rows, as each benchmark reports them."""
    summary: dict = {"sequences": len(rows), "frames": int(sum(r["frames"] for r in rows))}
    summary.update(RULES[dataset].summarize(rows))
    return summary
