"""Readers for the evaluation benchmarks in their standard on-disk layouts.

`Benchmark(dataset, data_dir, ...)` is a plain-Python iterable of `SequenceRecord`s, one per
sequence, each with its frame list, its flow files per gap and its annotations as numpy arrays.
Layouts (relative to `data_dir`; the flow folders are those the official RAFT script writes,
`Flows_gap{gap}/<seq>/<frame>.flo`, overridable with `flow_dir_name`; `.npy` and 16-bit
KITTI `.png` flows are read too)::

    davis2016   JPEGImages/480p/<seq>/00000.jpg   Annotations/480p/<seq>/00000.png (binary)
                sequences: ImageSets/480p/val.txt, else the official 20 val sequences
    davis2017m  JPEGImages/480p/<seq>/00000.jpg   Annotations/480p/<seq>/00000.png (object ids,
                255 void; falls back to Annotations_unsupervised/480p, where the DAVIS-2017
                unsupervised evaluator reads the curated motion annotations)
                sequences: ImageSets/2017/val.txt, else the official 30 val sequences
    segtrackv2  JPEGImages/<seq>/*.jpg            Annotations/<seq>/*.png (binary, every frame)
    fbms59      JPEGImages/<seq>/*.jpg            Annotations/<seq>/*.png (binary, sparse: only
                the annotated frames have a file)
    moca        JPEGImages/<seq>/*.jpg            annotations.csv (boxes, Motion Grouping's
                MoCA_filter CSV or the original MoCA VIA CSV)
    synval      JPEGImages/<seq>/*.jpg            AmodalAnnotations/<seq>/<k>_<frame>.png
                (the official synthetic layout; the name starts with the object count)

SegTrackv2, FBMS-59 and MoCA use the preprocessed copies of Motion Grouping, which the
official OCLR code reads; their default sequence lists are the official evaluation lists.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import os
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from oclr_jax.data import masks_io, official_layout
from oclr_jax.data.benchmark_sequences import DAVIS2016_VAL, DAVIS2017_VAL, FBMS59_VAL, MOCA_VAL, SEGTRACKV2_VAL
from oclr_jax.data.flow_io import FLOW_EXTENSIONS
from oclr_jax.errors import UserError

DATASETS = ("davis2016", "davis2017m", "segtrackv2", "fbms59", "moca", "synval")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FLOW_DIR = "Flows_gap{gap}"

class BenchmarkError(UserError, ValueError):
    """A benchmark folder is not in the expected layout, or a file is missing or wrong."""


@dataclasses.dataclass(frozen=True)
class DatasetLayout:
    """Where a benchmark keeps its files and what its annotations are.

    Attributes:
      image_dir: frames folder relative to the data dir.
      annotation_dirs: candidate annotation folders (the first that exists is used).
      annotation_kind: 'labels' (object ids), 'binary', 'boxes' (MoCA CSV) or 'amodal'.
      sparse: only some frames are annotated (FBMS-59).
      image_set: file listing the default sequences, relative to the data dir, if any.
      default_sequences: the official list, or None for every sequence folder.
      output: how predicted layers become the saved masks: 'best_layer' (the layer matched
        to the single object), 'merged' (all layers as one foreground) or 'layers'.
    """

    image_dir: str
    annotation_dirs: tuple[str, ...]
    annotation_kind: str
    sparse: bool
    image_set: Optional[str]
    default_sequences: Optional[tuple[str, ...]]
    output: str


LAYOUTS: Mapping[str, DatasetLayout] = {
    "davis2016": DatasetLayout("JPEGImages/480p", ("Annotations/480p",), "binary", False,
                               "ImageSets/480p/val.txt", DAVIS2016_VAL, "best_layer"),
    "davis2017m": DatasetLayout("JPEGImages/480p",
                                ("Annotations/480p", "Annotations_unsupervised/480p"), "labels",
                                False, "ImageSets/2017/val.txt", DAVIS2017_VAL, "layers"),
    "segtrackv2": DatasetLayout("JPEGImages", ("Annotations",), "binary", False, None,
                                SEGTRACKV2_VAL, "merged"),
    "fbms59": DatasetLayout("JPEGImages", ("Annotations",), "binary", True, None, FBMS59_VAL,
                            "merged"),
    "moca": DatasetLayout("JPEGImages", (), "boxes", True, None, MOCA_VAL, "best_layer"),
    "synval": DatasetLayout("JPEGImages", ("AmodalAnnotations",), "amodal", False, None, None,
                            "layers"),
}


@dataclasses.dataclass(frozen=True)
class SequenceRecord:
    """One benchmark sequence.

    Attributes:
      dataset: one of DATASETS.
      name: sequence folder name.
      frame_names: frame names without extension, in temporal order (T of them).
      image_paths: (T) frame image paths.
      image_size: (H, W) of the frames.
      flow_dirs: gap -> the sequence's flow folder (missing folders are absent).
      flow_paths: gap -> (T) flow file per frame, None where the file does not exist.
      annotated: indices of the annotated frames (N of them), increasing.
      labels: (N, H, W) uint8 object ids (0 background, 255 void) for 'labels'/'binary'.
      boxes: (N, 4) float64 (x0, y0, x1, y1) in frame pixels for MoCA.
      box_motion: (N) MoCA motion class per box ('0' locomotion, '1' deformation, '2' static).
      amodal: (N, H, W, O) bool amodal masks for Syn-Val (higher channel in front).
    """

    dataset: str
    name: str
    frame_names: tuple[str, ...]
    image_paths: tuple[str, ...]
    image_size: tuple[int, int]
    flow_dirs: Mapping[int, str]
    flow_paths: Mapping[int, tuple[Optional[str], ...]]
    annotated: tuple[int, ...] = ()
    labels: Optional[np.ndarray] = None
    boxes: Optional[np.ndarray] = None
    box_motion: Optional[tuple[str, ...]] = None
    amodal: Optional[np.ndarray] = None

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    @property
    def annotation_size(self) -> tuple[int, int]:
        """(H, W) of the annotations: the size predictions are scored (and saved) at."""
        if self.labels is not None:
            return tuple(self.labels.shape[1:3])
        if self.amodal is not None:
            return tuple(self.amodal.shape[1:3])
        return self.image_size


def _list_files(folder: str, extensions: Sequence[str]) -> dict[str, str]:
    """stem -> path of the files in `folder` with one of `extensions` (earlier ones win)."""
    found: dict[str, str] = {}
    names = sorted(os.listdir(folder))
    for ext in extensions:
        for name in names:
            stem, e = os.path.splitext(name)
            if e.lower() == ext and stem not in found and not name.startswith("."):
                found[stem] = os.path.join(folder, name)
    return found


def _image_set_sequences(path: str) -> list[str]:
    """Sequence names of a DAVIS ImageSets file (2017: names; 2016: frame path pairs)."""
    names: list[str] = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            first = line.split()[0]
            name = first.strip("/").split("/")[-2] if "/" in first else first
            if name not in names:
                names.append(name)
    return names


def read_moca_csv(path: str) -> dict[str, dict[str, tuple[np.ndarray, str]]]:
    """MoCA boxes: sequence -> frame name -> ((x0, y0, x1, y1), motion class).

    Reads Motion Grouping's `annotations.csv` (`,file_list,spatial_coordinates,metadata`) and
    the original MoCA VIA export (`#` comment lines, then `metadata_id,file_list,...`).  Boxes
    are `[shape, x, y, w, h]` with x, y clipped at 0; rows without a box are skipped and an
    empty motion `{}` repeats the previous row's, as Motion Grouping's evaluator does.
    """
    if not os.path.isfile(path):
        raise BenchmarkError(f"{path}: MoCA annotation CSV does not exist")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    if not rows:
        raise BenchmarkError(f"{path}: empty MoCA annotation CSV")
    header = [h.strip() for h in rows[0]]
    try:
        col_file, col_box = header.index("file_list"), header.index("spatial_coordinates")
        col_meta = header.index("metadata")
    except ValueError as e:
        raise BenchmarkError(f"{path}: expected columns file_list, spatial_coordinates and "
                             f"metadata; found {header}") from e
    boxes: dict[str, dict[str, tuple[np.ndarray, str]]] = {}
    motion = "0"
    for line, row in sorted(enumerate(rows[1:], start=2), key=lambda r: r[1][col_file]):
        try:
            coords = ast.literal_eval(row[col_box])
            meta = ast.literal_eval(row[col_meta]) if row[col_meta].strip() else {}
        except (ValueError, SyntaxError, IndexError) as e:
            raise BenchmarkError(f"{path}: line {line}: cannot parse box or metadata: {row}") from e
        if not coords:
            continue
        if len(coords) != 5:
            raise BenchmarkError(f"{path}: line {line}: box {coords} is not [shape, x, y, w, h]")
        motion = str(meta.get("1", motion)) if meta else motion
        _, x, y, w, h = (float(v) for v in coords)
        x, y = max(x, 0.0), max(y, 0.0)
        parts = row[col_file].strip("[]\"' ").strip("/").split("/")
        if len(parts) < 2:
            raise BenchmarkError(
                f"{path}: line {line}: file {row[col_file]!r} is not /<seq>/<frame>")
        frame = os.path.splitext(parts[-1])[0]
        boxes.setdefault(parts[-2], {})[frame] = (np.array([x, y, x + w, y + h]), motion)
    return boxes


class Benchmark:
    """The sequences of one benchmark, read lazily one at a time.

    Args:
      dataset: one of DATASETS.
      data_dir: the benchmark's root folder.
      gaps: flow gaps whose folders must exist (their opposites are read too where present,
        for the missing-gap fallback); `()` for scoring saved masks without flows.
      sequences: None for the official/default list, 'all' for every sequence folder, or
        names.
      flow_dir_name: flow folder per gap relative to `data_dir`, with `{gap}`.
      annotation_dir: annotation folder relative to `data_dir` (default: the layout's).
      annotations_csv: MoCA box CSV (default `annotations.csv` or
        `Annotations/annotations.csv` in `data_dir`).
      load_annotations: False to skip reading ground truth.
    """

    def __init__(self, dataset: str, data_dir: str, gaps: Sequence[int] = (1, -1),
                 sequences=None, flow_dir_name: str = DEFAULT_FLOW_DIR,
                 annotation_dir: Optional[str] = None, annotations_csv: Optional[str] = None,
                 load_annotations: bool = True):
        if dataset not in LAYOUTS:
            raise BenchmarkError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
        self.dataset, self.layout = dataset, LAYOUTS[dataset]
        self.data_dir = data_dir
        self.load_annotations = load_annotations
        if not os.path.isdir(data_dir):
            raise BenchmarkError(f"{data_dir}: data dir does not exist")
        self.image_root = os.path.join(data_dir, self.layout.image_dir)
        if not os.path.isdir(self.image_root):
            raise BenchmarkError(
                f"{data_dir}: not a {dataset} folder: missing {self.layout.image_dir}/ (expected "
                f"{self.layout.image_dir}/<sequence>/<frame>.jpg; see oclr_jax/data/benchmarks.py)")
        self.annotation_root = self._find_annotation_root(annotation_dir) if load_annotations \
            else None
        self.moca_boxes = self.moca_csv = None
        if load_annotations and self.layout.annotation_kind == "boxes":
            self.moca_csv = self._find_moca_csv(annotations_csv)
            self.moca_boxes = read_moca_csv(self.moca_csv)
        self.flow_roots = self._find_flow_roots(gaps, flow_dir_name)
        self.sequences = self._select_sequences(sequences)

    def _find_annotation_root(self, annotation_dir: Optional[str]) -> Optional[str]:
        if self.layout.annotation_kind == "boxes":
            return None
        candidates = (annotation_dir,) if annotation_dir else self.layout.annotation_dirs
        for candidate in candidates:
            if os.path.isdir(os.path.join(self.data_dir, candidate)):
                return os.path.join(self.data_dir, candidate)
        raise BenchmarkError(f"{self.data_dir}: no {self.dataset} annotation folder (looked for "
                             f"{', '.join(c + '/' for c in candidates)})")

    def _find_moca_csv(self, annotations_csv: Optional[str]) -> str:
        candidates = [annotations_csv] if annotations_csv else [
            os.path.join(self.data_dir, "annotations.csv"),
            os.path.join(self.data_dir, "Annotations", "annotations.csv")]
        for candidate in candidates:
            if os.path.isfile(candidate):
                return candidate
        raise BenchmarkError(f"{self.data_dir}: no MoCA box annotations (looked for "
                             f"{', '.join(candidates)}; pass the CSV with --annotations-csv)")

    def _find_flow_roots(self, gaps: Sequence[int], flow_dir_name: str) -> dict[int, str]:
        if gaps and "{gap}" not in flow_dir_name:
            raise BenchmarkError(f"flow folder name {flow_dir_name!r} must contain '{{gap}}'")
        roots = {}
        for gap in sorted(set(gaps) | {-g for g in gaps}):
            root = os.path.join(self.data_dir, flow_dir_name.format(gap=gap))
            if os.path.isdir(root):
                roots[gap] = root
            elif gap in gaps:
                present = sorted(d for d in os.listdir(self.data_dir) if d.startswith("Flow"))
                raise BenchmarkError(
                    f"{root}: missing flow folder for gap {gap} (the model reads gaps "
                    f"{tuple(gaps)}; found {present or 'no Flow* folders'}; set --flow-dir-name "
                    f"if your flows live elsewhere)")
        return roots

    def _select_sequences(self, sequences) -> list[str]:
        available = sorted(d for d in os.listdir(self.image_root)
                           if os.path.isdir(os.path.join(self.image_root, d)))
        if sequences == "all":
            names = available
        elif sequences:
            names = list(sequences)
        elif self.layout.image_set and os.path.isfile(os.path.join(self.data_dir,
                                                                   self.layout.image_set)):
            names = _image_set_sequences(os.path.join(self.data_dir, self.layout.image_set))
        else:
            names = list(self.layout.default_sequences or available)
        missing = [n for n in names if n not in available]
        if missing:
            raise BenchmarkError(
                f"{self.image_root}: missing {len(missing)} {self.dataset} sequence folder(s): "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (use "
                f"--sequences all to evaluate the folders that are there)")
        if not names:
            raise BenchmarkError(f"{self.image_root}: no sequence folders")
        return names

    def sequence_files(self, name: str) -> list[tuple[str, int, int]]:
        """(path, size, mtime_ns) of every file a sequence's result depends on: its frames,
        flows (every flow folder), annotations and the MoCA CSV.  Cheap (stat only); used to
        key cached results, so a changed or different folder is never mistaken for this one."""
        folders = [os.path.join(self.image_root, name)]
        folders += [os.path.join(root, name) for _, root in sorted(self.flow_roots.items())]
        if self.annotation_root:
            folders.append(os.path.join(self.annotation_root, name))
        files = []
        for folder in folders:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.is_file():
                    stat = entry.stat()
                    files.append((os.path.abspath(entry.path), stat.st_size, stat.st_mtime_ns))
        if self.layout.annotation_kind == "boxes" and self.moca_csv:
            stat = os.stat(self.moca_csv)
            files.append((os.path.abspath(self.moca_csv), stat.st_size, stat.st_mtime_ns))
        return files

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self) -> Iterator[SequenceRecord]:
        for name in self.sequences:
            yield self.read_sequence(name)

    def read_sequence(self, name: str) -> SequenceRecord:
        """Reads one sequence's file lists and annotations."""
        image_dir = os.path.join(self.image_root, name)
        images = _list_files(image_dir, IMAGE_EXTENSIONS)
        if not images:
            raise BenchmarkError(f"{image_dir}: no frames ({'/'.join(IMAGE_EXTENSIONS)})")
        frames = tuple(sorted(images))
        try:
            with Image.open(images[frames[0]]) as first:
                width, height = first.size
        except OSError as e:
            raise BenchmarkError(f"{images[frames[0]]}: cannot read frame image ({e})") from e
        flow_dirs, flow_paths = {}, {}
        for gap, root in self.flow_roots.items():
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                raise BenchmarkError(f"{folder}: missing flow folder of sequence {name!r}")
            files = _list_files(folder, FLOW_EXTENSIONS)
            flow_dirs[gap] = folder
            flow_paths[gap] = tuple(files.get(f) for f in frames)
        record = SequenceRecord(self.dataset, name, frames, tuple(images[f] for f in frames),
                                (height, width), flow_dirs, flow_paths)
        if not self.load_annotations:
            return record
        return dataclasses.replace(record, **self._read_annotations(name, frames))

    def _read_annotations(self, name: str, frames: tuple[str, ...]) -> dict:
        kind = self.layout.annotation_kind
        if kind == "boxes":
            return self._read_boxes(name, frames)
        if kind == "amodal":
            return self._read_amodal(name, frames)
        folder = os.path.join(self.annotation_root, name)
        if not os.path.isdir(folder):
            raise BenchmarkError(f"{folder}: missing annotation folder of sequence {name!r}")
        files = _list_files(folder, (".png",))
        if self.layout.sparse:
            extra = sorted(set(files) - set(frames))
            if extra:
                raise BenchmarkError(f"{folder}: annotations {extra[:3]} have no frame in "
                                     f"{os.path.join(self.image_root, name)}")
            annotated = [i for i, f in enumerate(frames) if f in files]
            if not annotated:
                raise BenchmarkError(f"{folder}: no annotation matches a frame of {name!r}")
        else:
            missing = [f for f in frames if f not in files]
            if missing:
                raise BenchmarkError(
                    f"{os.path.join(folder, missing[0] + '.png')}: missing annotation ({name!r} "
                    f"has {len(frames)} frames and {len(files)} annotations; every frame must "
                    f"have one)")
            annotated = list(range(len(frames)))
        reader = masks_io.read_label_png if kind == "labels" else masks_io.read_binary_png
        labels = [reader(files[frames[i]]).astype(np.uint8) for i in annotated]
        _check_same_size(labels, [files[frames[i]] for i in annotated])
        labels = np.stack(labels)
        _check_objects(kind, labels, [files[frames[i]] for i in annotated], folder)
        return {"annotated": tuple(annotated), "labels": labels}

    def _read_boxes(self, name: str, frames: tuple[str, ...]) -> dict:
        per_frame = self.moca_boxes.get(name)
        if not per_frame:
            raise BenchmarkError(f"sequence {name!r} has no box in the MoCA annotation CSV")
        # Boxes of frames past the end of the copy are ignored, as by Motion Grouping's evaluator.
        annotated = [i for i, f in enumerate(frames) if f in per_frame]
        if not annotated:
            raise BenchmarkError(f"sequence {name!r}: no MoCA box names one of its frames "
                                 f"(frames {frames[0]}..{frames[-1]}, boxes "
                                 f"{sorted(per_frame)[:3]}...)")
        return {"annotated": tuple(annotated),
                "boxes": np.stack([per_frame[frames[i]][0] for i in annotated]),
                "box_motion": tuple(per_frame[frames[i]][1] for i in annotated)}

    def _read_amodal(self, name: str, frames: tuple[str, ...]) -> dict:
        try:
            num_objects = official_layout.num_objects_from_name(name)
            masks = [official_layout.read_amodal_masks(os.path.dirname(self.annotation_root),
                                                       name, f, num_objects) for f in frames]
        except official_layout.LayoutError as e:
            raise BenchmarkError(str(e)) from e
        _check_same_size(masks, [os.path.join(self.annotation_root, name, f) for f in frames])
        masks = np.stack(masks)
        empty = np.flatnonzero(~masks.any(axis=(0, 1, 2)))
        if empty.size:
            k = int(empty[0]) + 1
            raise BenchmarkError(
                f"{os.path.join(self.annotation_root, name, f'{k}_*.png')}: object {k} is empty "
                f"in every frame of {name!r}; an empty object would score J = 1 for an empty "
                "layer: remove it (and lower the object count in the sequence name) or fix its "
                "masks")
        return {"annotated": tuple(range(len(frames))), "amodal": masks}


def _check_objects(kind: str, labels: np.ndarray, paths: list[str], folder: str) -> None:
    """Ground truth that would score something else than the user meant is an error.

    - binary datasets: foreground in no annotated frame (e.g. masks in a convention read as
      empty) would score J = 0 or 1 regardless of the prediction;
    - object ids (DAVIS 2017): the evaluator's objects are 1..max id of the first annotation,
      so ids that are not 1..N there create phantom objects that score J = 1 each.
    """
    if kind == "binary":
        if not labels.any():
            raise BenchmarkError(
                f"{folder}: every annotation is empty (no foreground pixel in {len(paths)} "
                "masks); binary masks must be white (255) or palette id 1 on black, and a "
                "sequence needs a moving object to be scored")
        return
    first = labels[0]
    ids = sorted(int(i) for i in np.unique(first) if i not in (0, 255))
    if not ids:
        raise BenchmarkError(f"{paths[0]}: the first annotation holds no object id; the DAVIS "
                             "2017 evaluator takes the objects from it (ids 1..N)")
    expected = list(range(1, ids[-1] + 1))
    if ids != expected:
        missing = sorted(set(expected) - set(ids))
        raise BenchmarkError(
            f"{paths[0]}: object ids {ids} are not 1..{len(ids)} (missing {missing}); the "
            "evaluator counts objects 1..max id, so each missing id would be an empty phantom "
            "object scoring J = 1: renumber the objects 1..N in every annotation")


def _check_same_size(arrays: list[np.ndarray], paths: list[str]) -> None:
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        first = arrays[0].shape[:2]
        odd = next(p for a, p in zip(arrays, paths) if a.shape[:2] != first)
        raise BenchmarkError(f"{odd}: annotation size {sorted(sizes)} differs within the "
                             f"sequence (first is {first})")
