"""Model inference on benchmark sequences: windows, flow loading, batched sharded prediction.

The official evaluation (DESIGN.md §5) cuts each sequence into non-overlapping windows of T
frames; when T does not divide the length, one more window is aligned to the end (its first
frames repeat frames already predicted), and a sequence shorter than T is one window padded by
repeating its last frame.  Each window's flows are read per gap (with the official fallback:
where a gap's file is missing at the sequence ends, the negated flow of the opposite gap of the
same frame), resized to the model resolution with the vectors scaled, and predicted at a fixed
batch shape so XLA compiles once.  Every frame is then taken from the first window that holds
it, so a repeated frame counts once.

`WindowPredictor` is the seam between the model and the evaluation: it wraps any
`predict_fn(flow (B, T, H, W, C)) -> {'amodal_logits': (B, T, H, W, K), 'order_logits': (B, K)}`
(or `predict_fn(params, flow)` with `params` given), jits it with the batch sharded over the
local devices, and returns hard modal masks (eq. 2) as label maps plus amodal probabilities.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np

from oclr_jax import resample, sharding
from oclr_jax.compose import hard_modal_masks
from oclr_jax.data import flow_io
from oclr_jax.data.benchmarks import SequenceRecord
from oclr_jax.errors import UserError

UPSAMPLE_METHODS = ("bilinear", "nearest")


class FlowMissingError(UserError, FileNotFoundError):
    """A flow file needed for a window is missing (and no official fallback applies)."""


# ----------------------------------------------------------------------------- windows

def cut_windows(num_frames: int, window: int) -> list[np.ndarray]:
    """Frame indices of each window, the official rule (stride 1, no overlap).

    Returns a list of (window,) int arrays.  Lengths 1..window give one window padded with the
    last frame; longer sequences get floor(n / window) windows plus, when window does not
    divide n, a last window covering the final `window` frames.
    """
    if num_frames < 1 or window < 1:
        raise ValueError(f"need at least one frame and a window >= 1; got {num_frames}, {window}")
    span = min(num_frames, window)
    offsets = np.arange(window)
    windows = [np.minimum(num_frames - 1, start * span + offsets)
               for start in range(num_frames // span)]
    if num_frames % span:
        windows.append(np.minimum(num_frames - 1, num_frames - span + offsets))
    return windows


def first_occurrence(windows: Sequence[np.ndarray], num_frames: int) -> list[tuple[int, int]]:
    """For each frame, the (window, position) that predicts it first."""
    owner: list[Optional[tuple[int, int]]] = [None] * num_frames
    for w, indices in enumerate(windows):
        for position, frame in enumerate(indices):
            if owner[frame] is None:
                owner[frame] = (w, position)
    if any(o is None for o in owner):
        raise ValueError("windows do not cover every frame")
    return owner  # type: ignore[return-value]


def stitch(windows: Sequence[np.ndarray], per_window: Sequence[np.ndarray],
           num_frames: int) -> np.ndarray:
    """Per-frame array from per-window arrays (W x (T, ...)), each frame counted once."""
    return np.stack([per_window[w][p] for w, p in first_occurrence(windows, num_frames)])


# ----------------------------------------------------------------------------- flows

def flow_sources(record: SequenceRecord, frame: int, gap: int) -> tuple[str, float]:
    """The file holding `frame`'s flow for `gap` and the sign to apply to it.

    The official fallback (negated opposite gap) applies where the file is missing because
    the frame is within |gap| of the sequence end the flow points past; any other missing
    file is an error naming it.
    """
    paths = record.flow_paths.get(gap)
    if paths is None:
        raise FlowMissingError(f"sequence {record.name!r}: no flow folder for gap {gap}")
    if paths[frame] is not None:
        return paths[frame], 1.0
    stem = record.frame_names[frame]
    expected = f"{record.flow_dirs[gap]}/{stem}.flo"
    at_end = frame >= record.num_frames - gap if gap > 0 else frame < -gap
    opposite = record.flow_paths.get(-gap)
    if at_end and opposite is not None and opposite[frame] is not None:
        return opposite[frame], -1.0
    if at_end:
        raise FlowMissingError(
            f"{expected}: missing flow (gap {gap}) and no fallback "
            f"{record.flow_dirs.get(-gap, f'Flows_gap{-gap}/{record.name}')}/{stem}.* to negate")
    raise FlowMissingError(
        f"{expected}: missing flow file (gap {gap}, frame {frame} of {record.num_frames} in "
        f"{record.name!r}); only the last/first |gap| frames may lack one")


def crop_raft_padding(flow: np.ndarray, image_size: Sequence[int], path: str = "") -> np.ndarray:
    """Removes RAFT's symmetric padding to a multiple of 8 (e.g. 480x856 -> 480x854)."""
    height, width = image_size
    pad_h, pad_w = flow.shape[0] - height, flow.shape[1] - width
    if (pad_h, pad_w) == (0, 0):
        return flow
    if not (0 <= pad_h < 8 and 0 <= pad_w < 8):
        raise flow_io.FlowFileError(f"{path}: flow {flow.shape[:2]} is not the frame size "
                                    f"{tuple(image_size)} padded to a multiple of 8")
    top, left = pad_h // 2, pad_w // 2
    return flow[top:top + height, left:left + width]


