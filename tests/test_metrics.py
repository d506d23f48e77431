"""Metrics on hand-made cases with known answers and against independent implementations."""

import itertools

import numpy as np
import pytest
from eval_fakes import ref_boundary, ref_f, ref_iou

from oclr_jax.eval import metrics


def square(h, w, y0, x0, size, sw=None):
    m = np.zeros((h, w), bool)
    m[y0:y0 + size, x0:x0 + (sw or size)] = True
    return m


# ----------------------------------------------------------------------------- J

def test_region_iou_known_cases():
    a = square(20, 30, 2, 3, 10)
    assert metrics.region_iou(a, a) == 1.0
    assert metrics.region_iou(a, square(20, 30, 12, 15, 5)) == 0.0  # disjoint
    empty = np.zeros_like(a)
    assert metrics.region_iou(empty, empty) == 1.0  # DAVIS: both empty -> 1
    assert metrics.region_iou(a, empty) == 0.0
    assert metrics.region_iou(empty, a) == 0.0
    # 10x10 square shifted right by 3: intersection 70, union 130.
    assert metrics.region_iou(square(20, 30, 2, 6, 10), a) == pytest.approx(70 / 130)


def test_region_iou_excludes_void_pixels():
    gt = square(10, 10, 0, 0, 4)
    pred = square(10, 10, 0, 0, 5)  # 9 extra pixels...
    void = pred & ~gt  # ...all of them void.
    assert metrics.region_iou(pred, gt, void) == 1.0
    all_void = np.ones_like(gt)
    assert metrics.region_iou(pred, gt, all_void) == 1.0  # empty union outside void


def test_region_iou_matches_reference_on_random_masks():
    rng = np.random.default_rng(0)
    pred = rng.random((6, 9, 11)) > 0.5
    gt = rng.random((6, 9, 11)) > 0.6
    got = metrics.region_iou(pred, gt)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, [ref_iou(p, g) for p, g in zip(pred, gt)])


# ----------------------------------------------------------------------------- F

def test_seg2bmap_single_pixel():
    mask = np.zeros((5, 5), bool)
    mask[2, 3] = True
    expected = np.zeros((5, 5), bool)
    for y, x in [(1, 2), (1, 3), (2, 2), (2, 3)]:  # the pixel and its up/left/up-left neighbours
        expected[y, x] = True
    np.testing.assert_array_equal(metrics.seg2bmap(mask), expected)


def test_seg2bmap_last_row_and_column_rules():
    mask = np.zeros((4, 4), bool)
    mask[3, 1] = True  # on the last row: only the right neighbour counts.
    mask[1, 3] = True  # on the last column: only the lower neighbour counts.
    np.testing.assert_array_equal(metrics.seg2bmap(mask), ref_boundary(mask))
    assert not metrics.seg2bmap(np.ones((4, 4), bool))[-1, -1]


def test_seg2bmap_matches_reference_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = rng.random((9, 13)) > 0.5
        np.testing.assert_array_equal(metrics.seg2bmap(mask), ref_boundary(mask))


