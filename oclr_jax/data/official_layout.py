"""Reading one sequence of an official-layout OCLR synthetic folder into numpy arrays.

The layout (DESIGN.md §4) is what the official PyTorch loaders read::

    <root>/JPEGImages/<seq>/<frame>.jpg              frames 00000.jpg, 00001.jpg, ...
    <root>/Flows_gap1/<seq>/<frame>.flo              flow from frame i to frame i+1
    <root>/Flows_gap-1/<seq>/<frame>.flo             flow from frame i to frame i-1
    <root>/AmodalAnnotations/<seq>/<k>_<frame>.png   k = 1..n, binary (0/255) amodal mask

The sequence folder name starts with its object count `n` (the official loader reads the first
character).  Channel k-1 holds object k and the higher channel is in front, so modal masks are
derived here by composing the amodal masks front (channel n-1) to back (channel 0).

Missing-gap fallback, as the official loader: when `Flows_gap{g}/<seq>/<frame>.flo` does not
exist (the forward flow of the last frame, the backward flow of the first), the negated
`Flows_gap{-g}` flow of the same frame is used.  Frames are listed from `JPEGImages/<seq>/*.jpg`
(the official rule); a flow-only copy without `JPEGImages/` lists them from its flow folders.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Sequence

import cv2
import numpy as np

from oclr_jax import resample
from oclr_jax.compose import ground_truth_modal
from oclr_jax.data import flow_io, masks_io
from oclr_jax.errors import UserError

IMAGE_DIR = "JPEGImages"
AMODAL_DIR = "AmodalAnnotations"
MODAL_DIR = "Annotations"  # Optional DAVIS-style label PNGs of the visible parts.
METADATA_DIR = "Metadata"  # Our generator's completion markers, <seq>.json.


class LayoutError(UserError, ValueError):
    """An official-layout folder is missing a file or holds data of the wrong shape."""


@dataclasses.dataclass(frozen=True)
class OfficialSequence:
    """One sequence read from an official-layout folder.

    Attributes:
      name: sequence folder name (starts with the object count).
      frames: frame names without extension, in temporal order, e.g. `("00000", "00001")`.
      flows: gap -> flow `(T, H, W, 2)` float32 `(u, v)` in pixels of the returned grid.
      amodal: `(T, H, W, n)` bool; channel k-1 is object k.
      modal: `(T, H, W, n)` bool; visible parts, the higher channel in front.
      rgb: `(T, H, W, 3)` uint8, or None when not requested.
    """

    name: str
    frames: tuple[str, ...]
    flows: dict[int, np.ndarray]
    amodal: np.ndarray
    modal: np.ndarray
    rgb: np.ndarray | None = None

    @property
    def num_objects(self) -> int:
        return self.amodal.shape[-1]

    def stacked_flow(self, gaps: Sequence[int]) -> np.ndarray:
        """The flows of `gaps` concatenated in that order.  Returns `(T, H, W, 2 * len(gaps))`."""
        missing = [g for g in gaps if g not in self.flows]
        if missing:
            raise LayoutError(
                f"{self.name}: gaps {missing} were not read (have {sorted(self.flows)})")
        return np.concatenate([self.flows[g] for g in gaps], axis=-1)


def flow_dir_name(gap: int) -> str:
    """`Flows_gap1`, `Flows_gap-1`, ... (the official folder names)."""
    return f"Flows_gap{int(gap)}"


def num_objects_from_name(name: str) -> int:
    """The object count that an official sequence name starts with (`"2_abc"` -> 2)."""
    if not name or not name[0].isdigit() or name[0] == "0":
        raise LayoutError(
            f"sequence {name!r}: an official synthetic sequence name must start with its object "
            "count 1..9 (e.g. '2_000123')")
    return int(name[0])


def _list_dir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def list_sequences(root: str) -> list[str]:
    """Sorted sequence names of an official-layout folder (from `JPEGImages/`, else `Flows_gap1/`).

    A folder written by our generator has `Metadata/<seq>.json` for every complete sequence;
    there, sequences without it (an interrupted write) are left out with a warning.
    """
    for sub in (IMAGE_DIR, flow_dir_name(1), flow_dir_name(-1)):
        folder = os.path.join(root, sub)
        if os.path.isdir(folder):
            names = [n for n in _list_dir(folder) if os.path.isdir(os.path.join(folder, n))]
            if names:
                return _complete_only(root, names)
    raise LayoutError(
        f"{root}: not an official-layout folder (expected sequence folders under {IMAGE_DIR}/ or "
        f"{flow_dir_name(1)}/)")


def _complete_only(root: str, names: list[str]) -> list[str]:
    metadata = os.path.join(root, METADATA_DIR)
    if not os.path.isdir(metadata):
        return names
    complete = [n for n in names if os.path.exists(os.path.join(metadata, n + ".json"))]
    if len(complete) < len(names):
        warnings.warn(f"{root}: leaving out {len(names) - len(complete)} incomplete sequences "
                      f"(no {METADATA_DIR}/<seq>.json), e.g. "
                      f"{sorted(set(names) - set(complete))[0]!r}", stacklevel=2)
    return complete


def list_frames(root: str, name: str) -> list[str]:
    """Frame names (no extension) of a sequence, sorted."""
    image_dir = os.path.join(root, IMAGE_DIR, name)
    if os.path.isdir(image_dir):
        frames = [f[:-4] for f in _list_dir(image_dir) if f.lower().endswith(".jpg")]
        if not frames:
            raise LayoutError(f"{image_dir}: no .jpg frames")
        return frames
    frames = set()
    for gap in (1, -1):
        folder = os.path.join(root, flow_dir_name(gap), name)
        frames.update(f[:-4] for f in _list_dir(folder) if f.endswith(".flo"))
    if not frames:
        raise LayoutError(
            f"sequence {name!r} in {root}: no frames (looked for {IMAGE_DIR}/{name}/*.jpg and "
            f"{flow_dir_name(1)}/{name}/*.flo)")
    return sorted(frames)


def read_gap_flow(root: str, name: str, frame: str, gap: int) -> tuple[np.ndarray, str]:
    """The flow of `frame` for `gap`, with the official missing-gap fallback.

    Returns `(H, W, 2)` float32 and the path it came from.
    """
    path = os.path.join(root, flow_dir_name(gap), name, frame + ".flo")
    if os.path.exists(path):
        return flow_io.read_flo(path), path
    opposite = os.path.join(root, flow_dir_name(-gap), name, frame + ".flo")
    if os.path.exists(opposite):
        return -flow_io.read_flo(opposite), opposite
    raise LayoutError(
        f"sequence {name!r}: missing flow for frame {frame} gap {gap}: neither {path} nor the "
        f"fallback {opposite} exists")


def _read_png_channel(path: str) -> np.ndarray:
    """A PNG as one uint8 channel (the red channel of a colour PNG, as the official reader)."""
    if not os.path.exists(path):
        raise LayoutError(f"{path}: mask file does not exist")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise LayoutError(f"{path}: cannot decode PNG mask")
    if image.ndim == 3:
        red = image[..., 2]  # OpenCV gives BGR(A): index 2 is red.
        others = image[..., :2]
        # A mask drawn in another colour would read as empty from the red channel.
        if not red.any() and others.any():
            raise LayoutError(
                f"{path}: colour mask with nothing in the red channel but content in "
                f"{'blue' if image[..., 0].any() else 'green'}; the official reader takes the red "
                "channel: save masks as white (255) on black")
        image = red
    if image.dtype == np.uint16:
        # 16-bit 0/65535 -> 0/255; a 16-bit 0/1 mask stays 0/1 (handled below).
        image = (image >> 8 if image.max(initial=0) > 1 else image).astype(np.uint8)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise LayoutError(f"{path}: expected an 8-bit mask PNG, found {image.dtype} {image.shape}")
    if image.max(initial=0) == 1:
        # 0/1 masks read with the 0/255 threshold would be empty (a silent J of 0 or 1).
        warnings.warn(f"{path}: mask stored as 0/1 (not 0/255); reading value 1 as foreground",
                      stacklevel=2)
        image = image * np.uint8(255)
    return image


def _resize_mask(mask_u8: np.ndarray, resolution: tuple[int, int] | None) -> np.ndarray:
    """Binary mask (bool); resized as the official loader: bilinear on 0/255, then > 0.5."""
    if resolution is not None:
        mask_u8 = resample.bilinear(mask_u8, resolution)
    return mask_u8 > 127


def _resize_masks(masks: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
    """`(T, H, W, n)` bool masks resized as the official loader (bilinear on 0/255, > 0.5)."""
    if masks.shape[1:3] == tuple(resolution):
        return masks
    out = np.zeros((masks.shape[0], *resolution, masks.shape[-1]), bool)
    for t in range(masks.shape[0]):
        for k in range(masks.shape[-1]):
            out[t, ..., k] = _resize_mask(masks[t, ..., k].astype(np.uint8) * 255, resolution)
    return out


def read_amodal_masks(root: str, name: str, frame: str, num_objects: int,
                      resolution: tuple[int, int] | None = None) -> np.ndarray:
    """`AmodalAnnotations/<seq>/<k>_<frame>.png` for k = 1..n.  Returns `(H, W, n)` bool."""
    masks = []
    for k in range(1, num_objects + 1):
        path = os.path.join(root, AMODAL_DIR, name, f"{k}_{frame}.png")
        if not os.path.exists(path):
            raise LayoutError(
                f"{path}: missing amodal mask of object {k} (sequence {name!r} starts with "
                f"{num_objects}, so masks 1..{num_objects} are expected for every frame)")
        masks.append(_resize_mask(_read_png_channel(path), resolution))
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise LayoutError(f"{os.path.join(root, AMODAL_DIR, name)}: masks of frame {frame} differ "
                          f"in size: {sorted(shapes)}")
    return np.stack(masks, axis=-1)


def read_modal_annotations(root: str, name: str, frames: Sequence[str], num_objects: int,
                           resolution: tuple[int, int] | None = None) -> np.ndarray | None:
    """Visible masks from `Annotations/<seq>/<frame>.png` label maps (id k = object k, 0 for
    background and anything else, e.g. an occluder), or None when the sequence has no such
    folder (the official data ships none; our generator writes them).  `(T, H, W, n)` bool.
    Label maps are resized with nearest neighbour."""
    folder = os.path.join(root, MODAL_DIR, name)
    if not os.path.isdir(folder):
        return None
    masks = []
    for frame in frames:
        path = os.path.join(folder, frame + ".png")
        try:
            labels = masks_io.read_label_png(path)
        except masks_io.MaskFileError as e:
            raise LayoutError(str(e)) from e
        if resolution is not None:
            labels = resample.opencv_nearest(labels, resolution)
        masks.append(labels[..., None] == np.arange(1, num_objects + 1, dtype=np.uint8))
    paths = [os.path.join(folder, f + ".png") for f in frames]
    return _stack_same_shape(masks, paths, "modal label map")


def read_rgb(path: str, resolution: tuple[int, int] | None = None) -> np.ndarray:
    """A frame as `(H, W, 3)` uint8 RGB, optionally resized bilinearly."""

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise LayoutError(f"{path}: missing or undecodable frame image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if resolution is not None:
        image = resample.bilinear(image, resolution)
    return image


def _stack_same_shape(arrays: list[np.ndarray], paths: list[str], what: str) -> np.ndarray:
    expected = arrays[0].shape
    for array, path in zip(arrays, paths):
        if array.shape != expected:
            raise LayoutError(f"{path}: {what} of shape {array.shape}, expected {expected} as "
                              f"{paths[0]}")
    return np.stack(arrays)


def read_sequence(root: str, name: str, gaps: Sequence[int] = (1, -1), *,
                  resolution: tuple[int, int] | None = None, with_rgb: bool = False,
                  with_masks: bool = True) -> OfficialSequence:
    """Reads one sequence of an official-layout folder.

    Args:
      root: the split folder (holding `JPEGImages/`, `Flows_gap1/`, ...).
      name: sequence folder name; its first character is the object count.
      gaps: flow gaps to read (each falls back to the negated opposite gap where missing).
      resolution: `(H, W)` to resize to (flow bilinear with vectors scaled, masks bilinear then
        thresholded, as the official loader), or None to keep the stored size, in which case
        every flow and mask must have the same size.
      with_rgb: also read `JPEGImages/<seq>/<frame>.jpg`.
      with_masks: read the amodal masks (a flow-only copy can skip them; masks are then empty).

    Returns:
      An `OfficialSequence`.  Raises `LayoutError` / `flow_io.FlowFileError` naming the file.
    """
    num_objects = num_objects_from_name(name) if with_masks else 0
    frames = list_frames(root, name)
    flows = {}
    for gap in gaps:
        # Every file of a sequence must have the same size, also when resizing (a file of
        # another size is a corrupt or misplaced file, not something to resize away).
        per_frame, paths = zip(*(read_gap_flow(root, name, frame, gap) for frame in frames))
        flow = _stack_same_shape(list(per_frame), list(paths), "flow")
        if resolution is not None:
            flow = np.stack([resample.resize_flow(f, *resolution) for f in flow])
        flows[int(gap)] = flow.astype(np.float32)
    first = next(iter(flows.values())) if flows else None
    grid = tuple(first.shape[1:3]) if first is not None else resolution
    if with_masks:
        per_frame = [read_amodal_masks(root, name, f, num_objects) for f in frames]
        paths = [os.path.join(root, AMODAL_DIR, name, f"1_{f}.png") for f in frames]
        amodal = _stack_same_shape(per_frame, paths, "amodal mask")
        if resolution is not None:
            amodal = _resize_masks(amodal, resolution)
        if grid is not None and amodal.shape[1:3] != grid:
            raise LayoutError(f"{paths[0]}: masks of size {amodal.shape[1:3]} but flows of size "
                              f"{grid} in sequence {name!r}; pass a resolution to resize both")
    else:
        amodal = np.zeros((len(frames),) + tuple(grid or (0, 0)) + (0,), bool)
    rgb = None
    if with_rgb:
        paths = [os.path.join(root, IMAGE_DIR, name, f + ".jpg") for f in frames]
        rgb = _stack_same_shape([read_rgb(p, resolution) for p in paths], paths, "frame")
        if grid is not None and rgb.shape[1:3] != grid:
            raise LayoutError(f"{paths[0]}: frames of size {rgb.shape[1:3]} but flows of size "
                              f"{grid} in sequence {name!r}; pass a resolution to resize both")
    return OfficialSequence(name=name, frames=tuple(frames), flows=flows, amodal=amodal,
                            modal=ground_truth_modal(amodal), rgb=rgb)