def load_window_flow(record: SequenceRecord, indices: Sequence[int], gaps: Sequence[int],
                     resolution: Sequence[int], unpad: bool = False) -> np.ndarray:
    """Flows of a window at the model resolution.  Returns (T, H, W, 2 * len(gaps)) float32."""
    height, width = resolution
    cache: dict[int, np.ndarray] = {}
    frames = []
    for frame in indices:
        if frame not in cache:
            channels = []
            for gap in gaps:
                path, sign = flow_sources(record, int(frame), gap)
                flow = flow_io.read_flow(path)
                flow_io.check_flow_size(flow.shape[:2], record.image_size, path)
                if unpad:
                    flow = crop_raft_padding(flow, record.image_size, path)
                channels.append(sign * resample.resize_flow(flow, height, width))
            cache[frame] = np.concatenate(channels, axis=-1)
        frames.append(cache[frame])
    return np.stack(frames).astype(np.float32)


# ----------------------------------------------------------------------------- prediction

class WindowPredictor:
    """Jitted inference on fixed-size batches of windows, sharded over local devices.

    Args:
      predict_fn: `predict_fn(flow)` or, with `params`, `predict_fn(params, flow)`, returning
        {'amodal_logits': (B, T, H, W, K), 'order_logits': (B, K)}.
      batch_size: windows per call; rounded up to a multiple of the device count.
      params: model parameters (replicated on every device), or None.
      threshold: on the sigmoid amodal probability (0.5 in the paper).
      with_amodal: also return the amodal probabilities (Syn-Val).
      devices: devices to shard the batch over (default: all local devices).
    """

    def __init__(self, predict_fn: Callable[..., dict], batch_size: int, params: Any = None,
                 threshold: float = 0.5, with_amodal: bool = False, devices=None):
        # Each process evaluates on its own devices: windows are independent.
        devices = list(devices or jax.local_devices())
        self.batch_size = -(-max(1, batch_size) // len(devices)) * len(devices)
        self.with_amodal = with_amodal
        mesh = sharding.make_data_mesh(devices)
        self._batch_sharding = sharding.batch_sharded(mesh)
        self._params = (None if params is None
                        else jax.device_put(params, sharding.replicated(mesh)))

        self._step = make_window_step(predict_fn, mesh, threshold, with_amodal)
        self.num_layers: Optional[int] = None

    def __call__(self, flows: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(N, T, H, W, C) with N <= batch_size -> labels (N, T, H, W) uint8, probs or None.

        Label k+1 marks the visible pixels of layer k; probs is (N, T, H, W, K) float32.
        """
        labels, probs, _ = self.predict(flows)
        return labels, probs

    def predict(self, flows: np.ndarray
                ) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
        """As `__call__`, plus the order logits (N, K) float32 (smaller = nearer)."""
        count = flows.shape[0]
        if count > self.batch_size:
            raise ValueError(f"{count} windows exceed the batch size {self.batch_size}")
        padded = np.zeros((self.batch_size, *flows.shape[1:]), np.float32)
        padded[:count] = flows
        labels, probs, order = self._step(self._params,
                                          jax.device_put(padded, self._batch_sharding))
        self.num_layers = order.shape[-1]
        labels = np.asarray(labels)[:count]
        return (labels, None if probs is None else np.asarray(probs)[:count],
                np.asarray(order, np.float32)[:count])


def make_window_step(predict_fn: Callable[..., dict], mesh, threshold: float = 0.5,
                     with_amodal: bool = False) -> Callable:
    """The jitted step of `WindowPredictor` over `mesh`: `step(params, flow)` with params
    replicated (or None) and flow (B, T, H, W, C) sharded on B -> (labels (B, T, H, W) uint8,
    probs (B, T, H, W, K) or None, order logits (B, K)).  Also what tools/aot_tpu.py compiles.
    """
    import jax

    from oclr_jax import sharding

    def step(params, flow):  # flow (B, T, H, W, C)
        out = predict_fn(flow) if params is None else predict_fn(params, flow)
        amodal_logits = out["amodal_logits"]  # (B, T, H, W, K)
        modal = hard_modal_masks(amodal_logits, out["order_logits"], threshold)
        layer_ids = jax.numpy.arange(1, modal.shape[-1] + 1, dtype=jax.numpy.uint8)
        labels = jax.numpy.max(jax.numpy.where(modal, layer_ids, 0), axis=-1)  # (B, T, H, W)
        probs = jax.nn.sigmoid(amodal_logits) if with_amodal else None
        return labels.astype(jax.numpy.uint8), probs, out["order_logits"]

    batch = sharding.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(sharding.replicated(mesh), batch), out_shardings=batch)


def model_predict_fn(model) -> Callable[[Any, Any], dict]:
    """`predict_fn(params, flow)` of a Flax OCLR model in inference mode."""
    def predict(params, flow):
        return model.apply({"params": params}, flow, train=False)
    return predict


@dataclasses.dataclass
class SequencePrediction:
    """Model outputs of one sequence at the model resolution.

    Attributes:
      record: the sequence.
      windows: frame indices per window (W x (T,)).
      labels: (W, T, h, w) uint8 modal label maps (layer k -> k+1) per window.
      amodal_probs: (W, T, h, w, K) float32 sigmoid amodal masks, or None.
      num_layers: K, the model's object layers.
      order_logits: (W, K) float32 order logits per window (smaller = nearer), or None.
    """

    record: SequenceRecord
    windows: list[np.ndarray]
    labels: np.ndarray
    amodal_probs: Optional[np.ndarray]
    num_layers: int
    order_logits: Optional[np.ndarray] = None


class _PendingSequence:
    """Window outputs of a sequence collected until all its windows are predicted."""

    def __init__(self, record: SequenceRecord, windows: list[np.ndarray]):
        self.record, self.windows = record, windows
        self.parts: list = [None] * len(windows)

    def complete(self) -> bool:
        return all(p is not None for p in self.parts)

    def result(self, num_layers: int) -> SequencePrediction:
        probs = None if self.parts[0][1] is None else np.stack([p[1] for p in self.parts])
        return SequencePrediction(self.record, self.windows,
                                  np.stack([p[0] for p in self.parts]), probs, num_layers,
                                  np.stack([p[2] for p in self.parts]))


def predict_sequences(records: Iterable[SequenceRecord], predictor: WindowPredictor,
                      gaps: Sequence[int], resolution: Sequence[int], window: int,
                      unpad: bool = False) -> Iterator[SequencePrediction]:
    """Predicts every window of every sequence, batching windows across sequences.

    Flows of the next batch are read on a background thread while the device computes.
    Yields one `SequencePrediction` per record, in order.
    """
    def batches():
        batch = []
        for record in records:
            pending = _PendingSequence(record, cut_windows(record.num_frames, window))
            for w, indices in enumerate(pending.windows):
                batch.append((pending, w, indices))
                if len(batch) == predictor.batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def load(batch_iter):
        batch = next(batch_iter, None)
        if batch is None:
            return None
        flows = np.stack([load_window_flow(p.record, idx, gaps, resolution, unpad)
                          for p, _, idx in batch])
        return batch, flows

    batch_iter = batches()
    queue: list[_PendingSequence] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(load, batch_iter)
        while True:
            loaded = future.result()
            if loaded is None:
                break
            future = pool.submit(load, batch_iter)
            batch, flows = loaded
            labels, probs, order = predictor.predict(flows)
            for i, (pending, w, _) in enumerate(batch):
                if not queue or queue[-1] is not pending:
                    queue.append(pending)
                pending.parts[w] = (labels[i], None if probs is None else probs[i], order[i])
            while queue and queue[0].complete():
                yield queue.pop(0).result(predictor.num_layers)


# ----------------------------------------------------------------------------- resizing

def upsample_layers(layers: np.ndarray, size: Sequence[int], method: str = "bilinear"
                    ) -> np.ndarray:
    """Resizes per-layer masks or probabilities and thresholds them at 0.5.

    Args:
      layers: (T, h, w, K) bool or float in [0, 1].
      size: (H, W) target.
      method: 'bilinear' (OpenCV, as the official code saves its masks) or 'nearest'
        (PyTorch's default `F.interpolate`, as the official code's own IoU).
    Returns:
      (T, H, W, K) bool.
    """
    if method not in UPSAMPLE_METHODS:
        raise ValueError(f"upsample method must be one of {UPSAMPLE_METHODS}; got {method!r}")
    layers = np.asarray(layers, np.float32)
    height, width = size
    if layers.shape[1:3] == (height, width):
        return layers > 0.5
    if method == "nearest":
        return resample.resize_nearest(layers, size, resample.torch_nearest_indices,
                                       axes=(1, 2)) > 0.5
    return np.stack([resample.bilinear(frame, size) for frame in layers]) > 0.5


def labels_to_onehot(labels: np.ndarray, num_layers: int) -> np.ndarray:
    """(..., H, W) label maps -> (..., H, W, K) bool, layer k where the label is k+1."""
    return labels[..., None] == np.arange(1, num_layers + 1, dtype=labels.dtype)
