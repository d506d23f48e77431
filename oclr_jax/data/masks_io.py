"""Mask PNGs: indexed (palette) label maps in the DAVIS layout, and binary masks.

A DAVIS-style mask is an 8-bit palette ("P") PNG whose pixel values are object ids (0
background, 1..N objects, 255 void in DAVIS 2017 ground truth); the palette only colours
them.  The DAVIS 2016/2017 evaluators read the ids, Motion Grouping's MoCA evaluator reads the
colours (it averages the BGR channels), so binary outputs use the official OCLR colour
white for id 1 (`data/colour_palette.json`: DAVIS16, SegTrackv2, FBMS, MoCA) and multi-object
outputs the standard DAVIS/PASCAL palette (id 1 [128, 0, 0], 2 [0, 128, 0], 3 [128, 128, 0]).

Every writer is atomic (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from oclr_jax.atomic import atomic_write_bytes
from oclr_jax.errors import UserError


class MaskFileError(UserError, ValueError):
    """A mask file is missing, undecodable, or not the kind of image expected."""


def davis_palette(num_colours: int = 256) -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map: id -> RGB by bit interleaving.  (N, 3) uint8."""
    palette = np.zeros((num_colours, 3), np.uint8)
    for index in range(num_colours):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def binary_palette() -> np.ndarray:
    """Id 0 black, id 1 white (the official OCLR colour of single-foreground datasets)."""
    palette = davis_palette()
    palette[1] = (255, 255, 255)
    return palette


def encode_indexed_png(labels: np.ndarray, palette: Optional[np.ndarray] = None) -> bytes:
    """PNG bytes of a (H, W) label map (ids 0..255) with a palette (default DAVIS)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be (H, W); got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label ids must lie in 0..255; got {labels.min()}..{labels.max()}")
    palette = davis_palette() if palette is None else np.asarray(palette, np.uint8)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_indexed_png(path: str, labels: np.ndarray, palette: Optional[np.ndarray] = None) -> None:
    """Writes a (H, W) label map as an indexed PNG, atomically."""
    atomic_write_bytes(path, encode_indexed_png(labels, palette))


def write_binary_png(path: str, mask: np.ndarray) -> None:
    """Writes a (H, W) bool mask as an 8-bit grayscale PNG (0 / 255), atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W); got shape {mask.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask.astype(bool), 255, 0).astype(np.uint8), mode="L").save(
        buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _open(path: str):
    if not os.path.isfile(path):
        raise MaskFileError(f"{path}: mask file does not exist")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise MaskFileError(f"{path}: cannot decode mask image ({e})") from e
    return image


def read_label_png(path: str) -> np.ndarray:
    """Object ids of a label PNG.  Returns (H, W) uint8.

    Palette PNGs give their indices (the DAVIS convention); 8-bit grayscale PNGs give their
    values; colour PNGs are mapped back to ids through the DAVIS palette, and a colour outside
    it is an error naming the file.
    """
    image = _open(path)
    if image.mode == "P":
        return np.asarray(image, np.uint8)
    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L"), np.uint8)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"), np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        palette = davis_palette().astype(np.int64)
        lookup = {int((r << 16) | (g << 8) | b): i for i, (r, g, b) in enumerate(palette)}
        lookup[(255 << 16) | (255 << 8) | 255] = 1  # white: the official binary colour.
        colours, inverse = np.unique(code, return_inverse=True)
        unknown = [c for c in colours.tolist() if c not in lookup]
        if unknown:
            c = unknown[0]
            raise MaskFileError(
                f"{path}: colour {(c >> 16, (c >> 8) & 255, c & 255)} is not a DAVIS palette "
                "colour; save label maps as indexed (palette) PNGs")
        ids = np.array([lookup[c] for c in colours.tolist()], np.uint8)
        return ids[inverse.reshape(code.shape)]
    raise MaskFileError(f"{path}: expected an 8-bit palette, grayscale or RGB PNG, "
                        f"found mode {image.mode!r}")


def read_binary_png(path: str) -> np.ndarray:
    """Foreground of a binary mask PNG.  (H, W) bool.

    - palette PNGs: id != 0;
    - grayscale or colour PNGs stored 0/255 (DAVIS 2016, the official white-on-black
      annotations): value > 127.5, of the gray value or of the mean of R, G and B, which is
      how the official OCLR and Motion Grouping evaluators read them;
    - grayscale or colour PNGs stored 0/1 (a common near-miss: every value is 0 or 1, some 1):
      value 1 is foreground, with a warning; read with the 127.5 rule they would be empty and
      score J = 0 without a word;
    - a colour PNG with pixels that are neither dark nor light in all channels alike (e.g. a
      mask drawn in green): an error naming the colour, because the mean rule would silently
      drop or keep such pixels depending on the colour.
    """
    image = _open(path)
    if image.mode == "P":
        return np.asarray(image, np.uint8) != 0
    if image.mode not in ("L", "1", "RGB", "RGBA", "I;16", "I"):
        raise MaskFileError(f"{path}: unsupported mask image mode {image.mode!r}")
    if image.mode in ("RGB", "RGBA"):
        values = np.asarray(image.convert("RGB"), np.float64)
    elif image.mode in ("I;16", "I"):
        values = np.asarray(image, np.float64) / 257.0  # 16-bit 0/65535 -> 0/255.
    else:
        values = np.asarray(image.convert("L"), np.float64)
    if values.size and values.max() == 1.0 and image.mode != "1":
        warnings.warn(f"{path}: mask stored as 0/1 (not 0/255); reading value 1 as foreground",
                      stacklevel=2)
        values = values * 255.0
    if values.ndim == 3:
        by_mean = values.mean(axis=-1) > 127.5
        by_any = (values > 127.5).any(axis=-1)
        # Only clearly coloured pixels count (channels far apart), not anti-aliasing noise.
        coloured = values.max(axis=-1) - values.min(axis=-1) > 64
        disagree = (by_mean != by_any) & coloured
        if disagree.any():
            y, x = np.argwhere(disagree)[0]
            rgb = tuple(int(v) for v in values[y, x])
            raise MaskFileError(
                f"{path}: colour mask with {int(disagree.sum())} pixels of colour {rgb} at "
                f"(x={x}, y={y}) that are neither black nor white; binary masks must be white "
                "on black (or an indexed palette PNG with id 1 for the object)")
        return by_mean
    return values > 127.5
