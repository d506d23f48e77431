"""Backgrounds: homography images, procedural non-rigid surfaces and user videos.

* Homography image: a texture (procedural or a user image, colour-jittered once per
  sequence) moved by a camera homography per frame.  Exact flow.
* Real video (`--background-video-dir`): consecutive frames of a user video, cropped and
  resized.  Its flow cannot be known exactly: in 'gt' mode it is estimated with OpenCV DIS on
  the clean background frames (recorded in the metadata as `"flow": "estimated-dis"`); the
  objects and occluders on top keep their exact flow.
* Procedural stand-in for real video (no folder given): a texture under camera homography
  plus travelling sinusoidal ripples (`WaveHomographyMotion`), i.e. non-rigid, exact flow.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from oclr_jax.data.synth import assets, textures, trajectories
from oclr_jax.data.synth.motion import HomographyMotion, WaveHomographyMotion


@dataclasses.dataclass
class Layer:
    """A textured surface.

    Attributes:
      name: 'background', 'object_<k>' (k = 1..n) or 'occluder'.
      rgba: `(Hc, Wc, 4)` uint8 canonical texture with coverage in the alpha channel; just
        `(Hc, Wc, 3)` RGB for the (opaque) background.
      motion: canonical <-> image maps per frame (see `motion.py`).
      info: JSON-friendly description for the metadata.
    """

    name: str
    rgba: np.ndarray
    motion: object
    info: dict

    @property
    def opaque(self) -> bool:
        return self.name == "background"


@dataclasses.dataclass
class VideoBackground:
    """Frames of a user video.

    Attributes:
      frames: `(T, Hr, Wr, 3)` uint8 at the render resolution.
      flow_fwd, flow_bwd: `(T, H, W, 2)` float32 DIS estimates at the output resolution.
      camera: homographies fitted to the estimated flow, for occluders glued onto the video.
    """

    frames: np.ndarray
    flow_fwd: np.ndarray
    flow_bwd: np.ndarray
    camera: HomographyMotion
    info: dict
    name: str = "background"


def texture_image(rng: np.random.Generator, height: int, width: int,
                  texture_dir: str | None) -> tuple[np.ndarray, str]:
    """A texture of the given size: a crop of a user image, or procedural."""
    if not texture_dir:
        return textures.procedural_texture(rng, height, width), "procedural"
    path, image = assets.pick(rng, assets.list_images(texture_dir), "texture", assets.read_texture)
    return textures.crop_texture(rng, image, height, width), path


def homography_background(motion_rng, look_rng, num_frames, image_size, texture_dir) -> Layer:
    """A jittered image under a random camera homography."""
    camera = trajectories.camera_homographies(motion_rng, num_frames, image_size)
    shift, (height, width) = trajectories.covering_box(
        HomographyMotion(camera).inverse, num_frames, image_size, margin=2.0)
    rgb, source = texture_image(look_rng, height, width, texture_dir)
    jitter = textures.sample_colour_jitter(look_rng)
    rgb = textures.apply_colour_jitter(rgb, jitter)
    info = {"type": "homography", "source": source, "colour_jitter": jitter, "flow": "exact"}
    return Layer("background", rgb, HomographyMotion(camera @ np.linalg.inv(shift)), info)


def procedural_video_background(motion_rng, look_rng, num_frames, image_size, texture_dir) -> Layer:
    """The stand-in for a real video: camera homography plus travelling ripples."""
    camera = trajectories.camera_homographies(motion_rng, num_frames, image_size)
    waves = trajectories.wave_parameters(motion_rng, num_frames, image_size)
    shift, (height, width) = trajectories.covering_box(
        WaveHomographyMotion(camera, waves).inverse, num_frames, image_size, margin=2.0)
    # Moving the canonical origin moves the ripples' phase; fold that into the parameters.
    dx, dy = shift[0, 2], shift[1, 2]
    waves = waves.copy()
    waves[:, 2] -= waves[:, 1] * dy  # x-shear depends on y
    waves[:, 5] -= waves[:, 4] * dx  # y-shear depends on (sheared) x
    rgb, source = texture_image(look_rng, height, width, texture_dir)
    info = {"type": "video", "source": f"procedural-nonrigid ({source} texture)", "flow": "exact"}
    motion = WaveHomographyMotion(camera @ np.linalg.inv(shift), waves)
    return Layer("background", rgb, motion, info)


def _fit_video(frames: np.ndarray, num_frames: int, rng: np.random.Generator,
               size: tuple[int, int]) -> np.ndarray:
    """A window of `num_frames` frames (ping-pong if the video is short), cropped to the
    output aspect and resized to `size = (H, W)`."""
    count = len(frames)
    if count >= num_frames:
        start = int(rng.integers(count - num_frames + 1))
        order = np.arange(start, start + num_frames)
    else:
        cycle = np.concatenate([np.arange(count), np.arange(count - 2, 0, -1)])
        order = cycle[np.arange(num_frames) % len(cycle)]
    height, width = size
    video_h, video_w = frames.shape[1:3]
    crop_h = min(video_h, int(round(video_w * height / width)))
    crop_w = min(video_w, int(round(video_h * width / height)))
    top = int(rng.integers(video_h - crop_h + 1))
    left = int(rng.integers(video_w - crop_w + 1))
    return np.stack([cv2.resize(frames[i, top:top + crop_h, left:left + crop_w], (width, height),
                                interpolation=cv2.INTER_AREA) for i in order])


def estimate_flows(frames: np.ndarray, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV DIS flow `(T, H, W, 2)` forward (t -> t+1) and backward (t -> t-1); the ends
    use the negated opposite flow, as the official loader does for missing files.
    `progress()`, if given, is called after each frame pair."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    num_frames = len(frames)
    fwd = np.zeros(frames.shape[:3] + (2,), np.float32)
    bwd = np.zeros_like(fwd)
    for t in range(num_frames - 1):
        fwd[t] = dis.calc(gray[t], gray[t + 1], None)
        bwd[t + 1] = dis.calc(gray[t + 1], gray[t], None)
        if progress is not None:
            progress()
    if num_frames > 1:
        fwd[-1], bwd[0] = -bwd[-1], -fwd[0]
    return fwd, bwd


def _fit_camera(flow_fwd: np.ndarray) -> HomographyMotion:
    """Homographies (frame-0 pixels -> image) chained from least-squares fits to the forward
    flow on a coarse grid."""
    height, width = flow_fwd.shape[1:3]
    ys, xs = np.mgrid[0:height:4, 0:width:4]
    src = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    current = np.eye(3)
    chain = [current]
    for t in range(len(flow_fwd) - 1):
        dst = src + flow_fwd[t][ys.ravel(), xs.ravel()]
        step, _ = cv2.findHomography(src, dst, 0)
        if step is None:
            step = np.eye(3)
        current = step @ current
        chain.append(current)
    return HomographyMotion(np.stack(chain))


def video_background(rng, num_frames, image_size, render_scale, video_dir, flow_mode) -> VideoBackground:
    """A window of a user video at the render resolution, with estimated background flow."""
    path, frames = assets.pick(rng, assets.list_videos(video_dir), "background video",
                               lambda p: assets.read_video_frames(p, 3 * num_frames))
    render_size = tuple(int(round(n * render_scale)) for n in image_size)
    frames = _fit_video(frames, num_frames, rng, render_size)
    small = frames if render_scale == 1 else np.stack(
        [cv2.resize(f, image_size[::-1], interpolation=cv2.INTER_AREA) for f in frames])
    fwd, bwd = estimate_flows(small)
    info = {"type": "video", "source": path,
            "flow": "estimated-dis" if flow_mode == "gt" else "dis"}
    return VideoBackground(frames, fwd, bwd, _fit_camera(fwd), info)


def canonical_point(background, image_point: np.ndarray) -> np.ndarray:
    """The background-canonical point under an image point at frame 0."""
    motion = background.camera if isinstance(background, VideoBackground) else background.motion
    return motion.inverse(0, image_point[None].astype(np.float64))[0]


def background_motion(background):
    return background.camera if isinstance(background, VideoBackground) else background.motion

