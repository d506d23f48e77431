"""Reading official-layout synthetic folders: round trips, the missing-gap fallback, errors."""

import os

import numpy as np
import official_fixtures as fx
import pytest

from oclr_jax.data import flow_io
from oclr_jax.data import official_layout as ol


@pytest.fixture()
def split(tmp_path):
    root = str(tmp_path / "syn")
    return root, fx.write_split(root, num_sequences=3, num_frames=4, height=32, width=48)


def test_lists_sequences_and_frames(split):
    root, truths = split
    assert ol.list_sequences(root) == sorted(truths)
    assert ol.list_frames(root, "2_000001") == ["00000", "00001", "00002", "00003"]


def test_round_trip_with_missing_gap_fallback(split):
    root, truths = split
    for name, truth in truths.items():
        seq = ol.read_sequence(root, name, gaps=(1, -1), with_rgb=True)
        expected = fx.expected_flows(truth)
        np.testing.assert_array_equal(seq.flows[1], expected[1])
        np.testing.assert_array_equal(seq.flows[-1], expected[-1])
        # The last frame has no gap+1 file: it is the negated gap-1 flow of the same frame.
        assert not os.path.exists(os.path.join(root, "Flows_gap1", name, "00003.flo"))
        np.testing.assert_array_equal(seq.flows[1][-1], -truth["flow_bwd"][-1])
        np.testing.assert_array_equal(seq.amodal, truth["amodal"])
        np.testing.assert_array_equal(seq.modal, truth["modal"])
        assert seq.num_objects == int(name[0])
        assert seq.rgb.shape == truth["rgb"].shape and seq.rgb.dtype == np.uint8
        # JPEG is lossy; random noise images lose a lot, but the mean stays close.
        assert abs(seq.rgb.astype(float).mean() - truth["rgb"].astype(float).mean()) < 3
        stacked = seq.stacked_flow((-1, 1))
        np.testing.assert_array_equal(stacked[..., :2], expected[-1])
        np.testing.assert_array_equal(stacked[..., 2:], expected[1])


def test_resize_scales_vectors_and_thresholds_masks(tmp_path):
    root = str(tmp_path)
    truth = fx.moving_squares(3, 32, 48, 1, seed=3)
    truth["flow_fwd"][:] = (2.0, 1.0)
    truth["flow_bwd"][:] = (-2.0, -1.0)
    fx.write_sequence(root, "1_a", truth, drop_edge_gaps=False)
    seq = ol.read_sequence(root, "1_a", resolution=(64, 72))
    assert seq.flows[1].shape == (3, 64, 72, 2)
    np.testing.assert_allclose(seq.flows[1][..., 0], 2.0 * 72 / 48, rtol=1e-6)
    np.testing.assert_allclose(seq.flows[1][..., 1], 1.0 * 64 / 32, rtol=1e-6)
    # A square of side s at 32 px height covers about 2 s rows at 64 px.
    rows = seq.amodal[0, :, :, 0].any(axis=1).sum()
    assert abs(rows - 2 * truth["amodal"][0, :, :, 0].any(axis=1).sum()) <= 1


def test_missing_flow_names_both_files(split):
    root, _ = split
    os.remove(os.path.join(root, "Flows_gap1", "1_000000", "00001.flo"))
    os.remove(os.path.join(root, "Flows_gap-1", "1_000000", "00001.flo"))
    with pytest.raises(ol.LayoutError, match=r"Flows_gap1/1_000000/00001\.flo.*Flows_gap-1"):
        ol.read_sequence(root, "1_000000")


def test_nan_flow_names_the_file(split):
    root, _ = split
    path = os.path.join(root, "Flows_gap1", "2_000001", "00000.flo")
    flow = flow_io.read_flo(path)
    flow[3, 4, 0] = np.nan
    flow_io.write_flo(path, flow)
    with pytest.raises(flow_io.FlowFileError, match=r"2_000001/00000\.flo.*NaN"):
        ol.read_sequence(root, "2_000001")


def test_wrong_flow_shape_names_the_file(split):
    root, _ = split
    path = os.path.join(root, "Flows_gap-1", "3_000002", "00002.flo")
    flow_io.write_flo(path, np.zeros((16, 48, 2), np.float32))
    with pytest.raises(ol.LayoutError, match=r"3_000002/00002\.flo.*\(16, 48, 2\)"):
        ol.read_sequence(root, "3_000002")
    with pytest.raises(ol.LayoutError, match=r"3_000002/00002\.flo.*\(16, 48, 2\)"):
        ol.read_sequence(root, "3_000002", resolution=(64, 96))  # Not resized away.


def test_missing_amodal_mask_and_mask_size(split):
    root, _ = split
    os.remove(os.path.join(root, "AmodalAnnotations", "3_000002", "3_00001.png"))
    with pytest.raises(ol.LayoutError, match=r"3_00001\.png.*object 3"):
        ol.read_sequence(root, "3_000002")
    import cv2
    cv2.imwrite(os.path.join(root, "AmodalAnnotations", "1_000000", "1_00002.png"),
                np.zeros((8, 8), np.uint8))
    with pytest.raises(ol.LayoutError, match="1_000000"):
        ol.read_sequence(root, "1_000000")


def test_name_must_start_with_object_count(tmp_path):
    with pytest.raises(ol.LayoutError, match="object count"):
        ol.num_objects_from_name("seq_a")
    with pytest.raises(ol.LayoutError, match="not an official-layout folder"):
        ol.list_sequences(str(tmp_path))
