"""User asset folders: texture images, binary silhouette masks and background videos.

Folders are listed once per process (sorted, so every worker and machine sees the same
order) and a file is picked by the sequence's random stream.  A file that cannot be decoded,
or a mask with no foreground, is skipped with a warning naming it, and the next file in the
list is tried; a folder with nothing usable is a clear error.  Nothing is ever replaced by
an empty sprite silently.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Callable, TypeVar

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MIN_VIDEO_FRAMES = 2
_bad_files: set[str] = set()  # files already reported in this process

T = TypeVar("T")


class AssetWarning(UserWarning):
    """A user asset was skipped (corrupt, unreadable or empty)."""


@functools.lru_cache(maxsize=16)
def list_images(folder: str) -> tuple[str, ...]:
    """Image files under `folder` (recursively), sorted; raises if there are none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"asset folder {folder} does not exist")
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise ValueError(f"asset folder {folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return tuple(sorted(found))


@functools.lru_cache(maxsize=16)
def list_videos(folder: str) -> tuple[str, ...]:
    """Video files and frame folders (sub-folders holding images) under `folder`, sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"background video folder {folder} does not exist")
    found = []
    for root, _dirs, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS)]
        if root != folder and any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            found.append(root)
    if not found:
        raise ValueError(f"background video folder {folder} holds no videos "
                         f"({', '.join(VIDEO_EXTENSIONS)}) or folders of frames")
    return tuple(sorted(found))


def _skip(path: str, kind: str, reason: str) -> None:
    if path not in _bad_files:
        _bad_files.add(path)
        warnings.warn(f"skipping {kind} {path}: {reason}", AssetWarning, stacklevel=3)


def pick(rng: np.random.Generator, paths: tuple[str, ...], kind: str,
         load: Callable[[str], T]) -> tuple[str, T]:
    """Loads a random file, trying the following ones (in order) if it is unusable."""
    start = int(rng.integers(len(paths)))
    for offset in range(len(paths)):
        path = paths[(start + offset) % len(paths)]
        if path in _bad_files:
            continue
        try:
            return path, load(path)
        except (OSError, ValueError, cv2.error) as e:
            _skip(path, kind, str(e))
    folder = os.path.commonpath(list(paths)) if paths else "?"
    raise ValueError(f"no usable {kind} file among the {len(paths)} under {folder} "
                     f"(every one was corrupt, unreadable or empty)")


def read_texture(path: str) -> np.ndarray:
    """An RGB uint8 image; raises ValueError if it cannot be decoded or is tiny."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("cannot decode image")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} is too small")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_silhouette(path: str) -> np.ndarray:
    """A binary mask as uint8 {0, 255} (any non-zero pixel is foreground: palette PNGs of
    YouTube-VOS work as they are); raises ValueError if unreadable or empty."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("cannot decode mask image")
    if image.ndim == 3:
        image = image[..., :3].max(-1)
    mask = np.where(image > 0, 255, 0).astype(np.uint8)
    if np.count_nonzero(mask) < 16:
        raise ValueError("mask has fewer than 16 foreground pixels")
    return mask


def read_video_frames(path: str, max_frames: int) -> np.ndarray:
    """The first `max_frames` RGB frames `(N, H, W, 3)` of a video file or of a folder of
    frame images (sorted by name); raises ValueError if fewer than 2 can be read."""
    frames = []
    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        for name in names[:max_frames]:
            frames.append(read_texture(os.path.join(path, name)))
    else:
        capture = cv2.VideoCapture(path)
        try:
            if not capture.isOpened():
                raise ValueError("cannot open video")
            while len(frames) < max_frames:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
    if len(frames) < MIN_VIDEO_FRAMES:
        raise ValueError(f"video has {len(frames)} readable frames, need at least {MIN_VIDEO_FRAMES}")
    shape = frames[0].shape
    if any(f.shape != shape for f in frames):
        raise ValueError("video frames differ in size")
    return np.stack(frames)