def test_disk_and_radius():
    np.testing.assert_array_equal(metrics.disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    d2 = metrics.disk(2)
    assert d2.shape == (5, 5) and d2.sum() == 13  # x^2 + y^2 <= 4
    assert metrics.boundary_radius((480, 854)) == 8  # DAVIS 480p: ceil(0.008 * 979.7)
    assert metrics.boundary_radius((48, 80)) == 1
    assert metrics.boundary_radius((48, 80), bound_th=3) == 3


def test_boundary_f_edge_cases():
    a = square(30, 40, 5, 5, 10)
    empty = np.zeros_like(a)
    assert metrics.boundary_f(a, a) == 1.0
    assert metrics.boundary_f(empty, empty) == 1.0  # no boundary anywhere: P = R = 1
    assert metrics.boundary_f(empty, a) == 0.0       # (P, R) = (1, 0)
    assert metrics.boundary_f(a, empty) == 0.0       # (P, R) = (0, 1)
    far = square(30, 40, 20, 25, 8)
    assert metrics.boundary_f(far, a) == 0.0         # P + R = 0


def test_boundary_f_tolerance():
    # 30x40: tolerance ceil(0.008 * 50) = 1 px.  A 1 px shift keeps every boundary pixel
    # within tolerance; 3 px does not.
    a = square(30, 40, 5, 5, 12)
    assert metrics.boundary_f(square(30, 40, 5, 6, 12), a) == 1.0
    shifted = square(30, 40, 5, 8, 12)
    got = metrics.boundary_f(shifted, a)
    assert 0 < got < 1
    assert got == pytest.approx(ref_f(shifted, a))


def test_boundary_f_matches_reference_on_random_shapes():
    rng = np.random.default_rng(2)
    preds, gts = [], []
    for _ in range(6):
        pred = np.zeros((24, 32), bool)
        gt = np.zeros((24, 32), bool)
        for m in (pred, gt):
            for _ in range(2):
                y, x = rng.integers(0, 18, 2)
                m[y:y + rng.integers(2, 8), x:x + rng.integers(2, 10)] = True
        preds.append(pred)
        gts.append(gt)
    got = metrics.boundary_f(np.stack(preds), np.stack(gts))
    np.testing.assert_allclose(got, [ref_f(p, g) for p, g in zip(preds, gts)])


def test_boundary_f_void_clears_mask_before_boundary():
    gt = square(30, 40, 5, 5, 10)
    pred = gt.copy()
    pred[20:25, 30:35] = True  # a spurious blob...
    void = np.zeros_like(gt)
    void[18:27, 28:37] = True  # ...entirely in void.
    assert metrics.boundary_f(pred, gt) < 1
    assert metrics.boundary_f(pred, gt, void) == 1.0


# ----------------------------------------------------------------------------- statistics

def test_db_statistics_known_values():
    values = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    mean, recall, decay = metrics.db_statistics(values)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(0.5)  # strictly above 0.5
    # Bins by round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]: first [.9 .8 .7], last [.4 .3 .2].
    assert decay == pytest.approx(0.8 - 0.3)


def test_db_statistics_nan_handling_as_reference():
    mean, recall, _ = metrics.db_statistics(np.array([1.0, np.nan, 0.0, 1.0]))
    assert mean == pytest.approx(2 / 3)  # nanmean skips the NaN...
    assert recall == pytest.approx(2 / 4)  # ...but `nanmean(values > 0.5)` counts it a miss


# ----------------------------------------------------------------------------- matching

def layers_stack(*masks):
    return np.stack(masks)


def test_match_layers_recovers_permutation():
    rng = np.random.default_rng(3)
    gt = rng.random((4, 3, 10, 12)) > 0.5  # (T, O, H, W)
    pred = gt[:, [2, 0, 1]]                  # layer 0 is object 2, ...
    np.testing.assert_array_equal(metrics.match_layers_to_objects(pred, gt), [2, 0, 1])
    # More layers than objects: the extra layer is unassigned.
    pred4 = np.concatenate([pred, np.zeros_like(pred[:, :1])], axis=1)
    assert metrics.match_layers_to_objects(pred4, gt[:, :2]).tolist().count(-1) == 2


def test_window_hungarian_iou_official_rule():
    t, h, w = 3, 8, 8
    obj_a = np.zeros((t, h, w), bool)
    obj_a[:, :4, :4] = True
    obj_b = np.zeros((t, h, w), bool)
    obj_b[:, 4:, 4:] = True
    absent = np.zeros((t, h, w), bool)
    gt = np.stack([obj_a, obj_b, absent], axis=1)  # object 3 never present in the window
    pred = np.stack([obj_b, absent, obj_a], axis=1)  # permuted layers
    np.testing.assert_allclose(metrics.window_hungarian_iou(pred, gt), [1.0, 1.0, 1.0])
    # Halve object b's prediction: IoU 0.5 on b, 1 on a; averaged over the 2 present objects.
    half_b = obj_b.copy()
    half_b[:, 6:] = False
    pred = np.stack([half_b, absent, obj_a], axis=1)
    np.testing.assert_allclose(metrics.window_hungarian_iou(pred, gt), [0.75] * 3)
    # More objects than layers: the unassigned present object counts 0.
    gt3 = np.stack([obj_a, obj_b, ~(obj_a | obj_b)], axis=1)
    pred2 = np.stack([obj_a, obj_b], axis=1)
    np.testing.assert_allclose(metrics.window_hungarian_iou(pred2, gt3), [2 / 3] * 3)
    # No object present anywhere: 0 (the official code's convention).
    np.testing.assert_allclose(metrics.window_hungarian_iou(pred, np.zeros_like(gt)), [0, 0, 0])


def test_davis2017_unsupervised_against_brute_force():
    rng = np.random.default_rng(4)
    t, h, w = 3, 16, 20

    def blob():
        m = np.zeros((t, h, w), bool)
        for i in range(t):
            y, x = rng.integers(0, 10, 2)
            m[i, y:y + rng.integers(3, 7), x:x + rng.integers(3, 9)] = True
        return m

    gt = np.stack([blob() for _ in range(3)])
    pred = np.stack([gt[1], blob(), gt[0]])  # two right, one wrong, one object lacks its own
    j, f, proposal = metrics.davis2017_unsupervised(pred, gt)
    # Independent: try every assignment with the reference J and F.
    score = np.array([[np.mean([(ref_iou(pred[p, i], gt[o, i]) + ref_f(pred[p, i], gt[o, i])) / 2
                                for i in range(t)]) for o in range(3)] for p in range(3)])
    best = max(itertools.permutations(range(3)), key=lambda perm: sum(score[perm[o], o]
                                                                       for o in range(3)))
    np.testing.assert_array_equal(proposal, best)
    for o in range(3):
        np.testing.assert_allclose(j[o], [ref_iou(pred[best[o], i], gt[o, i]) for i in range(t)])
        np.testing.assert_allclose(f[o], [ref_f(pred[best[o], i], gt[o, i]) for i in range(t)])
    assert proposal[0] == 2 and proposal[1] == 0
    np.testing.assert_allclose(j[0], 1.0)


def test_davis2017_unsupervised_pads_missing_proposals():
    gt = np.zeros((2, 2, 10, 10), bool)
    gt[0, :, :5] = True
    gt[1, :, 5:] = True
    j, f, proposal = metrics.davis2017_unsupervised(gt[:1], gt)
    np.testing.assert_allclose(j, [[1, 1], [0, 0]])
    np.testing.assert_allclose(f, [[1, 1], [0, 0]])
    assert proposal.tolist() == [0, 1]  # index 1 is the padded empty proposal
    with pytest.raises(ValueError, match="at most 20"):
        metrics.davis2017_unsupervised(np.zeros((21, 2, 10, 10), bool), gt)


def test_davis2016_sequence_drops_first_and_last_frame():
    gt = np.zeros((5, 10, 10), bool)
    gt[:, 2:6, 2:6] = True
    pred = gt.copy()
    pred[0] = False   # wrong first and last frames are not scored
    pred[-1] = ~gt[-1]
    j, f = metrics.davis2016_sequence(pred, gt)
    assert j.shape == (3,) and np.all(j == 1) and np.all(f == 1)


# ----------------------------------------------------------------------------- layers

def test_labels_to_layers_and_merged_foreground():
    labels = np.array([[[0, 1], [2, 255]]], np.uint8)
    layers = metrics.labels_to_layers(labels)
    assert layers.shape == (2, 1, 2, 2)
    assert layers[1, 0, 1, 0] and not layers.any(axis=0)[0, 1, 1]  # 255 is not a layer
    assert metrics.labels_to_layers(labels, num_layers=3).shape[0] == 3
    np.testing.assert_array_equal(metrics.merged_foreground(labels), labels != 0)


# ----------------------------------------------------------------------------- MoCA

def test_box_iou_known_values():
    assert metrics.box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert metrics.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert metrics.box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges


def test_moca_box_from_mask():
    mask = np.zeros((40, 60), bool)
    mask[5:15, 10:30] = True    # area 200: the box
    mask[30:33, 40:43] = True   # a smaller blob is ignored
    np.testing.assert_array_equal(metrics.moca_box_from_mask(mask), [10, 5, 30, 15])
    # Scaled to the frame size the boxes refer to (here twice as large).
    np.testing.assert_array_equal(metrics.moca_box_from_mask(mask, (80, 120)), [20, 10, 60, 30])
    # Border mostly foreground: the mask is read inverted (background predicted).
    inverted = ~np.zeros((40, 60), bool)
    inverted[10:20, 20:40] = False
    np.testing.assert_array_equal(metrics.moca_box_from_mask(inverted), [20, 10, 40, 20])
    assert metrics.moca_box_from_mask(np.zeros((40, 60), bool)) is None


def test_success_counts_strict_threshold():
    counts = metrics.success_counts([0.5, 0.55, 0.9, 0.95, 0.3])
    # > 0.5: 0.55 0.9 0.95 | > 0.6: 0.9 0.95 | > 0.7, 0.8: same | > 0.9: 0.95
    assert counts.tolist() == [3, 2, 2, 2, 1]


def test_box_to_mask_truncates_like_moca_filter():
    mask = metrics.box_to_mask([2.7, 1.2, 5.9, 4.0], (6, 8))
    assert mask.sum() == 3 * 3 and mask[1, 2] and mask[3, 4] and not mask[4, 5]


def test_order_pair_counts_follows_the_matched_layers():
    gt = np.zeros((2, 3, 8, 8), bool)
    gt[:, 0, 0:4, 0:4] = True
    gt[:, 1, 2:6, 2:6] = True      # overlaps object 0
    gt[:, 2, 6:8, 6:8] = True      # overlaps nobody
    pred = gt[:, [2, 0, 1]]         # layer 0 = object 2, layer 1 = object 0, layer 2 = object 1
    # Object 1 (layer 2) is in front of object 0 (layer 1): right iff order[2] < order[1].
    assert metrics.order_pair_counts(pred, np.array([0.0, 5.0, 1.0]), gt) == (1, 1)
    assert metrics.order_pair_counts(pred, np.array([0.0, 1.0, 5.0]), gt) == (0, 1)
    assert metrics.order_pair_counts(pred, np.array([0.0, 1.0, 1.0]), gt) == (0, 1)  # a tie
    assert metrics.order_pair_counts(pred[:, :1], np.array([0.0]), gt) == (0, 1)  # unmatched
    assert metrics.order_pair_counts(pred, np.zeros(3), gt[:, 2:]) == (0, 0)  # no pairs
