"""Shared helpers of the RAFT tests: random weights with non-trivial BatchNorm statistics, frames."""

from __future__ import annotations

import os

import numpy as np


def random_reference(seed: int = 0, flow_gain: float = 10.0):
    """Our TorchRAFT with random weights, random BatchNorm affine parameters and running
    statistics, and the last flow-head conv scaled by `flow_gain` so the flow grows to tens of
    pixels within a few iterations (lookups then leave the volume and cross pixel borders)."""
    import torch

    from oclr_jax.flow.torch_reference import TorchRAFT

    torch.manual_seed(seed)
    model = TorchRAFT()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                width = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(width, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(width, generator=generator))
                module.weight.copy_(1 + 0.2 * torch.randn(width, generator=generator))
                module.bias.copy_(0.1 * torch.randn(width, generator=generator))
                module.num_batches_tracked.fill_(1234)
        model.update_block.flow_head.conv2.weight.mul_(flow_gain)
    return model.eval()


def numpy_state_dict(model) -> dict:
    return {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}


def moving_frames(num_frames: int, height: int, width: int, seed: int = 0, step=(2, 3)) -> np.ndarray:
    """(T, H, W, 3) uint8: a smooth random texture translated by `step` (dy, dx) pixels per frame."""
    import cv2

    rng = np.random.default_rng(seed)
    margin = 4 + max(abs(s) for s in step) * num_frames
    texture = rng.uniform(0, 255, (height + 2 * margin, width + 2 * margin, 3)).astype(np.float32)
    texture = cv2.GaussianBlur(texture, (0, 0), 2.0)
    texture = (255 * (texture - texture.min()) / (texture.max() - texture.min())).astype(np.uint8)
    frames = [texture[margin - t * step[0]:margin - t * step[0] + height,
                      margin - t * step[1]:margin - t * step[1] + width] for t in range(num_frames)]
    return np.stack(frames)


def write_frames(folder: str, frames: np.ndarray, ext: str = ".jpg") -> list:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        path = os.path.join(folder, f"{index:05d}{ext}")
        Image.fromarray(frame).save(path, quality=95) if ext == ".jpg" else Image.fromarray(frame).save(path)
        paths.append(path)
    return paths
