"""Rendering: back-to-front compositing, masks and the exact flow of the visible surface.

Per frame and layer, the renderer finds the layer's image box, looks up canonical
coordinates of the pixels in it (a single `warpPerspective` for pure homographies, the
layer's exact inverse map plus `remap` otherwise) and blends the texture by its coverage.
Masks and flow are evaluated at output pixel centres: the amodal mask of a layer is its
coverage >= 0.5, the visible layer of a pixel is the front-most covering one, and the flow of
a pixel is that layer's `forward(t +- 1, inverse(t, p)) - p` (homographies in closed form).

Ends of the sequence: `flow_fwd[T-1] = -flow_bwd[T-1]` and `flow_bwd[0] = -flow_fwd[0]`,
what the official loader substitutes when a gap's file is missing.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from oclr_jax.data.synth.backgrounds import Layer, VideoBackground, estimate_flows
from oclr_jax.data.synth.geometry import apply_homography, frame_runs, homography_flow_grid, pixel_grid_matrix
from oclr_jax.data.synth.plan import SequenceSpec
from oclr_jax.data.synth.sampling import blend, sample_sequence
from oclr_jax.data.synth.scene import RenderOptions, Scene, build_scene

GENERATOR_VERSION = 2  # 2: cameras kept away from the horizon (bounded backgrounds)
BACKGROUND = -1  # label of background pixels in the visible-layer map


@dataclasses.dataclass
class SyntheticSequence:
    """One rendered sequence (n objects, T frames, H x W).

    Attributes:
      rgb: `(T, H, W, 3)` uint8.
      flow_fwd: `(T, H, W, 2)` float32, frame t -> t+1 (last frame: -flow_bwd).
      flow_bwd: `(T, H, W, 2)` float32, frame t -> t-1 (first frame: -flow_fwd).
      amodal: `(T, H, W, n)` bool; channel k = object k+1; a higher channel is in front.
      modal: `(T, H, W, n)` bool; visible parts (disjoint; occluder pixels belong to none).
      order: `(n,)` int depth rank per channel, 0 = nearest (`n-1-k`; the model's convention).
      occluder: `(T, H, W)` bool; visible pixels of the artificial occluder.
      name: folder name, starting with the object count.
      metadata: JSON-friendly description (spec, options, objects, motions, seeds).
    """

    rgb: np.ndarray
    flow_fwd: np.ndarray
    flow_bwd: np.ndarray
    amodal: np.ndarray
    modal: np.ndarray
    order: np.ndarray
    occluder: np.ndarray
    name: str
    metadata: dict


def _pair_flows(moved_next, moved_previous, pixels, frames, num_frames):
    """Forward and backward flow from the positions in the next and previous frames; the
    ends take the negated opposite flow (the official loader's substitute).  `frames` is
    sorted, so the first and last frames are runs at the ends."""
    fwd = np.subtract(moved_next, pixels, out=moved_next)
    bwd = np.subtract(moved_previous, pixels, out=moved_previous)
    first_end, last_start = np.searchsorted(frames, [1, num_frames - 1])
    np.negative(bwd[last_start:], out=fwd[last_start:])
    np.negative(fwd[:first_end], out=bwd[:first_end])
    return fwd, bwd


def _layer_flow(layer: Layer, frames: np.ndarray, pixels: np.ndarray, canonical: np.ndarray | None,
                num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact flow `(N, 2)` forward and backward of `pixels (N, 2)` seen on `layer` in `frames (N,)`."""
    motion = layer.motion
    following = np.minimum(frames + 1, num_frames - 1)
    preceding = np.maximum(frames - 1, 0)
    if hasattr(motion, "forward_at"):  # spline-deformed: the whole sequence in one pass
        return _pair_flows(motion.forward_at(following, canonical), motion.forward_at(preceding, canonical),
                           pixels, frames, num_frames)
    moved_next, moved_previous = np.empty_like(pixels), np.empty_like(pixels)
    for t, start, stop in frame_runs(frames):  # frames arrive sorted
        rows = slice(start, stop)
        if motion.homography(t) is not None:
            undo = motion.inverse_homography(t)
            for other, out in ((min(t + 1, num_frames - 1), moved_next), (max(t - 1, 0), moved_previous)):
                out[rows] = apply_homography(motion.homography(other) @ undo, pixels[rows])
        else:
            points = canonical[rows] if canonical is not None else motion.inverse(t, pixels[rows])
            moved_next[rows] = motion.forward(min(t + 1, num_frames - 1), points)
            moved_previous[rows] = motion.forward(max(t - 1, 0), points)
    return _pair_flows(moved_next, moved_previous, pixels, frames, num_frames)


def _background_flow(scene: Scene, t: int, pixels: np.ndarray, patch, flow_fwd, flow_bwd) -> None:
    """Writes the background's flow for the whole of frame t into `flow_fwd/bwd (H, W, 2)`."""
    num_frames = scene.options.frames
    background = scene.background
    if isinstance(background, VideoBackground):
        flow_fwd[:], flow_bwd[:] = background.flow_fwd[t], background.flow_bwd[t]
        return
    motion = background.motion
    if motion.homography(t) is not None:
        for other, out in ((t + 1, flow_fwd), (t - 1, flow_bwd)):
            if 0 <= other < num_frames:
                homography_flow_grid(motion.homography(other) @ motion.inverse_homography(t), pixels, out)
    else:
        canonical = patch.canonical if patch is not None else motion.inverse(t, pixels)
        for other, out in ((t + 1, flow_fwd), (t - 1, flow_bwd)):
            if 0 <= other < num_frames:
                moved = motion.forward(other, canonical)
                out[:] = np.subtract(moved, pixels, out=moved).reshape(out.shape)
    if t == num_frames - 1:
        np.negative(flow_bwd, out=flow_fwd)
    if t == 0:
        np.negative(flow_fwd, out=flow_bwd)


def render_scene(scene: Scene) -> SyntheticSequence:
    """Renders every frame of a scene (see the module docstring)."""
    options = scene.options
    height, width = options.resolution
    num_frames, num_objects = options.frames, len(scene.objects)
    video = scene.background if isinstance(scene.background, VideoBackground) else None
    same_grid = options.render_size == tuple(options.resolution)
    # Every layer sampled in every frame: on the render grid (RGB) and the output grid (masks).
    labelled = [(label, layer) for label, layer in enumerate(scene.layers, start=BACKGROUND) if layer is not video]
    drawn = {label: sample_sequence(layer, pixel_grid_matrix(options.render_scale), options.render_size,
                                    num_frames) for label, layer in labelled}
    seen = drawn if same_grid else {
        label: sample_sequence(layer, np.eye(3), (height, width), num_frames)
        for label, layer in labelled if not layer.opaque}

    rgb = np.zeros((num_frames, height, width, 3), np.uint8)
    visible = np.full((num_frames, height, width), BACKGROUND, np.int8)
    amodal = np.zeros((num_objects, num_frames, height, width), bool)  # channel-major: cheap writes
    for t in range(num_frames):
        canvas = video.frames[t].copy() if video else drawn[BACKGROUND][t].rgba  # (H, W, 3)
        for label, layer in labelled:
            if layer.opaque or drawn[label][t] is None:
                continue
            blend(canvas, drawn[label][t])
            patch = seen[label][t]
            if patch is not None:
                covered = patch.rgba[..., 3] >= 128
                patch.window(visible[t])[covered] = label
                if label < num_objects:
                    patch.window(amodal[label, t])[:] = covered
        rgb[t] = canvas if same_grid else cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
    if options.flow_mode == "gt":
        flow_fwd, flow_bwd = _exact_flows(scene, visible, drawn if same_grid else {}, seen)
    else:
        flow_fwd, flow_bwd = estimate_flows(rgb)
    modal = _channels_last([visible == k for k in range(num_objects)], visible.shape)
    return SyntheticSequence(
        rgb=rgb, flow_fwd=flow_fwd, flow_bwd=flow_bwd,
        amodal=_channels_last(list(amodal), visible.shape), modal=modal,
        order=np.arange(num_objects)[::-1].copy(), occluder=visible == num_objects,
        name=scene.spec.name, metadata=_metadata(scene))


def _visible_points(layer_patches: list, visible: np.ndarray, label: int, with_canonical: bool):
    """Frames `(N,)`, pixels `(N, 2)` float64 and, if asked, exact canonical coordinates
    `(N, 2)` of every pixel where `label` is the visible layer, frame by frame."""
    per_frame = []  # (t, row-major indices in the patch's box, their canonical coordinates, patch)
    for t, patch in enumerate(layer_patches):
        if patch is None:
            continue
        seen = (patch.window(visible[t]) == label).ravel()
        flat = np.flatnonzero(seen)
        canonical = None
        if with_canonical:  # (x, y) pairs as complex items: gathering rows is much slower
            pairs = np.ascontiguousarray(patch.canonical).view(np.complex128).reshape(-1)
            if patch.exact_pixels is None:
                canonical = pairs[flat]
            else:  # exact only where coverage can reach: a superset of the visible pixels
                canonical = pairs[seen[patch.exact_pixels]]
                if len(canonical) != len(flat):
                    raise RuntimeError(f"frame {t}: a visible pixel lies outside the exactly inverted set")
        per_frame.append((t, flat, canonical, patch))
    counts = [len(flat) for _, flat, _, _ in per_frame]
    if not sum(counts):
        return None
    flat = np.concatenate([flat for _, flat, _, _ in per_frame])
    rows, cols = np.divmod(flat, np.repeat([p.shape[1] for *_, p in per_frame], counts))
    rows += np.repeat([p.top for *_, p in per_frame], counts)
    cols += np.repeat([p.left for *_, p in per_frame], counts)
    frames = np.repeat([t for t, *_ in per_frame], counts)
    canonical = (np.concatenate([c for _, _, c, _ in per_frame]).view(np.float64).reshape(-1, 2)
                 if with_canonical else None)
    return frames, np.stack([cols, rows], 1).astype(np.float64), canonical


def _channels_last(planes: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """`(T, H, W, n)` bool from n `(T, H, W)` bool planes.  OpenCV interleaves them tens of
    times faster than numpy copies with a last axis of 1-3 elements."""
    if not planes:
        return np.zeros(shape + (0,), bool)
    rows = [np.ascontiguousarray(p).view(np.uint8).reshape(-1, shape[-1]) for p in planes]
    merged = cv2.merge(rows) if len(rows) > 1 else rows[0]
    return merged.reshape(shape + (len(planes),)).view(bool)


def _exact_flows(scene: Scene, visible: np.ndarray, drawn: dict, seen: dict):
    """`(T, H, W, 2)` forward and backward flow of the visible surface."""
    num_frames, height, width = visible.shape
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    flow_fwd = np.zeros((num_frames, height, width, 2), np.float32)
    flow_bwd = np.zeros_like(flow_fwd)
    background = drawn.get(BACKGROUND, [None] * num_frames)
    for t in range(num_frames):
        _background_flow(scene, t, pixels, background[t], flow_fwd[t], flow_bwd[t])
    for label, layer in enumerate(scene.layers[1:]):
        patches = seen[label]
        with_canonical = any(p is not None and p.canonical is not None for p in patches)
        found = _visible_points(patches, visible, label, with_canonical)
        if found is None:
            continue
        frames, points, canonical = found
        fwd, bwd = _layer_flow(layer, frames, points, canonical, num_frames)
        at = (frames * height + points[:, 1].astype(np.int64)) * width + points[:, 0].astype(np.int64)
        for out, flow in ((flow_fwd, fwd), (flow_bwd, bwd)):  # (u, v) pairs as complex items
            out.view(np.complex64).reshape(-1)[at] = flow.astype(np.float32).view(np.complex64).reshape(-1)
    return flow_fwd, flow_bwd


def _metadata(scene: Scene) -> dict:
    spec, options = scene.spec, scene.options
    return {
        "generator_version": GENERATOR_VERSION,
        "name": spec.name,
        "spec": spec.to_dict(),
        "options": options.to_dict(),
        "num_objects": spec.num_objects,
        "order": list(range(spec.num_objects - 1, -1, -1)),
        "order_convention": "order[k] is the depth rank of channel k (object k+1), 0 = nearest; "
                            "a higher channel is in front",
        "flow": ("exact ground truth of the visible surface" if options.flow_mode == "gt"
                 else "OpenCV DIS estimated on the rendered RGB"),
        "flow_ends": "flow_fwd[T-1] = -flow_bwd[T-1], flow_bwd[0] = -flow_fwd[0]",
        "background": scene.background.info,
        "objects": [layer.info for layer in scene.objects],
        "occluder": scene.occluder.info if scene.occluder else None,
        "stationary": ({"object": spec.stationary_object + 1,
                        "frames": list(spec.stationary_transitions(options.frames))}
                       if spec.stationary else None),
    }


def render_sequence(spec: SequenceSpec, options: RenderOptions | None = None) -> SyntheticSequence:
    """Builds and renders one sequence; a pure function of `(spec, options)`."""
    options = options or RenderOptions()
    return render_scene(build_scene(spec, options))
