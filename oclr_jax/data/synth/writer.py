"""Writing sequences in the official OCLR layout (DESIGN.md §4), atomically per sequence.

    <out>/JPEGImages/<seq>/00000.jpg ...
    <out>/Flows_gap1/<seq>/00000.flo ...         forward flow (frame t -> t+1)
    <out>/Flows_gap-1/<seq>/00000.flo ...        backward flow of frame t (t -> t-1)
    <out>/AmodalAnnotations/<seq>/1_00000.png    one 0/255 mask per object k = 1..n
    <out>/Annotations/<seq>/00000.png            modal palette PNG (object k = palette k)
    <out>/FlowImages_gap1/<seq>/00000.png        optional colour-wheel images (and gap-1)
    <out>/Metadata/<seq>.json                    written last: marks the sequence complete

`<seq>` starts with the object count (the official loader reads it from the first
character).  Every frame has both flow files: the end frames hold the negated opposite flow,
exactly what the official loader substitutes for a missing file.

Atomicity: a `SequenceWriter` stages each sequence in its own staging folder
`<out>/.tmp/staging.<host>.<pid>/<folder>/<seq>/` and renames the per-sequence folders into
place, the metadata JSON last, so a sequence without its JSON is incomplete and is redone on
resume.  The staging folder is reused for every sequence and removed once, on `close`: on
ext4 without a journal, every freed inode makes later file creations scan past it for
minutes, so deleting a few folders per sequence slowed writing down several times.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import cv2
import numpy as np

from oclr_jax.data import flow_io
from oclr_jax.data.flow_viz import flow_to_rgb
from oclr_jax.data.masks_io import davis_palette
from oclr_jax.data.synth.png import encode_rows, unfiltered_rows
from oclr_jax.data.synth.render import SyntheticSequence

FRAME_FOLDERS = ("JPEGImages", "Flows_gap1", "Flows_gap-1", "AmodalAnnotations", "Annotations")
FLOW_IMAGE_FOLDERS = ("FlowImages_gap1", "FlowImages_gap-1")
METADATA_FOLDER = "Metadata"
TEMP_FOLDER = ".tmp"
STAGING_PREFIX = "staging."
JPEG_QUALITY = 95


def frame_name(t: int) -> str:
    return f"{t:05d}"


_PALETTE = davis_palette()  # 1 = [128,0,0], 2 = [0,128,0], ...: what the official Syn loader matches


def metadata_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, METADATA_FOLDER, f"{name}.json")


def is_complete(out_dir: str, name: str) -> bool:
    """Whether a sequence was fully written (its metadata JSON exists)."""
    return os.path.isfile(metadata_path(out_dir, name))


def staging_name(pid: int | None = None) -> str:
    """The staging folder name of a writer process (this one by default)."""
    return f"{STAGING_PREFIX}{socket.gethostname()}.{os.getpid() if pid is None else pid}"


def _write_file(path: str, *buffers) -> None:
    """Creates `path` (it must not exist: staging folders are fresh) and writes the buffers."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for buffer in buffers:
            view = memoryview(buffer).cast("B")
            while view:  # a regular file takes it all at once, barring signals
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _encode(extension: str, image: np.ndarray, params: list[int]) -> np.ndarray:
    ok, buffer = cv2.imencode(extension, image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {extension} image of shape {image.shape}")
    return buffer


def _channel_planes(masks: np.ndarray) -> np.ndarray:
    """`(n, T, H, W)` uint8 0/1 from `(T, H, W, n)` bool (OpenCV de-interleaves far faster
    than a numpy transpose with a last axis of 1-3 elements)."""
    masks = np.asarray(masks, bool)
    num_frames, height, width, channels = masks.shape
    if channels <= 1:
        return np.ascontiguousarray(np.moveaxis(masks, -1, 0)).view(np.uint8)
    interleaved = np.ascontiguousarray(masks).view(np.uint8).reshape(num_frames * height, width, channels)
    return np.stack(cv2.split(interleaved)).reshape(channels, num_frames, height, width)


def _flo_header(height: int, width: int) -> bytes:
    return np.array([flow_io.FLO_MAGIC], "<f4").tobytes() + np.array([width, height], "<i4").tobytes()


def _check(seq: SyntheticSequence) -> None:
    num_frames, height, width = seq.rgb.shape[:3]
    num_objects = seq.amodal.shape[-1]
    expected = {"rgb": (num_frames, height, width, 3), "flow_fwd": (num_frames, height, width, 2),
                "flow_bwd": (num_frames, height, width, 2),
                "amodal": (num_frames, height, width, num_objects),
                "modal": (num_frames, height, width, num_objects)}
    for field, shape in expected.items():
        if getattr(seq, field).shape != shape:
            raise ValueError(f"sequence {seq.name}: {field} has shape {getattr(seq, field).shape}, "
                             f"expected {shape}")
    if not seq.name or not seq.name[0].isdigit() or int(seq.name[0]) != num_objects:
        raise ValueError(f"sequence name {seq.name!r} must start with its object count {num_objects}")
    for field in ("flow_fwd", "flow_bwd"):
        if not np.all(np.isfinite(getattr(seq, field))):
            raise ValueError(f"sequence {seq.name}: {field} holds NaN/inf values")


def _write_frames(folders: dict[str, str], seq: SyntheticSequence, flow_images: bool) -> None:
    """Writes every frame file of `seq` into `folders[<layout folder>]` (existing, empty)."""
    num_frames, height, width, num_objects = seq.amodal.shape
    modal = _channel_planes(seq.modal)
    labels = np.zeros((num_frames, height, width), np.uint8)  # palette index, 0 = none
    for k in range(num_objects):
        np.maximum(labels, modal[k] * np.uint8(k + 1), out=labels)  # disjoint; else the highest wins
    label_rows = unfiltered_rows(labels)
    # (n, T, H, W + 1) scanlines of the 0/255 amodal masks, built in one pass.
    amodal_rows = unfiltered_rows(_channel_planes(seq.amodal) * np.uint8(255))
    flo_header = _flo_header(height, width)
    flows = {"Flows_gap1": np.ascontiguousarray(seq.flow_fwd, "<f4"),
             "Flows_gap-1": np.ascontiguousarray(seq.flow_bwd, "<f4")}
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for t in range(num_frames):
        name = frame_name(t)
        bgr = cv2.cvtColor(seq.rgb[t], cv2.COLOR_RGB2BGR)
        _write_file(os.path.join(folders["JPEGImages"], name + ".jpg"), _encode(".jpg", bgr, jpeg))
        for folder, flow in flows.items():
            _write_file(os.path.join(folders[folder], name + ".flo"), flo_header, flow[t])
        for k in range(num_objects):
            _write_file(os.path.join(folders["AmodalAnnotations"], f"{k + 1}_{name}.png"),
                        encode_rows(amodal_rows[k, t]))
        _write_file(os.path.join(folders["Annotations"], name + ".png"), encode_rows(label_rows[t], _PALETTE))
        if flow_images:
            for folder, flow in zip(FLOW_IMAGE_FOLDERS, (seq.flow_fwd[t], seq.flow_bwd[t])):
                image = cv2.cvtColor(flow_to_rgb(flow), cv2.COLOR_RGB2BGR)
                _write_file(os.path.join(folders[folder], name + ".png"),
                            _encode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1]))


