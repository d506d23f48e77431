"""Writing a sequence in the official OCLR layout (DESIGN.md §4), atomically.

    <out>/JPEGImages/<seq>/00000.jpg ...
    <out>/Flows_gap1/<seq>/00000.flo ...         forward flow (frame t -> t+1)
    <out>/Flows_gap-1/<seq>/00000.flo ...        backward flow of frame t (t -> t-1)
    <out>/AmodalAnnotations/<seq>/1_00000.png    one 0/255 mask per object k = 1..n
    <out>/Annotations/<seq>/00000.png            modal palette PNG (object k = palette k)
    <out>/FlowImages_gap1/<seq>/00000.png        optional colour-wheel images (and gap-1)
    <out>/Metadata/<seq>.json                    written last: marks the sequence complete

`<seq>` starts with the object count (the official loader reads it from the first
character).  Every frame has both flow files: the end frames hold the negated opposite flow,
exactly what the official loader substitutes for a missing file.  Everything is written into
`<out>/.tmp/<seq>.<host>.<pid>/` first and renamed into place folder by folder; the metadata
JSON is renamed last, so a sequence without it is incomplete and is redone on resume.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import zlib

import cv2
import numpy as np

from oclr_jax.data import flow_io
from oclr_jax.data.flow_viz import flow_to_rgb
from oclr_jax.data.synth.render import SyntheticSequence

FRAME_FOLDERS = ("JPEGImages", "Flows_gap1", "Flows_gap-1", "AmodalAnnotations", "Annotations")
FLOW_IMAGE_FOLDERS = ("FlowImages_gap1", "FlowImages_gap-1")
METADATA_FOLDER = "Metadata"
TEMP_FOLDER = ".tmp"
JPEG_QUALITY = 95


def frame_name(t: int) -> str:
    return f"{t:05d}"


def davis_palette() -> np.ndarray:
    """The 256-entry DAVIS/PASCAL palette `(256, 3)` uint8: 1 = [128,0,0], 2 = [0,128,0],
    3 = [128,128,0], ... (the colours the official Syn loader matches)."""
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, shift = index, 7
        while value:
            for channel in range(3):
                palette[index, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return palette


def palette_png(labels: np.ndarray, palette: np.ndarray) -> bytes:
    """An indexed-colour (palette) PNG of `(H, W)` uint8 labels.

    OpenCV writes the labels as an 8-bit greyscale PNG, whose pixel data is byte for byte
    that of an 8-bit indexed PNG; switching the header's colour type to 3 and adding the
    PLTE chunk makes it one (several times faster than going through Pillow).
    """
    png = _encode(".png", labels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if png[12:16] != b"IHDR" or png[24:26] != b"\x08\x00":  # 8-bit greyscale expected
        raise ValueError("unexpected PNG header from OpenCV")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = bytearray(png[16:29])
    header[9] = 3  # colour type: indexed
    return png[:8] + chunk(b"IHDR", bytes(header)) + chunk(b"PLTE", palette.astype(np.uint8).tobytes()) + png[33:]


_PALETTE = davis_palette()


def metadata_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, METADATA_FOLDER, f"{name}.json")


def is_complete(out_dir: str, name: str) -> bool:
    """Whether a sequence was fully written (its metadata JSON exists)."""
    return os.path.isfile(metadata_path(out_dir, name))


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _encode(extension: str, image: np.ndarray, params: list[int]) -> bytes:
    ok, buffer = cv2.imencode(extension, image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {extension} image of shape {image.shape}")
    return buffer.tobytes()


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


def _write_frames(root: str, seq: SyntheticSequence, flow_images: bool) -> None:
    folders = FRAME_FOLDERS + (FLOW_IMAGE_FOLDERS if flow_images else ())
    for folder in folders:
        os.makedirs(os.path.join(root, folder, seq.name))
    path = lambda folder, file: os.path.join(root, folder, seq.name, file)  # noqa: E731
    png_fast = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    labels = np.zeros(seq.modal.shape[:3], np.uint8)  # (T, H, W) palette index, 0 = none
    for k in range(seq.modal.shape[-1]):
        labels[seq.modal[..., k]] = k + 1
    for t in range(seq.rgb.shape[0]):
        name = frame_name(t)
        bgr = cv2.cvtColor(seq.rgb[t], cv2.COLOR_RGB2BGR)
        _write_bytes(path("JPEGImages", name + ".jpg"),
                     _encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]))
        _write_bytes(path("Flows_gap1", name + ".flo"), flow_io.encode_flo(seq.flow_fwd[t]))
        _write_bytes(path("Flows_gap-1", name + ".flo"), flow_io.encode_flo(seq.flow_bwd[t]))
        for k in range(seq.amodal.shape[-1]):
            mask = seq.amodal[t, ..., k].astype(np.uint8) * 255
            _write_bytes(path("AmodalAnnotations", f"{k + 1}_{name}.png"), _encode(".png", mask, png_fast))
        _write_bytes(path("Annotations", name + ".png"), palette_png(labels[t], _PALETTE))
        if flow_images:
            for folder, flow in zip(FLOW_IMAGE_FOLDERS, (seq.flow_fwd[t], seq.flow_bwd[t])):
                _write_bytes(path(folder, name + ".png"),
                             _encode(".png", cv2.cvtColor(flow_to_rgb(flow), cv2.COLOR_RGB2BGR), png_fast))


def _metadata_json(seq: SyntheticSequence) -> str:
    def default(value):  # numpy scalars/arrays inside the metadata
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"cannot store {type(value).__name__} in the metadata JSON")

    return json.dumps(seq.metadata, indent=1, sort_keys=True, default=default)


def write_sequence(out_dir: str, seq: SyntheticSequence, flow_images: bool = False) -> str:
    """Writes one sequence in the official layout; returns its name.

    Atomic per sequence: a crash leaves no metadata JSON, and the next write (or resume)
    replaces whatever partial folders exist.
    """
    _check(seq)
    temp_root = os.path.join(out_dir, TEMP_FOLDER, f"{seq.name}.{socket.gethostname()}.{os.getpid()}")
    if os.path.exists(temp_root):
        shutil.rmtree(temp_root)
    try:
        _write_frames(temp_root, seq, flow_images)
        os.makedirs(os.path.join(temp_root, METADATA_FOLDER))
        _write_bytes(os.path.join(temp_root, METADATA_FOLDER, seq.name + ".json"),
                     _metadata_json(seq).encode("utf-8"))
        final_metadata = metadata_path(out_dir, seq.name)
        if os.path.exists(final_metadata):
            os.remove(final_metadata)  # rewriting: incomplete until the new JSON lands
        for folder in FRAME_FOLDERS + FLOW_IMAGE_FOLDERS:
            source = os.path.join(temp_root, folder, seq.name)
            target = os.path.join(out_dir, folder, seq.name)
            if os.path.exists(target):
                shutil.rmtree(target)
            if os.path.exists(source):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.rename(source, target)
        os.makedirs(os.path.dirname(final_metadata), exist_ok=True)
        os.replace(os.path.join(temp_root, METADATA_FOLDER, seq.name + ".json"), final_metadata)
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)
    return seq.name
