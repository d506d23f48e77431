"""Textures: procedural by default, or crops of user images (e.g. PASS), plus colour jitter.

Procedural textures mix multi-octave value noise with a random pattern (stripes, checks,
blobs or cells) through a random colour palette.  They are busy everywhere on purpose: flow
is only observable where there is texture, and the warping tests rely on it.
"""

from __future__ import annotations

import cv2
import numpy as np

PATTERNS = ("noise", "stripes", "checks", "blobs", "cells")


def _value_noise(rng: np.random.Generator, height: int, width: int, octaves: int,
                 base_cells: float) -> np.ndarray:
    """Sum of bicubically upsampled random grids, stretched to `(H, W)` float32 in [0, 1]."""
    total = np.zeros((height, width), np.float32)
    amplitude = 1.0
    cells = base_cells
    for _ in range(octaves):
        grid_h = max(2, int(round(height / cells)))
        grid_w = max(2, int(round(width / cells)))
        grid = rng.random((grid_h, grid_w), dtype=np.float32)
        octave = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        total += np.multiply(octave, amplitude, out=octave)
        amplitude *= 0.55
        cells /= 2.0
    low, high = cv2.minMaxLoc(total)[:2]
    total -= np.float32(low)
    total *= np.float32(1.0 / max(high - low, 1e-6))
    return total


def _pattern(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """A scalar pattern `(H, W)` float32 in [0, 1]."""
    # Coordinates as a row and a column: every expression below is separable or broadcast.
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    if kind == "noise":
        return _value_noise(rng, height, width, 4, rng.uniform(6, 24))
    if kind in ("stripes", "checks"):
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(5, 18)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        wobble = 4.0 * _value_noise(rng, height, width, 2, 20.0)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * (along + wobble) / period)
        if kind == "checks":
            across = -xs * np.sin(angle) + ys * np.cos(angle)
            pattern = pattern * (0.5 + 0.5 * np.sin(2 * np.pi * across / rng.uniform(5, 18)))
        return pattern
    if kind == "blobs":
        canvas = _value_noise(rng, height, width, 2, 16.0) * 0.3
        for _ in range(int(rng.integers(8, 30))):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(2, max(3, width // 6))), int(rng.integers(2, max(3, height // 6))))
            cv2.ellipse(canvas, centre, axes, rng.uniform(0, 180), 0, 360, float(rng.random()), -1)
        return canvas
    if kind == "cells":
        # Voronoi-like cells: distance to random seeds, folded into a sawtooth.
        num_seeds = int(rng.integers(6, 24))
        seeds = rng.random((num_seeds, 2)) * [width, height]
        small = np.mgrid[0:height:4, 0:width:4].astype(np.float32)
        distance = np.hypot(small[1] - seeds[0, 0], small[0] - seeds[0, 1])
        for seed_x, seed_y in seeds[1:]:
            np.minimum(distance, np.hypot(small[1] - seed_x, small[0] - seed_y), out=distance)
        distance = cv2.resize(distance.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        return (distance / rng.uniform(6, 16)) % 1.0
    raise ValueError(f"unknown texture pattern {kind!r}; expected one of {PATTERNS}")


def procedural_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random colour texture `(H, W, 3)` uint8."""
    kind = PATTERNS[int(rng.integers(len(PATTERNS)))]
    scalar = _pattern(rng, kind, height, width)
    detail = _value_noise(rng, height, width, 3, rng.uniform(3, 8))
    mixed = np.multiply(scalar, 0.75)  # float64 for the stripe patterns, as they come
    mixed += np.multiply(detail, 0.25, out=detail)
    mixed *= 255.0
    levels = np.clip(mixed, 0, 255, out=mixed).astype(np.uint8)
    num_colours = int(rng.integers(2, 5))
    palette = rng.uniform(0, 255, size=(num_colours, 3))
    stops = np.linspace(0, 255, num_colours)
    lookup = np.stack([np.interp(np.arange(256), stops, palette[:, c]) for c in range(3)], -1)
    # (H, W, 3): the palette through a lookup table (OpenCV: numpy is slow with 3 channels).
    rgb = cv2.LUT(cv2.cvtColor(levels, cv2.COLOR_GRAY2RGB), lookup.astype(np.float32).reshape(1, 256, 3))
    tint = _value_noise(rng, height, width, 2, rng.uniform(16, 48))
    brightness = np.multiply(tint, 0.5, out=tint)
    brightness += 0.75  # slow brightness variation over the surface
    rgb = cv2.multiply(rgb, cv2.cvtColor(brightness, cv2.COLOR_GRAY2RGB), dst=rgb)
    return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)


def crop_texture(rng: np.random.Generator, image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A random crop of a user image, resized to `(H, W)` and randomly mirrored."""
    image_h, image_w = image.shape[:2]
    zoom = max(height / image_h, width / image_w) * rng.uniform(1.0, 1.5)
    crop_h = min(image_h, int(np.ceil(height / zoom)))
    crop_w = min(image_w, int(np.ceil(width / zoom)))
    top = int(rng.integers(0, image_h - crop_h + 1))
    left = int(rng.integers(0, image_w - crop_w + 1))
    crop = image[top:top + crop_h, left:left + crop_w]
    interpolation = cv2.INTER_AREA if crop_h > height else cv2.INTER_LINEAR
    crop = cv2.resize(crop, (width, height), interpolation=interpolation)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def sample_colour_jitter(rng: np.random.Generator) -> dict[str, float]:
    """Per-sequence jitter of a background image (brightness, contrast, saturation, hue)."""
    return {
        "brightness": float(rng.uniform(0.75, 1.25)),
        "contrast": float(rng.uniform(0.75, 1.25)),
        "saturation": float(rng.uniform(0.7, 1.3)),
        "hue_shift_degrees": float(rng.uniform(-12, 12)),
    }


def apply_colour_jitter(image: np.ndarray, jitter: dict[str, float]) -> np.ndarray:
    """Applies `sample_colour_jitter` parameters to an RGB uint8 image (lookup tables only)."""
    levels = np.arange(256, dtype=np.float64)
    mean = float(image.mean())
    tone = np.clip(((levels - mean) * jitter["contrast"] + mean) * jitter["brightness"], 0, 255)
    rgb = cv2.LUT(image, tone.astype(np.uint8))
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    hue = np.round(levels + jitter["hue_shift_degrees"] * 256.0 / 360.0) % 256
    saturation = np.clip(levels * jitter["saturation"], 0, 255)
    identity = levels.astype(np.uint8)
    table = np.stack([hue.astype(np.uint8), saturation.astype(np.uint8), identity], -1)[:, None, :]
    return cv2.cvtColor(cv2.LUT(hsv, table), cv2.COLOR_HSV2RGB_FULL)
