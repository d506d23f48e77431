"""Scene assembly: from a `SequenceSpec` to textured layers with motions.

Random streams: the spec's scene seed is split into independent streams for the shape and
motion, and for the look (texture, colours, video), of the background, each object and the
occluder.  So giving a texture or video folder changes appearances only, never geometry.
Canonical textures have one texel per output pixel at unit object scale whatever the render
scale, so the render scale changes nothing but the anti-aliasing of the RGB.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from oclr_jax.data.synth import assets, backgrounds, shapes, trajectories
from oclr_jax.data.synth.backgrounds import Layer, VideoBackground
from oclr_jax.data.synth.geometry import pose_homography, translation
from oclr_jax.data.synth.motion import DeformedHomographyMotion, GluedMotion, HomographyMotion
from oclr_jax.data.synth.plan import SequenceSpec
from oclr_jax.data.synth.spline import thin_plate_field

FLOW_MODES = ("gt", "dis")
OBJECT_RADIUS = 0.35  # largest object radius, as a fraction of the image height
MIN_SPRITE_RADIUS = 8.0  # texels: tiny test images still get well-formed sprites
OBJECT_SCALE_RANGE = (0.5, 1.0)
OCCLUDER_RADIUS_RANGE = (0.1, 0.2)  # fraction of the image height


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    """How sequences are rendered (the spec says what is in them).

    Attributes:
      resolution: `(H, W)` of the outputs (paper: 128x224).
      frames: frames per sequence (paper: 30).
      render_scale: RGB is rendered at `render_scale` times the resolution and area-downsampled
        (anti-aliasing); flow and masks are always evaluated at output pixel centres.
      flow_mode: 'gt' (exact flow of the visible surface) or 'dis' (OpenCV DIS estimated on the
        rendered RGB, as a stand-in for RAFT).
      texture_dir, silhouette_dir, background_video_dir: optional user folders (PASS-like
        images, binary masks, videos or frame folders); procedural defaults when empty.
    """

    resolution: tuple[int, int] = (128, 224)
    frames: int = 30
    render_scale: float = 1.0
    flow_mode: str = "gt"
    texture_dir: str | None = None
    silhouette_dir: str | None = None
    background_video_dir: str | None = None

    def __post_init__(self):
        height, width = self.resolution
        if height < 16 or width < 16:
            raise ValueError(f"resolution must be at least 16x16, got {height}x{width}")
        if self.frames < 2:
            raise ValueError(f"a sequence needs at least 2 frames, got {self.frames}")
        if not self.render_scale >= 1:
            raise ValueError(f"render_scale must be >= 1, got {self.render_scale}")
        if self.flow_mode not in FLOW_MODES:
            raise ValueError(f"flow_mode must be one of {FLOW_MODES}, got {self.flow_mode!r}")

    @property
    def render_size(self) -> tuple[int, int]:
        return tuple(int(round(n * self.render_scale)) for n in self.resolution)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"resolution": list(self.resolution)}


@dataclasses.dataclass
class Scene:
    """Layers back to front: `background`, `objects` (channel k = object k+1; later ones in
    front), then the optional `occluder` on top."""

    spec: SequenceSpec
    options: RenderOptions
    background: Layer | VideoBackground
    objects: list[Layer]
    occluder: Layer | None

    @property
    def layers(self) -> list:
        return [self.background] + self.objects + ([self.occluder] if self.occluder else [])


def _rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    coverage = np.round(alpha * 255).astype(np.uint8)[..., None]
    return np.ascontiguousarray(np.concatenate([rgb, coverage], -1))


def _sprite(rng, kind: str, radius: float, grid_spacing: int, silhouette_dir: str | None):
    if kind == "polygon":
        return shapes.polygon_sprite(rng, radius, grid_spacing)
    if not silhouette_dir:
        return shapes.silhouette_sprite(rng, radius, grid_spacing)

    def load(path):  # reading and fitting both count: an empty fit is skipped too
        return shapes.silhouette_sprite(rng, radius, grid_spacing, assets.read_silhouette(path), path)

    return assets.pick(rng, assets.list_images(silhouette_dir), "silhouette", load)[1]


def _grid_spacing(radius: float) -> int:
    # Three texels per deformation-grid cell at the paper size (the spline is smooth at that
    # scale); finer for small sprites so snapped polygon vertices stay apart.
    return 3 if radius >= 30 else 2 if radius >= 16 else 1


def _rest_on_background(poses: np.ndarray, background_motion, stationary: tuple[int, ...]) -> np.ndarray:
    """Makes an object ride on the background across its stationary transitions.

    The own path `poses` (image space, kept in view) is followed except that, across each
    stationary transition t -> t+1, the object moves exactly as the background does
    (`B_{t+1} B_t^-1`); its own time stands still meanwhile, so the offset then persists.
    """
    carried, out = np.eye(3), []
    for t in range(len(poses)):
        out.append(carried @ poses[t])
        if t in stationary:
            step = background_motion.homography(t + 1) @ background_motion.inverse_homography(t)
            carried = step @ carried
    return np.stack(out)


def _object(rng, look_rng, spec: SequenceSpec, channel: int, options: RenderOptions, background) -> Layer:
    height = options.resolution[0]
    radius = max(OBJECT_RADIUS * height, MIN_SPRITE_RADIUS)
    spacing = _grid_spacing(radius)
    sprite = _sprite(rng, spec.sprite_kind, radius, spacing, options.silhouette_dir)
    size = sprite.alpha.shape[0]
    rgb, texture_source = backgrounds.texture_image(look_rng, size, size, options.texture_dir)
    stationary = spec.stationary_transitions(options.frames) if spec.stationary_object == channel else ()
    tau = trajectories.object_time(options.frames, stationary)
    pixels_per_texel = rng.uniform(*OBJECT_SCALE_RANGE) * OBJECT_RADIUS * height / radius
    poses = trajectories.object_poses(rng, tau, options.resolution, size, pixels_per_texel)
    if stationary:
        poses = _rest_on_background(poses, background.motion, stationary)
    info = dict(sprite.info, channel=channel, texture=texture_source, motion=spec.motion,
                stationary_frames=list(stationary))
    if spec.motion == "homography+tps":
        displacement = trajectories.spline_displacements(rng, tau, sprite.max_displacement)
        grid = (size - 1) // spacing + 1
        field = thin_plate_field(sprite.control_points, displacement, (grid, grid), spacing,
                                 shapes.deformation_border(size))
        info["tps_control_points"] = int(np.count_nonzero(sprite.max_displacement))
        motion = DeformedHomographyMotion(poses, field, float(spacing))
    else:
        motion = HomographyMotion(poses)
    return Layer(f"object_{channel + 1}", _rgba(rgb, sprite.alpha), motion, info)


def _occluder(rng, look_rng, options: RenderOptions, background) -> Layer:
    """A sprite glued onto the background (moves with it), drawn above every object."""
    height, width = options.resolution
    radius_pixels = rng.uniform(*OCCLUDER_RADIUS_RANGE) * height
    radius = max(radius_pixels, MIN_SPRITE_RADIUS)
    spacing = _grid_spacing(radius)
    kind = "polygon" if rng.random() < 0.5 else "silhouette"
    sprite = _sprite(rng, kind, radius, spacing, options.silhouette_dir)
    size = sprite.alpha.shape[0]
    rgb, texture_source = backgrounds.texture_image(look_rng, size, size, options.texture_dir)
    where = rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height])
    anchor = backgrounds.canonical_point(background, where)
    base = backgrounds.background_motion(background)
    # Background texels per output pixel near the anchor, so the occluder has its intended size.
    step = base.inverse(0, np.array([where, where + [1.0, 0.0]], np.float64))
    texels_per_pixel = float(np.hypot(*(step[1] - step[0])))
    placement = translation(*anchor) @ pose_homography(
        0, 0, rng.uniform(0, 2 * np.pi), texels_per_pixel * radius_pixels / radius, 0, 0,
        ((size - 1) / 2, (size - 1) / 2))
    info = dict(sprite.info, texture=texture_source, image_position=[float(v) for v in where])
    return Layer("occluder", _rgba(rgb, sprite.alpha), GluedMotion(base, placement), info)


def build_scene(spec: SequenceSpec, options: RenderOptions) -> Scene:
    """All layers of one sequence; deterministic in `(spec, options)`."""
    if spec.stationary and spec.background != "homography":
        raise ValueError(f"sequence {spec.name}: stationary objects need a homography background "
                         f"(App. B), got {spec.background!r}")
    seeds = spec.scene_seed.spawn(2 * (2 + spec.num_objects))
    streams = [(np.random.default_rng(seeds[2 * i]), np.random.default_rng(seeds[2 * i + 1]))
               for i in range(2 + spec.num_objects)]  # (shape and motion, look) per layer
    (bg_rng, bg_look), (occluder_rng, occluder_look), object_streams = streams[0], streams[1], streams[2:]
    if spec.background == "homography":
        background = backgrounds.homography_background(
            bg_rng, bg_look, options.frames, options.resolution, options.texture_dir)
    elif options.background_video_dir:
        background = backgrounds.video_background(
            bg_look, options.frames, options.resolution, options.render_scale,
            options.background_video_dir, options.flow_mode)
    else:
        background = backgrounds.procedural_video_background(
            bg_rng, bg_look, options.frames, options.resolution, options.texture_dir)
    objects = [_object(*object_streams[k], spec, k, options, background) for k in range(spec.num_objects)]
    occluder = _occluder(occluder_rng, occluder_look, options, background) if spec.occluder else None
    return Scene(spec, options, background, objects, occluder)
