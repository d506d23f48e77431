"""Tiny benchmark copies in the real on-disk layouts, a ground-truth model stub, and
independent reference metrics, shared by the evaluation tests.

The flows carry the answer: the forward flow's u of every pixel is 4 x a bit field of the
objects covering it (bit k = object k+1), so a stub that decodes the bits predicts the ground
truth exactly.  Flows are written as the official RAFT script does: no forward flow for the
last frame, no backward flow for the first (the loader falls back to the negated opposite gap,
which carries the same bits).
"""

from __future__ import annotations

import csv
import os

import cv2
import numpy as np

from oclr_jax.data import flow_io, masks_io

H, W = 48, 80  # annotation size = model size in the tests, so no resizing blurs the answer.


def rect(t_shift: int, y0: int, x0: int, h: int, w: int, frames: int) -> np.ndarray:
    """(T, H, W) bool: a h x w rectangle moving right by t_shift px per frame."""
    masks = np.zeros((frames, H, W), bool)
    for t in range(frames):
        masks[t, y0:y0 + h, x0 + t * t_shift:x0 + t * t_shift + w] = True
    return masks


def write_frames(folder: str, count: int, start: int = 0) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    names = [f"{i:05d}" for i in range(start, start + count)]
    rng = np.random.default_rng(count)
    for name in names:
        cv2.imwrite(os.path.join(folder, name + ".jpg"),
                    rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return names


def write_flows(root: str, name: str, frames: list[str], bits: np.ndarray,
                fmt: str = "flo", flow_dir: str = "Flows_gap{gap}") -> None:
    """Forward (gap 1) and backward (gap -1) flows whose u encodes `bits` (T, H, W)."""
    for gap in (1, -1):
        folder = os.path.join(root, flow_dir.format(gap=gap), name)
        os.makedirs(folder, exist_ok=True)
        for t, frame in enumerate(frames):
            if (gap == 1 and t == len(frames) - 1) or (gap == -1 and t == 0):
                continue  # RAFT writes no flow past the sequence ends.
            flow = np.zeros((H, W, 2), np.float32)
            flow[..., 0] = 4.0 * bits[t] * gap  # the backward flow points the other way.
            flow[..., 1] = 0.5
            path = os.path.join(folder, frame)
            if fmt == "flo":
                flow_io.write_flo(path + ".flo", flow)
            elif fmt == "npy":
                np.save(path + ".npy", flow)
            else:
                flow_io.write_kitti_png_flow(path + ".png", flow)


def bits_of_labels(labels: np.ndarray) -> np.ndarray:
    """Object ids (1..n, 255 void ignored) -> bit fields."""
    bits = np.zeros(labels.shape, np.int64)
    for k in range(1, 8):
        bits |= (labels == k).astype(np.int64) << (k - 1)
    return bits


def write_davis(root: str, dataset: str, sequences: dict, fmt: str = "flo",
                image_set: bool = False) -> None:
    """DAVIS layout: JPEGImages/480p, Annotations/480p (ids; 0/255 grayscale for 2016)."""
    for name, labels in sequences.items():
        frames = write_frames(os.path.join(root, "JPEGImages/480p", name), len(labels))
        for t, frame in enumerate(frames):
            path = os.path.join(root, "Annotations/480p", name, frame + ".png")
            if dataset == "davis2016":
                os.makedirs(os.path.dirname(path), exist_ok=True)
                cv2.imwrite(path, np.where(labels[t] > 0, 255, 0).astype(np.uint8))
            else:
                masks_io.write_indexed_png(path, labels[t])
        write_flows(root, name, frames, bits_of_labels(labels), fmt)
    if image_set:
        folder = os.path.join(root, "ImageSets", "2017" if dataset == "davis2017m" else "480p")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "val.txt"), "w") as f:
            for name in sequences:
                f.write(f"{name}\n" if dataset == "davis2017m" else
                        f"/JPEGImages/480p/{name}/00000.jpg /Annotations/480p/{name}/00000.png\n")


