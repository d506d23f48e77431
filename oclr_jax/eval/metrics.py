"""Evaluation metrics: J, F, J&F, layer-to-object Hungarian matching, MoCA boxes, Syn-Val J.

Each function follows the evaluator the paper's numbers come from (DESIGN.md §5):

- J (`region_iou`) and F (`boundary_f`) are the DAVIS 2016/2017 evaluators' `db_eval_iou` and
  `f_measure`: IoU with "both empty -> 1" and void pixels (255 in DAVIS 2017 ground truth) left
  out; F on `seg2bmap` boundaries, each dilated by a disk of radius
  `ceil(0.008 * image diagonal)`, with the evaluators' edge cases for empty boundaries.
- `db_statistics` gives the evaluators' Mean / Recall / Decay of per-frame values.
- `davis2016_sequence` drops the first and last frame, as the DAVIS 2016 evaluator does.
- `davis2017_unsupervised` scores every (proposal, object) pair by (mean J + mean F) / 2 over
  all frames and assigns once per sequence (the DAVIS 2017 unsupervised task).
- `window_hungarian_iou` is the official OCLR code's per-window J (frame-averaged IoU matrix,
  Hungarian, averaged over the ground-truth layers present in the window).
- MoCA follows Motion Grouping's evaluator: invert a mask whose border is mostly foreground,
  box = bounding rectangle of the largest external contour, success when box IoU > tau.

Masks are numpy bool arrays; shapes are given per function (T frames, H x W pixels,
P predicted layers / proposals, O ground-truth objects).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

BOUNDARY_THRESHOLD = 0.008  # fraction of the image diagonal (DAVIS `bound_th`).
MOCA_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
DAVIS2017_MAX_PROPOSALS = 20  # the DAVIS 2017 evaluator rejects more proposals than this.


# ----------------------------------------------------------------------------- J (region)

def region_iou(pred: np.ndarray, gt: np.ndarray, void: Optional[np.ndarray] = None) -> np.ndarray:
    """J of boolean masks over their last two axes.  (..., H, W) -> (...) float64.

    An empty union (both masks empty, outside void) scores 1, as `db_eval_iou`.
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = True if void is None else ~np.asarray(void, bool)
    inter = np.sum(pred & gt & valid, axis=(-2, -1))
    union = np.sum((pred | gt) & valid, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


# ----------------------------------------------------------------------------- F (boundary)

def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of a (H, W) mask, the DAVIS `seg2bmap` rule.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour;
    the last row compares only to the right, the last column only downwards, and the corner
    pixel is never a boundary.
    """
    seg = np.asarray(mask, bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk(radius: int) -> np.ndarray:
    """`skimage.morphology.disk`: (2r+1, 2r+1) uint8, 1 where x^2 + y^2 <= r^2."""
    offsets = np.arange(-radius, radius + 1)
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).astype(np.uint8)


def boundary_radius(shape: Sequence[int], bound_th: float = BOUNDARY_THRESHOLD) -> int:
    """Tolerance in pixels: `bound_th` itself when >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * float(np.linalg.norm(shape[-2:]))))


