"""Frames in, frame pairs out: where the sequences are, which pairs each gap needs, what to call
each output file.  The rules are those of the official flow scripts:

* frames of a sequence are the `*.png` and `*.jpg` files of its folder (lower-case extensions,
  as the official glob), sorted by name;
* for a gap G (positive or negative), frame j is paired with frame j + G whenever that exists,
  and the flow (from frame j to frame j + G) is saved as `Flows_gap{G}/<seq>/<stem of frame j>.flo`.
  So `Flows_gap1/<seq>/00000.flo` is the forward flow 0 -> 1, `Flows_gap-1/<seq>/00001.flo` the
  backward flow 1 -> 0, the last frame has no gap +1 file and the first no gap -1 file.

Inputs: a dataset root holding `JPEGImages/480p/<seq>/` (DAVIS) or `JPEGImages/<seq>/`, a folder
of sequence folders, one sequence folder, or a video file (frames named 00000, 00001, ...).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
from typing import Callable, Optional, Sequence

import numpy as np

from oclr_jax.errors import UserError

FRAME_PATTERNS = ("*.png", "*.jpg")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")


class FramesError(UserError, ValueError):
    """The input frames cannot be used; the message names the file or folder and the fix."""


@dataclasses.dataclass(frozen=True)
class FrameSequence:
    """One sequence to process.

    Attributes:
      name: output sub-folder name.
      frame_names: output file stems, in frame order.
      read: index -> (H, W, 3) uint8 RGB frame.
      source: the folder or video it comes from (for messages).
      size: (H, W) of every frame.
    """

    name: str
    frame_names: tuple
    read: Callable[[int], np.ndarray]
    source: str
    size: tuple


@dataclasses.dataclass(frozen=True)
class Pair:
    """Frame `first` -> frame `first + gap` of `sequence`, written to `Flows_gap{gap}/<seq>/<out_stem>.flo`."""

    sequence: str
    gap: int
    first: int
    out_stem: str

    @property
    def second(self) -> int:
        return self.first + self.gap


def flow_dir_name(gap: int) -> str:
    """The official output folder of a gap: `Flows_gap1`, `Flows_gap-1`, ..."""
    return f"Flows_gap{gap}"


def output_path(out_root: str, pair: Pair) -> str:
    return os.path.join(out_root, flow_dir_name(pair.gap), pair.sequence, pair.out_stem + ".flo")


def frame_files(folder: str) -> list[str]:
    """The frames of a sequence folder as the official script finds them: `*.png` + `*.jpg`, sorted."""
    files = []
    for pattern in FRAME_PATTERNS:
        files += glob.glob(os.path.join(glob.escape(folder), pattern))
    return sorted(files)


def plan_pairs(name: str, frame_names: Sequence[str], gaps: Sequence[int]) -> list[Pair]:
    """Every pair of one sequence for `gaps`, ordered by the later frame they need (so frames can
    be read once, in order)."""
    n = len(frame_names)
    pairs = [Pair(name, gap, j, frame_names[j]) for gap in gaps for j in range(n) if 0 <= j + gap < n]
    return sorted(pairs, key=lambda p: (max(p.first, p.second), p.gap))


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, decoded by PIL as the official script does (grey or RGBA converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise FramesError(f"{path}: cannot read frame image ({type(error).__name__}: {error})") from error


def image_size(path: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise FramesError(f"{path}: cannot read frame image ({type(error).__name__}: {error})") from error


def folder_sequence(folder: str, name: Optional[str] = None) -> FrameSequence:
    """A sequence folder -> FrameSequence.  Checks there are >= 2 frames, all of one size."""
    files = frame_files(folder)
    if not files:
        others = sorted(os.listdir(folder))[:5]
        raise FramesError(f"{folder}: no frames (looked for {' and '.join(FRAME_PATTERNS)}, lower-case as "
                          f"the official script; found {others or 'an empty folder'})")
    if len(files) < 2:
        raise FramesError(f"{files[0]}: the only frame of sequence {os.path.basename(folder)!r}; flow needs "
                          "at least 2 frames")
    sizes = [image_size(f) for f in files]
    for path, size in zip(files, sizes):
        if size != sizes[0]:
            raise FramesError(f"{path}: frame of {size[0]}x{size[1]} in a sequence of {sizes[0][0]}x"
                              f"{sizes[0][1]} frames ({files[0]}); every frame of a sequence must have "
                              "the same size")
    stems = tuple(os.path.splitext(os.path.basename(f))[0] for f in files)
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise FramesError(f"{folder}: frames {duplicates[:3]} exist as both .png and .jpg; their flow files "
                          "would overwrite each other")
    return FrameSequence(name or os.path.basename(os.path.normpath(folder)), stems,
                     lambda i: _checked(read_image(files[i]), files[i], sizes[0]), folder, sizes[0])


def _checked(frame: np.ndarray, path: str, size: tuple) -> np.ndarray:
    if frame.shape[:2] != tuple(size):
        raise FramesError(f"{path}: decoded to {frame.shape[0]}x{frame.shape[1]}, expected {size[0]}x{size[1]}")
    return frame


class VideoReader:
    """Frames of a video read forward with a small cache: `read(i)` for non-decreasing windows."""

    def __init__(self, path: str, cache: int = 64):
        self.path, self.cache_size = path, cache
        self.cache: collections.OrderedDict = collections.OrderedDict()
        self._open()

    def _open(self):
        import cv2

        self.capture = cv2.VideoCapture(self.path)
        if not self.capture.isOpened():
            raise FramesError(f"{self.path}: OpenCV cannot open this video (unsupported or corrupt file)")
        self.next_index = 0

    def read(self, index: int) -> np.ndarray:
        import cv2

        if index in self.cache:
            return self.cache[index]
        if index < self.next_index:  # behind the cache: start again (not reached in pair order)
            self.capture.release()
            self._open()
        while self.next_index <= index:
            ok, frame = self.capture.read()
            if not ok:
                raise FramesError(f"{self.path}: cannot decode frame {self.next_index}")
            self.cache[self.next_index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            self.next_index += 1
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return self.cache[index]


def video_sequence(path: str, max_frames: Optional[int] = None) -> FrameSequence:
    """A video file -> FrameSequence with frames named 00000, 00001, ... (counted by decoding)."""
    import cv2

    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise FramesError(f"{path}: OpenCV cannot open this video (unsupported or corrupt file)")
    count, size = 0, None
    while max_frames is None or count < max_frames:
        ok = capture.grab()
        if not ok:
            break
        if size is None:
            ok, frame = capture.retrieve()
            if not ok:
                break
            size = frame.shape[:2]
        count += 1
    capture.release()
    if count < 2:
        raise FramesError(f"{path}: {count} readable frame(s); flow needs at least 2")
    reader = VideoReader(path)
    names = tuple(f"{i:05d}" for i in range(count))
    return FrameSequence(os.path.splitext(os.path.basename(path))[0], names, reader.read, path, tuple(size))


def find_sequences(path: str, max_frames: Optional[int] = None) -> tuple[list[FrameSequence], Optional[str]]:
    """Sequences of an input path, and the dataset root to write to by default (None when the
    input is not a dataset layout and the caller must be told where to write)."""
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() not in VIDEO_EXTENSIONS:
            raise FramesError(f"{path}: not a video ({'/'.join(VIDEO_EXTENSIONS)}) nor a frames folder")
        return [video_sequence(path, max_frames)], None
    if not os.path.isdir(path):
        raise FramesError(f"{path}: no such file or folder")
    for images_dir in (os.path.join(path, "JPEGImages", "480p"), os.path.join(path, "JPEGImages")):
        if os.path.isdir(images_dir) and _subfolders(images_dir):
            return [folder_sequence(os.path.join(images_dir, d)) for d in _subfolders(images_dir)], path
    if frame_files(path):
        return [folder_sequence(path)], None
    folders = _subfolders(path)
    if not folders:
        found = sorted(os.listdir(path))[:5]
        raise FramesError(f"{path}: no frames (looked for {' and '.join(FRAME_PATTERNS)}, lower-case as the "
                          f"official script; found {found or 'an empty folder'}) and no sequence folders; "
                          "expected a dataset root with JPEGImages/, a folder of sequence folders, a sequence "
                          "folder or a video")
    return [folder_sequence(os.path.join(path, d)) for d in folders], None


def _subfolders(folder: str) -> list[str]:
    # Our own output folders are skipped, so --out may be the input folder.
    return sorted(d for d in os.listdir(folder)
                  if os.path.isdir(os.path.join(folder, d)) and not d.startswith(".")
                  and not d.startswith(("Flows_gap", "FlowImages_gap")))