def write_binary_dataset(root: str, sequences: dict, annotated: dict | None = None,
                         start: int = 0) -> None:
    """SegTrackv2 / FBMS-59 layout: JPEGImages/<seq>, Annotations/<seq> (0/255, maybe sparse)."""
    for name, fg in sequences.items():
        frames = write_frames(os.path.join(root, "JPEGImages", name), len(fg), start)
        keep = range(len(fg)) if annotated is None else annotated[name]
        for t in keep:
            path = os.path.join(root, "Annotations", name, frames[t] + ".png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            cv2.imwrite(path, np.where(fg[t], 255, 0).astype(np.uint8))
        write_flows(root, name, frames, fg.astype(np.int64))


def write_moca(root: str, sequences: dict) -> str:
    """MoCA_filter layout + Motion Grouping's annotations.csv; `sequences[name] = (T, boxes)`
    with boxes {frame index: (x, y, w, h)}.  The flows encode the filled boxes."""
    rows = []
    for name, (count, boxes) in sequences.items():
        frames = write_frames(os.path.join(root, "JPEGImages", name), count)
        bits = np.zeros((count, H, W), np.int64)
        for t, (x, y, w, h) in boxes.items():
            bits[t, y:y + h, x:x + w] = 1
            rows.append([len(rows), f"/{name}/{frames[t]}.jpg", f"[2,{x},{y},{w},{h}]",
                         "{'1': '0'}"])
        write_flows(root, name, frames, bits)
    path = os.path.join(root, "annotations.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "file_list", "spatial_coordinates", "metadata"])
        writer.writerows(rows)
    return path


def write_synval(root: str, sequences: dict) -> None:
    """Official synthetic layout; `sequences[name] = amodal (T, H, W, n)`, name starts with n."""
    for name, amodal in sequences.items():
        frames = write_frames(os.path.join(root, "JPEGImages", name), len(amodal))
        for t, frame in enumerate(frames):
            for k in range(amodal.shape[-1]):
                path = os.path.join(root, "AmodalAnnotations", name, f"{k + 1}_{frame}.png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                cv2.imwrite(path, np.where(amodal[t, ..., k], 255, 0).astype(np.uint8))
        bits = sum(amodal[..., k].astype(np.int64) << k for k in range(amodal.shape[-1]))
        write_flows(root, name, frames, bits)


def stub_predict_fn(num_layers: int = 3, shift: int = 0):
    """A jittable model stub: decodes the objects from the flow's bits (optionally shifted
    right by `shift` pixels); layer k = object k+1, the higher layer in front."""
    import jax.numpy as jnp

    def predict(flow):  # (B, T, H, W, C)
        bits = jnp.round(flow[..., 0] / 4.0).astype(jnp.int32)
        amodal = jnp.stack([(bits >> k) & 1 for k in range(num_layers)], axis=-1) > 0
        if shift:
            amodal = jnp.pad(amodal, ((0, 0), (0, 0), (0, 0), (shift, 0), (0, 0)))[:, :, :, :-shift]
        logits = jnp.where(amodal, 10.0, -10.0)
        order = jnp.broadcast_to(jnp.arange(num_layers, 0, -1, dtype=jnp.float32),
                                 (flow.shape[0], num_layers))
        return {"amodal_logits": logits, "order_logits": order}

    return predict


# ----------------------------------------------------------------------------- references

def ref_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Plain-loop IoU of two (H, W) masks; both empty -> 1."""
    inter = union = 0
    for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
        inter += x and y
        union += x or y
    return 1.0 if union == 0 else inter / union


def ref_boundary(mask: np.ndarray) -> np.ndarray:
    """DAVIS seg2bmap written pixel by pixel."""
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            v = bool(mask[y, x])
            right = bool(mask[y, x + 1]) if x + 1 < w else False
            down = bool(mask[y + 1, x]) if y + 1 < h else False
            diag = bool(mask[y + 1, x + 1]) if x + 1 < w and y + 1 < h else False
            if y == h - 1 and x == w - 1:
                out[y, x] = False
            elif y == h - 1:
                out[y, x] = v != right
            elif x == w - 1:
                out[y, x] = v != down
            else:
                out[y, x] = v != right or v != down or v != diag
    return out


def ref_f(pred: np.ndarray, gt: np.ndarray) -> float:
    """F with a brute-force disk search: a boundary pixel matches when a boundary pixel of
    the other map lies within Euclidean distance r = ceil(0.008 * diagonal)."""
    r = int(np.ceil(0.008 * np.hypot(*pred.shape)))
    bp, bg = ref_boundary(pred), ref_boundary(gt)
    pp, pg = np.argwhere(bp), np.argwhere(bg)

    def matched(src, dst):
        if len(dst) == 0:
            return 0
        d2 = ((src[:, None, :] - dst[None, :, :]) ** 2).sum(-1)
        return int(np.sum(d2.min(axis=1) <= r * r))

    if len(pp) == 0 and len(pg) == 0:
        return 1.0
    if len(pp) == 0 or len(pg) == 0:
        return 0.0
    precision, recall = matched(pp, pg) / len(pp), matched(pg, pp) / len(pg)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