def boundary_maps(masks: np.ndarray, void: Optional[np.ndarray] = None,
                  bound_th: float = BOUNDARY_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Boundaries and their disk dilations.  (T, H, W) -> two (T, H, W) bool arrays.

    Void pixels are cleared from the mask before its boundary is taken (`f_measure`).
    """
    masks = np.asarray(masks, bool)
    if void is not None:
        masks = masks & ~np.asarray(void, bool)
    kernel = disk(boundary_radius(masks.shape, bound_th))
    bmaps = np.stack([seg2bmap(m) for m in masks])
    dilated = np.stack([cv2.dilate(b.astype(np.uint8), kernel) > 0 for b in bmaps])
    return bmaps, dilated


def f_from_boundaries(pred_b: np.ndarray, pred_dil: np.ndarray, gt_b: np.ndarray,
                      gt_dil: np.ndarray) -> np.ndarray:
    """F per frame from precomputed boundary maps.  (T, H, W) x 4 -> (T,) float64."""
    n_pred = pred_b.sum(axis=(-2, -1)).astype(np.float64)
    n_gt = gt_b.sum(axis=(-2, -1)).astype(np.float64)
    pred_match = (pred_b & gt_dil).sum(axis=(-2, -1))
    gt_match = (gt_b & pred_dil).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_pred > 0, pred_match / np.maximum(n_pred, 1), 1.0)
        recall = np.where(n_gt > 0, gt_match / np.maximum(n_gt, 1), 1.0)
    # Exactly one empty boundary: the evaluators set (P, R) to (1, 0) or (0, 1).
    precision = np.where((n_pred > 0) & (n_gt == 0), 0.0, precision)
    recall = np.where((n_pred == 0) & (n_gt > 0), 0.0, recall)
    total = precision + recall
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)


def boundary_f(pred: np.ndarray, gt: np.ndarray, void: Optional[np.ndarray] = None,
               bound_th: float = BOUNDARY_THRESHOLD) -> np.ndarray:
    """F per frame.  (T, H, W) or (H, W) masks -> (T,) or scalar float64."""
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    single = pred.ndim == 2
    if single:
        pred, gt = pred[None], gt[None]
        void = None if void is None else np.asarray(void)[None]
    scores = f_from_boundaries(*boundary_maps(pred, void, bound_th),
                               *boundary_maps(gt, void, bound_th))
    return scores[0] if single else scores


# ----------------------------------------------------------------------------- statistics

def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """DAVIS Mean, Recall (fraction > 0.5) and Decay (first quarter minus last) of (T,) values.

    NaNs are ignored.  (The reference casts the bin indices to uint8, which only differs for
    sequences longer than 255 frames; here they are plain integers.)
    """
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    with np.errstate(invalid="ignore"), _quiet_nan():
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
        ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
        bins = [values[ids[i]:ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


class _quiet_nan:
    """Silences numpy's 'Mean of empty slice' warnings inside a block."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# ----------------------------------------------------------------------------- matching

def assign_max(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment maximising the total of a (R, C) score.  Returns (rows, cols)."""
    rows, cols = linear_sum_assignment(-np.asarray(score, np.float64))
    return rows, cols


def iou_matrix(pred_layers: np.ndarray, gt_layers: np.ndarray,
               void: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-frame IoU of every (object, layer) pair.  (T, P, H, W), (T, O, H, W) -> (T, O, P)."""
    num_frames, num_pred = pred_layers.shape[:2]
    num_gt = gt_layers.shape[1]
    out = np.empty((num_frames, num_gt, num_pred), np.float64)
    for i in range(num_gt):
        for j in range(num_pred):
            out[:, i, j] = region_iou(pred_layers[:, j], gt_layers[:, i], void)
    return out


def match_layers_to_objects(pred_layers: np.ndarray, gt_layers: np.ndarray,
                            void: Optional[np.ndarray] = None) -> np.ndarray:
    """Which object each predicted layer stands for, by the frame-averaged IoU.

    Args:
      pred_layers: (T, P, H, W) bool.
      gt_layers: (T, O, H, W) bool.
    Returns:
      (P,) int: the object index assigned to each layer, -1 for layers left unassigned
      (when P > O).
    """
    score = iou_matrix(pred_layers, gt_layers, void).mean(axis=0)  # (O, P)
    objects, layers = assign_max(score)
    object_of_layer = np.full(pred_layers.shape[1], -1, np.int64)
    object_of_layer[layers] = objects
    return object_of_layer


def order_pair_counts(pred_amodal: np.ndarray, order_logits: np.ndarray,
                      gt_amodal: np.ndarray) -> tuple[int, int]:
    """Depth order of one window, scored on the ground-truth pairs that overlap.

    Predicted layers are assigned to objects by the frame-averaged amodal IoU (Hungarian).
    For every pair of objects i < j whose amodal masks overlap in some frame, the pair is
    right when the layer of j (the higher channel, in front) has the smaller order value
    (nearer) than the layer of i; a tie, or an object left without a layer, is wrong.

    Args:
      pred_amodal: (T, P, H, W) bool predicted amodal layers.
      order_logits: (P,) order values, smaller = nearer.
      gt_amodal: (T, O, H, W) bool, a higher channel in front.
    Returns:
      (right, pairs): overlapping pairs ordered correctly, overlapping pairs.
    """
    pred_amodal, gt_amodal = np.asarray(pred_amodal, bool), np.asarray(gt_amodal, bool)
    num_gt = gt_amodal.shape[1]
    layer_of_object = np.full(num_gt, -1)
    if num_gt and pred_amodal.shape[1]:
        objects, layers = assign_max(iou_matrix(pred_amodal, gt_amodal).mean(axis=0))
        layer_of_object[objects] = layers
    right = pairs = 0
    for i in range(num_gt):
        for j in range(i + 1, num_gt):
            if not (gt_amodal[:, i] & gt_amodal[:, j]).any():
                continue
            pairs += 1
            back, front = layer_of_object[i], layer_of_object[j]
            if back >= 0 and front >= 0 and order_logits[front] < order_logits[back]:
                right += 1
    return right, pairs


def window_hungarian_iou(pred_layers: np.ndarray, gt_layers: np.ndarray) -> np.ndarray:
    """The official OCLR per-window J of every frame.  (T, P, H, W), (T, O, H, W) -> (T,).

    One assignment per window from the frame-averaged IoU matrix; each frame's value is the
    sum of the assigned pairs' IoUs over the ground-truth layers that are non-empty somewhere
    in the window, divided by their number (0 when none is).  Objects left unassigned (O > P)
    count as 0.
    """
    ious = iou_matrix(pred_layers, gt_layers)  # (T, O, P)
    objects, layers = assign_max(ious.mean(axis=0))
    present = gt_layers.any(axis=(0, 2, 3))  # (O,)
    if not present.any():
        return np.zeros(pred_layers.shape[0])
    keep = present[objects]
    total = ious[:, objects[keep], layers[keep]].sum(axis=1)
    return total / present.sum()


# ----------------------------------------------------------------------------- DAVIS

def davis2016_sequence(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of a binary sequence without its first and last frame.

    (T, H, W) bool each -> (J (T-2,), F (T-2,)).
    """
    pred = np.asarray(pred, bool)[1:-1]
    gt = np.asarray(gt, bool)[1:-1]
    if len(pred) == 0:
        return np.zeros(0), np.zeros(0)
    return region_iou(pred, gt), boundary_f(pred, gt)


def davis2017_unsupervised(pred: np.ndarray, gt: np.ndarray, void: Optional[np.ndarray] = None,
                           max_proposals: int = DAVIS2017_MAX_PROPOSALS):
    """The DAVIS 2017 unsupervised evaluation of one sequence.

    Args:
      pred: (P, T, H, W) bool proposals.
      gt: (O, T, H, W) bool objects.
      void: (T, H, W) bool pixels left out of J and F, or None.
    Returns:
      (j (O, T), f (O, T), proposal (O,)): each object's per-frame J and F against the
      proposal assigned to it (an index >= P stands for an all-empty proposal).
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape[0] > max_proposals:
        raise ValueError(f"{pred.shape[0]} proposals; the DAVIS 2017 evaluator allows at most "
                         f"{max_proposals}")
    if pred.shape[0] < gt.shape[0]:  # the evaluator pads with empty proposals.
        pad = np.zeros((gt.shape[0] - pred.shape[0], *pred.shape[1:]), bool)
        pred = np.concatenate([pred, pad])
    num_pred, num_gt = pred.shape[0], gt.shape[0]
    j = np.stack([[region_iou(pred[p], gt[o], void) for o in range(num_gt)]
                  for p in range(num_pred)])  # (P, O, T)
    gt_maps = [boundary_maps(gt[o], void) for o in range(num_gt)]
    f = np.stack([[f_from_boundaries(*pred_maps, *gt_maps[o]) for o in range(num_gt)]
                  for pred_maps in (boundary_maps(pred[p], void) for p in range(num_pred))])
    proposals, objects = assign_max((j.mean(axis=2) + f.mean(axis=2)) / 2)
    order = np.argsort(objects)
    proposal_of_object = proposals[order]
    return (j[proposal_of_object, np.arange(num_gt)], f[proposal_of_object, np.arange(num_gt)],
            proposal_of_object)


# ----------------------------------------------------------------------------- layers

def labels_to_layers(labels: np.ndarray, num_layers: Optional[int] = None) -> np.ndarray:
    """Label maps to one bool layer per id 1..L.  (T, H, W) int -> (L, T, H, W) bool.

    L is `num_layers`, or the largest id present (ids 255 are not layers: DAVIS void).
    """
    labels = np.asarray(labels)
    ids = labels[labels != 255]
    if num_layers is None:
        num_layers = int(ids.max()) if ids.size else 0
    return np.stack([labels == k for k in range(1, num_layers + 1)]) if num_layers else \
        np.zeros((0, *labels.shape), bool)


def merged_foreground(labels: np.ndarray) -> np.ndarray:
    """All layers as one foreground (SegTrackv2, FBMS-59).  (..., H, W) -> bool."""
    return np.asarray(labels) != 0


# ----------------------------------------------------------------------------- MoCA

def moca_box_from_mask(mask: np.ndarray, frame_size: Optional[Sequence[int]] = None):
    """Motion Grouping's box of a predicted mask, or None when the mask is empty.

    Args:
      mask: (H, W) bool or uint8 (0..255) mask.
      frame_size: (H, W) of the frame the ground-truth boxes refer to; the box is scaled
        from the mask size to it.
    Returns:
      (x0, y0, x1, y1) float64 or None.
    """
    mask = np.asarray(mask)
    gray = np.where(mask, 255, 0).astype(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    height, width = gray.shape
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    if np.sum(border > 127.5) / (2 * height + 2 * width - 4) > 0.5:  # background predicted.
        gray = 255 - gray
    binary = np.where(gray > 0.1 * 255, 255, 0).astype(np.uint8)
    contours = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    best, best_area = None, 0
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if w * h > best_area:  # strictly larger: the first of equal boxes wins.
            best, best_area = (x, y, x + w, y + h), w * h
    if best is None:
        return None
    box = np.asarray(best, np.float64)
    if frame_size is not None:
        box[[0, 2]] *= frame_size[1] / width
        box[[1, 3]] *= frame_size[0] / height
    return box


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes in continuous coordinates; 0 when disjoint."""
    ax0, ay0, ax1, ay1 = (float(v) for v in box_a)
    bx0, by0, bx1, by1 = (float(v) for v in box_b)
    inter = max(min(ax1, bx1) - max(ax0, bx0), 0.0) * max(min(ay1, by1) - max(ay0, by0), 0.0)
    if inter == 0:
        return 0.0
    area_a = abs((ax1 - ax0) * (ay1 - ay0))
    area_b = abs((bx1 - bx0) * (by1 - by0))
    return inter / (area_a + area_b - inter)


def success_counts(box_ious: Sequence[float],
                   thresholds: Sequence[float] = MOCA_THRESHOLDS) -> np.ndarray:
    """How many IoUs exceed each threshold (strictly).  Returns (len(thresholds),) int."""
    ious = np.asarray(box_ious, np.float64).reshape(-1, 1)
    return np.sum(ious > np.asarray(thresholds, np.float64)[None], axis=0)


def box_to_mask(box: Sequence[float], size: Sequence[int]) -> np.ndarray:
    """A filled (x0, y0, x1, y1) box as a (H, W) bool mask (integer truncation, as MoCA_filter)."""
    mask = np.zeros(tuple(size), bool)
    x0, y0, x1, y1 = (max(int(v), 0) for v in box)
    mask[y0:y1, x0:x1] = True
    return mask
