"""Reading one generated sequence back from the official layout (for `show` and tests).

This is deliberately independent of the training input pipeline: it reads exactly what
`writer.write_sequence` promises, and checks it.
"""

from __future__ import annotations

import glob
import json
import os

import cv2
import numpy as np
from PIL import Image

from oclr_jax.data import flow_io
from oclr_jax.data.synth.render import SyntheticSequence
from oclr_jax.data.synth.writer import metadata_path


def list_sequences(split_dir: str) -> list[str]:
    """Names of the complete sequences (those with a metadata JSON) of a split folder."""
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(split_dir, "Metadata", "*.json")))


def _read_image(path: str, flags: int) -> np.ndarray:
    image = cv2.imread(path, flags)
    if image is None:
        raise FileNotFoundError(f"{path}: missing or not a readable image")
    return image


def read_sequence(split_dir: str, name: str) -> SyntheticSequence:
    """The arrays of one sequence; the modal masks come from `Annotations/`.

    Raises FileNotFoundError naming the first missing file.
    """
    frames = sorted(glob.glob(os.path.join(split_dir, "JPEGImages", name, "*.jpg")))
    if not frames:
        where = os.path.join(split_dir, "JPEGImages", name)
        if not os.path.isdir(where):
            known = list_sequences(split_dir)
            hint = (f"{len(known)} complete sequences, e.g. {', '.join(known[:5])}" if known
                    else "no complete sequences (is it a split folder of the generator?)")
            raise FileNotFoundError(f"no sequence {name!r} in {split_dir}: {where} does not exist; the folder "
                                    f"holds {hint}")
        raise FileNotFoundError(f"{where}: no frames (*.jpg)")
    if not name[:1].isdigit():
        raise ValueError(f"sequence folder {name!r} must start with its object count")
    num_objects = int(name[0])
    stems = [os.path.splitext(os.path.basename(f))[0] for f in frames]
    rgb = np.stack([_read_image(f, cv2.IMREAD_COLOR)[..., ::-1] for f in frames])
    flows = {}
    for gap in ("1", "-1"):
        flows[gap] = np.stack([flow_io.read_flo(os.path.join(split_dir, f"Flows_gap{gap}", name, s + ".flo"))
                               for s in stems])
    amodal = np.stack([
        np.stack([_read_image(os.path.join(split_dir, "AmodalAnnotations", name, f"{k}_{s}.png"),
                              cv2.IMREAD_GRAYSCALE) > 127 for k in range(1, num_objects + 1)], -1)
        for s in stems])
    labels = np.stack([np.asarray(_palette_indices(os.path.join(split_dir, "Annotations", name, s + ".png")))
                       for s in stems])
    modal = labels[..., None] == np.arange(1, num_objects + 1)
    path = metadata_path(split_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (the sequence is incomplete)")
    with open(path) as f:
        metadata = json.load(f)
    occluder = np.zeros(labels.shape, bool)  # not stored on disk
    return SyntheticSequence(
        rgb=np.ascontiguousarray(rgb), flow_fwd=flows["1"], flow_bwd=flows["-1"], amodal=amodal,
        modal=modal, order=np.array(metadata.get("order", list(range(num_objects - 1, -1, -1)))),
        occluder=occluder, name=name, metadata=metadata)


def _palette_indices(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing modal annotation")
    with Image.open(path) as image:
        if image.mode != "P":
            raise ValueError(f"{path}: expected a palette PNG, found mode {image.mode}")
        return np.array(image)
