"""tfds builder `oclr_benchmarks`: the evaluation benchmarks with precomputed flows.

Configs: `davis2016`, `davis2017m` (DAVIS2017-motion), `segtrackv2`, `fbms59`, `moca`.  Each
packages a user's local copy in its standard layout (see `oclr_jax.data.benchmarks`, whose
readers do the reading) with precomputed RAFT flows in `Flows_gap1/` and `Flows_gap-1/`:

    tfds build oclr_jax/data/tfds/benchmarks.py --config davis2016 --manual_dir /data/DAVIS

The manual dir is the benchmark folder itself or holds it as `<manual_dir>/<dataset>` (e.g.
`davis2016/`);
builder kwargs `data_root=`, `flow_dir_name=`, `sequences=` ('all' or names; default the
official evaluation list) and `annotations_csv=` (MoCA) override the defaults.  One example per
sequence in the split `validation`:

  name          Text
  frame_names   Sequence(Text)      frame file names without extension, temporal order
  image_size    int32 (2,)          (H, W) of the frames
  flow_size     int32 (2,)          (H, W) of the flow files (RAFT's padded size, e.g. 480x856)
  flow          uint16 (T, h, w, 4) [u(+1), v(+1), u(-1), v(-1)] resized to the config
                resolution (default 128x224) as the official loader does (bilinear, vectors
                scaled), missing end-frame flows replaced by the negated opposite gap; coded by
                `flow_codec` (decode with `decode_example`)
  flow_range    float32 (2, 4)
  annotated     int32 (N,)          indices of the annotated frames (every frame, except
                FBMS-59's sparse annotations and MoCA's boxes)
  labels        Sequence(Image (H, W, 1) uint8 PNG): object ids at the annotation size (0
                background, 255 void in DAVIS2017; binary datasets 0/1)   [not MoCA]
  boxes         float32 (N, 4)      MoCA (x0, y0, x1, y1) in frame pixels  [MoCA only]
  box_motion    Sequence(Text)      MoCA motion class per box               [MoCA only]

Stored as ArrayRecord like `oclr_synthetic`; read with `builder.as_data_source("validation")`
and `decode_example`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from oclr_jax import resample
from oclr_jax.data import benchmarks, flow_codec, flow_io

FLOW_GAPS = (1, -1)
DEFAULT_FILE_FORMAT = "array_record"
_DESCRIPTIONS = {
    "davis2016": "DAVIS 2016 val (20 sequences, binary masks, 480p).",
    "davis2017m": "DAVIS2017-motion val (30 sequences, object ids with void, 480p).",
    "segtrackv2": "SegTrackv2 (14 sequences, binary masks, every frame).",
    "fbms59": "FBMS-59 test (30 sequences, sparse binary masks).",
    "moca": "MoCA filtered (88 sequences, boxes every 5th frame).",
}


@dataclasses.dataclass(eq=False)
class OclrBenchmarkConfig(tfds.core.BuilderConfig):
    """One benchmark.

    Attributes:
      dataset: key of `benchmarks.LAYOUTS`.
      resolution: `(H, W)` the flows are stored at (the model's input size).
    """

    dataset: str = "davis2016"
    resolution: tuple[int, int] = (128, 224)


def read_flows(record: benchmarks.SequenceRecord,
               resolution: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """A sequence's flows for gaps +1, -1 with the official fallback, resized.

    Returns `(T, H, W, 4)` float32 at `resolution` and the `(h, w)` of the files.
    """
    per_gap, first = [], None  # `first`: (size, path) of the first flow file read.
    missing = (None,) * record.num_frames
    for gap in FLOW_GAPS:
        frames = []
        for t, frame in enumerate(record.frame_names):
            path = record.flow_paths.get(gap, missing)[t]
            opposite = record.flow_paths.get(-gap, missing)[t]
            if path is not None:
                flow = flow_io.read_flow(path)
            elif opposite is not None:
                flow, path = -flow_io.read_flow(opposite), opposite
            else:
                folder = record.flow_dirs.get(gap, f"<no folder for gap {gap}>")
                raise benchmarks.BenchmarkError(
                    f"{os.path.join(folder, frame)}.*: sequence {record.name!r} has no flow for "
                    f"frame {frame}, gap {gap}, nor for the opposite gap")
            first = first or (flow.shape[:2], path)
            if flow.shape[:2] != first[0]:
                raise benchmarks.BenchmarkError(
                    f"{path}: flow of size {flow.shape[:2]}, but {first[1]} of the same sequence "
                    f"is {first[0]}")
            flow_io.check_flow_size(flow.shape[:2], record.image_size, path)
            frames.append(resample.resize_flow(flow, *resolution))
        per_gap.append(np.stack(frames))
    return np.concatenate(per_gap, axis=-1), first[0]


def benchmark_example(reader: benchmarks.Benchmark, name: str,
                      resolution: tuple[int, int]) -> tuple[str, dict]:
    """One sequence -> (key, features)."""
    record = reader.read_sequence(name)
    flow, flow_size = read_flows(record, resolution)
    residuals, flow_range = flow_codec.encode(flow)
    example = {
        "name": name,
        "frame_names": list(record.frame_names),
        "image_size": np.array(record.image_size, np.int32),
        "flow_size": np.array(flow_size, np.int32),
        "flow": residuals,
        "flow_range": flow_range,
        "annotated": np.array(record.annotated, np.int32),
    }
    if record.boxes is not None:
        example["boxes"] = record.boxes.astype(np.float32)
        example["box_motion"] = list(record.box_motion)
    else:
        example["labels"] = record.labels[..., None]
    return name, example


def decode_example(example: dict) -> dict[str, Any]:
    """A record from `builder.as_data_source("validation")` -> numpy arrays: `flow (T, h, w,
    4)` float32, `labels (N, H, W)` uint8 or `boxes (N, 4)`, and the rest as stored."""
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    decoded = {
        "name": text(example["name"]),
        "frame_names": tuple(text(f) for f in example["frame_names"]),
        "image_size": tuple(int(v) for v in example["image_size"]),
        "flow_size": tuple(int(v) for v in example["flow_size"]),
        "flow": flow_codec.decode(example["flow"], example["flow_range"]),
        "annotated": np.asarray(example["annotated"]),
    }
    if "labels" in example:
        decoded["labels"] = np.stack(example["labels"])[..., 0]
    else:
        decoded["boxes"] = np.asarray(example["boxes"])
        decoded["box_motion"] = tuple(text(m) for m in example["box_motion"])
    return decoded


class OclrBenchmarks(tfds.core.GeneratorBasedBuilder):
    """Evaluation benchmarks with precomputed flows (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [OclrBenchmarkConfig(name=name, dataset=name, description=text)
                       for name, text in _DESCRIPTIONS.items()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the benchmark (DAVIS 2016/2017 480p, Motion Grouping's SegTrackv2 / FBMS-59 /
    MoCA_filter copies), compute RAFT flows into Flows_gap1/ and Flows_gap-1/ (the official
    OCLR flow script), and point the manual dir at that folder (or at its parent holding it as
    <dataset>/, e.g. davis2016/).  See oclr_jax/data/benchmarks.py for each layout.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # tfds' own lookup needs the `importlib_resources` backport, which is not a dependency.
        return epath.Path(os.path.abspath(__file__))

    def __init__(self, *, data_root: str | None = None,
                 flow_dir_name: str = benchmarks.DEFAULT_FLOW_DIR,
                 sequences: str | Sequence[str] | None = None,
                 annotations_csv: str | None = None, **kwargs):
        self._data_root = data_root
        self._reader_kwargs = dict(flow_dir_name=flow_dir_name, sequences=sequences,
                                   annotations_csv=annotations_csv)
        super().__init__(**kwargs)

    def download_and_prepare(self, *, file_format=None, **kwargs):
        super().download_and_prepare(file_format=file_format or DEFAULT_FILE_FORMAT, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        height, width = self.builder_config.resolution
        features = {
            "name": tfds.features.Text(),
            "frame_names": tfds.features.Sequence(tfds.features.Text()),
            "image_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "flow_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "flow": tfds.features.Tensor(shape=(None, height, width, 4), dtype=np.uint16,
                                         encoding=tfds.features.Encoding.BYTES),
            "flow_range": tfds.features.Tensor(shape=(2, 4), dtype=np.float32),
            "annotated": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        }
        if benchmarks.LAYOUTS[self.builder_config.dataset].annotation_kind == "boxes":
            features["boxes"] = tfds.features.Tensor(shape=(None, 4), dtype=np.float32)
            features["box_motion"] = tfds.features.Sequence(tfds.features.Text())
        else:
            features["labels"] = tfds.features.Sequence(
                tfds.features.Image(shape=(None, None, 1), encoding_format="png"))
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                              disable_shuffling=True)

    def _benchmark_root(self, dl_manager) -> str:
        if self._data_root:
            return self._data_root
        manual_dir = os.fspath(dl_manager.manual_dir)  # Raises with the instructions if unset.
        nested = os.path.join(manual_dir, self.builder_config.dataset)
        return nested if os.path.isdir(nested) else manual_dir

    def _split_generators(self, dl_manager):
        config = self.builder_config
        reader = benchmarks.Benchmark(config.dataset, self._benchmark_root(dl_manager), FLOW_GAPS,
                                      **self._reader_kwargs)
        return {"validation": self._generate_examples(reader, tuple(config.resolution))}

    def _generate_examples(self, reader: benchmarks.Benchmark, resolution: tuple[int, int]):
        for name in reader.sequences:
            yield benchmark_example(reader, name, resolution)