def _metadata_json(seq: SyntheticSequence) -> str:
    def default(value):  # numpy scalars/arrays inside the metadata
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"cannot store {type(value).__name__} in the metadata JSON")

    return json.dumps(seq.metadata, indent=1, sort_keys=True, default=default)


class SequenceWriter:
    """Writes sequences into one split folder through a reused staging folder.

    Use one per process (`with SequenceWriter(out) as writer: writer.write(seq)`); `close`
    removes the staging folder.  A process that dies without closing leaves it behind;
    `remove_stale_staging` (run by `generate`) clears it later.
    """

    def __init__(self, out_dir: str, flow_images: bool = False):
        self.out_dir = out_dir
        self.flow_images = flow_images
        self.staging = os.path.join(out_dir, TEMP_FOLDER, staging_name())
        self.folders = FRAME_FOLDERS + (FLOW_IMAGE_FOLDERS if flow_images else ())

    def __enter__(self) -> "SequenceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def _staged(self, name: str) -> tuple[dict[str, str], str]:
        folders = {folder: os.path.join(self.staging, folder, name) for folder in self.folders}
        return folders, os.path.join(self.staging, METADATA_FOLDER, f"{name}.json")

    def _discard(self, name: str) -> None:
        folders, metadata = self._staged(name)
        for path in folders.values():
            if os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(metadata):
            os.remove(metadata)

    def write(self, seq: SyntheticSequence) -> str:
        """Writes one sequence (replacing an earlier copy); returns its name.

        Atomic per sequence: until its metadata JSON lands, the sequence counts as incomplete.
        """
        _check(seq)
        folders, metadata = self._staged(seq.name)
        self._discard(seq.name)  # left by an earlier failure of this process
        try:
            for path in folders.values():
                os.makedirs(path)
            _write_frames(folders, seq, self.flow_images)
            os.makedirs(os.path.dirname(metadata), exist_ok=True)
            _write_file(metadata, _metadata_json(seq).encode("utf-8"))
            self._publish(seq.name, folders, metadata)
        except BaseException:
            self._discard(seq.name)
            raise
        return seq.name

    def _publish(self, name: str, folders: dict[str, str], metadata: str) -> None:
        final_metadata = metadata_path(self.out_dir, name)
        if os.path.exists(final_metadata):
            os.remove(final_metadata)  # rewriting: incomplete until the new JSON lands
        for folder in FRAME_FOLDERS + FLOW_IMAGE_FOLDERS:
            target = os.path.join(self.out_dir, folder, name)
            if os.path.exists(target):
                shutil.rmtree(target)
            if folder in folders:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.rename(folders[folder], target)
        os.makedirs(os.path.dirname(final_metadata), exist_ok=True)
        os.replace(metadata, final_metadata)


