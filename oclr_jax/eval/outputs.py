"""What `python -m oclr_jax.eval` writes: masks, overlays, per-sequence cache, tables, results.

Layout of an output folder::

    OUT/masks/<seq>/<frame>.png       indexed palette PNGs (DAVIS layout: point the official
                                      DAVIS evaluators' results path at OUT/masks)
    OUT/masks/<seq>/<k>_<frame>.png   Syn-Val only: amodal mask of layer k (0/255)
    OUT/vis/<seq>/<frame>.jpg         overlays (--save-vis)
    OUT/sequences/<seq>.json          per-sequence scores; a rerun with the same settings
                                      reuses them (resume)
    OUT/results.json, OUT/results.csv per-sequence rows and the dataset summary

Every file is written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from typing import Optional, Sequence

import cv2
import numpy as np

from oclr_jax import resample
from oclr_jax.atomic import atomic_write_bytes, atomic_write_text
from oclr_jax.data import masks_io
from oclr_jax.data.benchmarks import LAYOUTS, SequenceRecord
from oclr_jax.eval import scoring


def _json_safe(value):
    """NaN/inf become None so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def palette_for(dataset: str) -> np.ndarray:
    """White foreground for single-object outputs, the DAVIS palette for layers."""
    return masks_io.davis_palette() if LAYOUTS[dataset].output == "layers" \
        else masks_io.binary_palette()


# ----------------------------------------------------------------------------- masks

def write_masks(out_dir: str, record: SequenceRecord, labels: np.ndarray,
                amodal: Optional[np.ndarray] = None) -> None:
    """Saves (T, H, W) label maps (and Syn-Val amodal layers (T, H, W, K)) of one sequence."""
    folder = os.path.join(out_dir, "masks", record.name)
    palette = palette_for(record.dataset)
    for t, frame in enumerate(record.frame_names):
        masks_io.write_indexed_png(os.path.join(folder, frame + ".png"), labels[t], palette)
        if amodal is not None:
            for k in range(amodal.shape[-1]):
                masks_io.write_binary_png(os.path.join(folder, f"{k + 1}_{frame}.png"),
                                          amodal[t, ..., k])


def read_prediction_masks(pred_dir: str, record: SequenceRecord
                          ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Saved masks of one sequence in the DAVIS layout `<pred_dir>/<seq>/<frame>.png`.

    Sparse benchmarks read only their annotated frames (others stay 0).  Syn-Val also reads
    amodal layers `<k>_<frame>.png` when present.  Returns (labels (T, H, W) uint8, amodal).
    """
    folder = os.path.join(pred_dir, record.name)
    if not os.path.isdir(folder):
        raise masks_io.MaskFileError(f"{folder}: no predicted masks for sequence {record.name!r}")
    frames = record.annotated if LAYOUTS[record.dataset].sparse else range(record.num_frames)
    labels = None
    for t in frames:
        path = os.path.join(folder, record.frame_names[t] + ".png")
        frame_labels = masks_io.read_label_png(path)
        if labels is None:
            labels = np.zeros((record.num_frames, *frame_labels.shape), np.uint8)
        if frame_labels.shape != labels.shape[1:]:
            raise masks_io.MaskFileError(f"{path}: size {frame_labels.shape} differs from the "
                                         f"sequence's other masks {labels.shape[1:]}")
        labels[t] = frame_labels
    if record.dataset != "moca" and labels.shape[1:] != tuple(record.annotation_size):
        raise masks_io.MaskFileError(
            f"{folder}: masks are {labels.shape[1:]} but the annotations are "
            f"{tuple(record.annotation_size)}; save predictions at the annotation size")
    amodal = None
    if record.dataset == "synval":
        first = record.frame_names[0]
        count = 0
        while os.path.isfile(os.path.join(folder, f"{count + 1}_{first}.png")):
            count += 1
        if count:
            amodal = np.stack([np.stack([masks_io.read_binary_png(
                os.path.join(folder, f"{k}_{frame}.png")) for k in range(1, count + 1)], -1)
                for frame in record.frame_names])
    return labels, amodal


def write_overlays(out_dir: str, record: SequenceRecord, labels: np.ndarray) -> None:
    """Frames blended half-and-half with the mask colours, as JPEGs under OUT/vis."""
    palette = palette_for(record.dataset)[:, ::-1].astype(np.float32)  # BGR for OpenCV.
    folder = os.path.join(out_dir, "vis", record.name)
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(record.frame_names):
        image = cv2.imread(record.image_paths[t], cv2.IMREAD_COLOR)
        if image is None:
            raise masks_io.MaskFileError(f"{record.image_paths[t]}: cannot read frame image")
        frame_labels = labels[t]
        frame_labels = resample.opencv_nearest(frame_labels, image.shape[:2])
        colour = palette[frame_labels]
        blended = np.where(frame_labels[..., None] > 0, 0.5 * image + 0.5 * colour, image)
        ok, buffer = cv2.imencode(".jpg", blended.astype(np.uint8))
        if not ok:
            raise ValueError(f"cannot encode overlay of {record.name}/{frame}")
        atomic_write_bytes(os.path.join(folder, frame + ".jpg"), buffer.tobytes())


# ----------------------------------------------------------------------------- cache

OUTPUT_MARKER = ".oclr_eval_output"


def _is_eval_output(folder: str) -> bool:
    """Holds eval's marker, or `results.json` or `sequences/` of a run made before markers."""
    return (os.path.exists(os.path.join(folder, OUTPUT_MARKER))
            or os.path.isfile(os.path.join(folder, "results.json"))
            or os.path.isdir(os.path.join(folder, "sequences")))


def claim_output_dir(out_dir: str) -> None:
    """Checks `--out` before any work (`mark_output_dir` marks it when the work starts).

    eval writes into a new folder or one holding an earlier eval output (the marker, or
    `results.json` or `sequences/` of a run made before markers existed); it refuses a file,
    an unwritable place, the working directory or one of its parents, or a folder of other
    files, whose masks it would overwrite (`errors.check_output_dir`).
    """
    from oclr_jax.errors import check_output_dir

    check_output_dir(out_dir, "--out", OUTPUT_MARKER, owned=_is_eval_output)


def mark_output_dir(out_dir: str) -> None:
    """Marks `out_dir` as eval's (after `claim_output_dir`, when the work starts)."""
    from oclr_jax.atomic import atomic_write_text

    if not os.path.exists(os.path.join(out_dir, OUTPUT_MARKER)):
        atomic_write_text(os.path.join(out_dir, OUTPUT_MARKER),
                          "written by python -m oclr_jax.eval; its results live here\n")


def files_identity(path: str, limit: int = 20000) -> list:
    """(relative path, size, mtime_ns) of a file, or of every file under a folder: what a
    cached result was computed from.  Stat only; at most `limit` files."""
    if os.path.isfile(path):
        stat = os.stat(path)
        return [(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)]
    found = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(folder, name))
            found.append((os.path.relpath(os.path.join(folder, name), path), stat.st_size,
                          stat.st_mtime_ns))
            if len(found) >= limit:
                return found
    return found