def write_sequence(out_dir: str, seq: SyntheticSequence, flow_images: bool = False) -> str:
    """Writes one sequence in the official layout; returns its name.  For many sequences,
    a `SequenceWriter` is faster (it keeps its staging folder)."""
    with SequenceWriter(out_dir, flow_images) as writer:
        return writer.write(seq)


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_staging(out_dir: str, names: set[str]) -> None:
    """Clears what crashed writers left in `<out>/.tmp/`.

    Staging folders of dead processes on this host go entirely; from the others (another
    host, or a live writer) only the sequences in `names` (about to be rewritten by the
    caller, so nobody else may be writing them).  Also removes per-sequence temp folders
    `<seq>.<host>.<pid>` of earlier versions of the writer for `names`.
    """
    temp_dir = os.path.join(out_dir, TEMP_FOLDER)
    if not os.path.isdir(temp_dir):
        return
    own_host = staging_name(0)[:-1]  # "staging.<host>."
    for entry in os.listdir(temp_dir):
        path = os.path.join(temp_dir, entry)
        if not entry.startswith(STAGING_PREFIX):
            if entry.split(".")[0] in names:
                shutil.rmtree(path, ignore_errors=True)
            continue
        pid = entry[len(own_host):]
        if entry.startswith(own_host) and pid.isdigit() and _process_is_gone(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            continue
        for name in names:
            for folder in FRAME_FOLDERS + FLOW_IMAGE_FOLDERS:
                if os.path.lexists(os.path.join(path, folder, name)):
                    shutil.rmtree(os.path.join(path, folder, name), ignore_errors=True)
            if os.path.lexists(os.path.join(path, METADATA_FOLDER, f"{name}.json")):
                os.remove(os.path.join(path, METADATA_FOLDER, f"{name}.json"))