def fingerprint(settings: dict) -> str:
    """A short hash of everything that changes a sequence's result."""
    text = json.dumps(_json_safe(settings), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_cached_row(out_dir: str, name: str, key: str) -> Optional[dict]:
    path = os.path.join(out_dir, "sequences", name + ".json")
    try:
        with open(path) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        return None
    if cached.get("fingerprint") != key:
        return None
    return _nan_back(cached["row"])


def _nan_back(value):
    if isinstance(value, dict):
        return {k: _nan_back(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_back(v) for v in value]
    return float("nan") if value is None else value


def save_cached_row(out_dir: str, row: dict, key: str) -> None:
    path = os.path.join(out_dir, "sequences", row["sequence"] + ".json")
    atomic_write_text(path, json.dumps(_json_safe({"fingerprint": key, "row": row}), indent=1))


# ----------------------------------------------------------------------------- tables

def format_value(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.4f}"


def table_columns(dataset: str) -> tuple[str, ...]:
    return scoring.TABLE_COLUMNS[dataset] + ("frames",)


def summary_as_row(dataset: str, summary: dict) -> dict:
    row = dict(summary, sequence="ALL")
    if dataset == "davis2017m" and "J_official_object_weighted" in summary:
        row["J_official"] = summary["J_official_object_weighted"]
    return row


def format_table(dataset: str, rows: Sequence[dict], summary: dict) -> str:
    """A fixed-width text table: one line per sequence, then the dataset line."""
    columns = table_columns(dataset)
    all_rows = list(rows) + [summary_as_row(dataset, summary)]
    width = max([8] + [len(r["sequence"]) for r in all_rows])
    col_width = max(9, max(len(c) for c in columns) + 1)
    header = "sequence".ljust(width) + "".join(c.rjust(col_width) for c in columns)
    lines = [header, "-" * len(header)]
    for i, row in enumerate(all_rows):
        if i == len(rows):
            lines.append("-" * len(header))
        lines.append(row["sequence"].ljust(width)
                     + "".join(format_value(row.get(c)).rjust(col_width) for c in columns))
    return "\n".join(lines)


def format_summary(dataset: str, summary: dict) -> str:
    skip = {"sequences", "frames", "objects"}
    parts = [f"{k}={format_value(v)}" for k, v in summary.items() if k not in skip]
    counts = f"{summary['sequences']} sequences, {summary['frames']} frames"
    if "objects" in summary:
        counts += f", {summary['objects']} objects"
    return f"{dataset} ({counts}): " + "  ".join(parts)


def write_results(out_dir: str, results: dict) -> None:
    """results.json (everything) and results.csv (per-sequence rows + an ALL row)."""
    atomic_write_text(os.path.join(out_dir, "results.json"),
                      json.dumps(_json_safe(results), indent=2))
    dataset = results["dataset"]
    columns = ("sequence",) + table_columns(dataset)
    if dataset == "davis2017m":
        columns += ("num_objects",)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in list(results["sequences"]) + [summary_as_row(dataset, results["summary"])]:
        writer.writerow([_csv_value(row.get(c)) for c in columns])
    atomic_write_text(os.path.join(out_dir, "results.csv"), buffer.getvalue())


def _csv_value(value):
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(value) else repr(float(value))
    return "" if value is None else value
