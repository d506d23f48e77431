"""Windows, flow loading with the official fallback, sharded prediction, upsampling."""

import os

import eval_fakes as ef
import jax
import numpy as np
import pytest

from oclr_jax.data import flow_io
from oclr_jax.data.benchmarks import Benchmark
from oclr_jax.eval import inference


@pytest.mark.parametrize("length, expected", [
    (1, [[0] * 30]),
    (29, [list(range(29)) + [28]]),
    (30, [list(range(30))]),
    (31, [list(range(30)), list(range(1, 31))]),
    (75, [list(range(30)), list(range(30, 60)), list(range(45, 75))]),
])
def test_cut_windows_official_rule(length, expected):
    windows = inference.cut_windows(length, 30)
    assert [w.tolist() for w in windows] == expected


def test_stitch_counts_repeated_frames_once():
    windows = inference.cut_windows(31, 30)
    per_window = [np.full((30,), 0), np.full((30,), 1)]
    # Frames 0..29 come from the first window, only frame 30 from the second.
    np.testing.assert_array_equal(inference.stitch(windows, per_window, 31), [0] * 30 + [1])
    short = inference.cut_windows(3, 8)
    np.testing.assert_array_equal(inference.stitch(short, [np.arange(8)], 3), [0, 1, 2])


def make_record(tmp_path, frames=4, fmt="flo"):
    labels = np.zeros((frames, ef.H, ef.W), np.uint8)
    for t in range(frames):
        labels[t, 10:20, 5 + t:25 + t] = 1
    ef.write_davis(str(tmp_path), "davis2016", {"seq": labels}, fmt=fmt)
    bench = Benchmark("davis2016", str(tmp_path), sequences=["seq"])
    return bench.read_sequence("seq"), labels


@pytest.mark.parametrize("fmt", ["flo", "npy", "png"])
def test_load_window_flow_fallback_and_formats(tmp_path, fmt):
    record, labels = make_record(tmp_path, fmt=fmt)
    flow = inference.load_window_flow(record, [0, 1, 2, 3, 3], (1, -1), (ef.H, ef.W))
    assert flow.shape == (5, ef.H, ef.W, 4) and flow.dtype == np.float32
    # u(+1) = 4 * bits everywhere, including the last frame (negated gap -1 flow);
    # u(-1) = -4 * bits, including the first frame (negated gap +1 flow).
    for i, t in enumerate([0, 1, 2, 3, 3]):
        np.testing.assert_allclose(flow[i, ..., 0], 4.0 * (labels[t] > 0))
        np.testing.assert_allclose(flow[i, ..., 2], -4.0 * (labels[t] > 0))
    # v is +0.5 forward; the fallback negates v too: frame 3's gap +1 is -(gap -1 v = 0.5).
    assert flow[0, 0, 0, 1] == pytest.approx(0.5) and flow[3, 0, 0, 1] == pytest.approx(-0.5)
    assert flow[0, 0, 0, 3] == pytest.approx(-0.5) and flow[1, 0, 0, 3] == pytest.approx(0.5)


def test_missing_flow_in_the_middle_is_an_error_naming_the_file(tmp_path):
    record, _ = make_record(tmp_path)
    os.remove(os.path.join(tmp_path, "Flows_gap1", "seq", "00001.flo"))
    record = Benchmark("davis2016", str(tmp_path), sequences=["seq"]).read_sequence("seq")
    with pytest.raises(inference.FlowMissingError, match=r"Flows_gap1/seq/00001\.flo"):
        inference.load_window_flow(record, [0, 1], (1, -1), (ef.H, ef.W))
    # At the end, with the fallback gone too, both files are named.
    os.remove(os.path.join(tmp_path, "Flows_gap-1", "seq", "00003.flo"))
    record = Benchmark("davis2016", str(tmp_path), sequences=["seq"]).read_sequence("seq")
    with pytest.raises(inference.FlowMissingError, match=r"00003\.flo.*Flows_gap-1"):
        inference.load_window_flow(record, [3], (1, -1), (ef.H, ef.W))


def test_flow_resized_with_vector_scaling(tmp_path):
    record, _ = make_record(tmp_path)
    big = np.zeros((2 * ef.H, 2 * ef.W, 2), np.float32)
    big[..., 0], big[..., 1] = 6.0, -3.0
    flow_io.write_flo(record.flow_paths[1][0], big)
    flow = inference.load_window_flow(record, [0], (1,), (ef.H, ef.W))
    np.testing.assert_allclose(flow[0, ..., 0], 3.0)   # u * W_new / W_old
    np.testing.assert_allclose(flow[0, ..., 1], -1.5)  # v * H_new / H_old


def test_crop_raft_padding():
    padded = np.arange(50 * 86 * 2, dtype=np.float32).reshape(50, 86, 2)
    cropped = inference.crop_raft_padding(padded, (48, 80))
    np.testing.assert_array_equal(cropped, padded[1:49, 3:83])  # symmetric, as RAFT pads
    with pytest.raises(flow_io.FlowFileError, match="multiple of 8"):
        inference.crop_raft_padding(padded, (40, 80))


def test_window_predictor_composes_modal_masks_and_shards():
    rng = np.random.default_rng(0)
    k = 3
    logits = rng.normal(size=(5, 2, 16, 16, k)).astype(np.float32)
    order = rng.normal(size=(5, k)).astype(np.float32)

    def predict_fn(params, flow):  # the flow selects which sample's outputs to return
        index = flow[:, 0, 0, 0, 0].astype(np.int32)
        return {"amodal_logits": params["logits"][index], "order_logits": params["order"][index]}

    predictor = inference.WindowPredictor(predict_fn, batch_size=3,
                                          params={"logits": logits, "order": order},
                                          with_amodal=True)
    assert predictor.batch_size % len(jax.local_devices()) == 0
    flows = np.zeros((5, 2, 16, 16, 4), np.float32)
    flows[:, ..., 0] = np.arange(5)[:, None, None, None]
    labels, probs = predictor(flows)
    assert labels.shape == (5, 2, 16, 16) and labels.dtype == np.uint8
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    # Independent composition: walk the layers by ascending order value (nearest first).
    amodal = logits > 0
    for b in range(5):
        expected = np.zeros((2, 16, 16), np.uint8)
        for layer in np.argsort(order[b], kind="stable"):
            free = expected == 0
            expected[free & amodal[b, ..., layer]] = layer + 1
        np.testing.assert_array_equal(labels[b], expected)
    assert predictor.num_layers == k
    predictor(flows[:2])  # a smaller batch is padded to the same shape: no recompile.
    assert predictor._step._cache_size() == 1


def test_upsample_layers_nearest_and_bilinear():
    line = np.zeros((1, 2, 4, 1), np.float32)
    line[0, :, 1, 0] = 1.0
    nearest = inference.upsample_layers(line, (4, 8), "nearest")[0, 0, :, 0]
    np.testing.assert_array_equal(nearest, [0, 0, 1, 1, 0, 0, 0, 0])
    # Half-pixel bilinear: output column j samples x = (j + 0.5) / 2 - 0.5, so columns 2, 3
    # take 0.75 of the line and columns 1, 4 only 0.25.
    bilinear = inference.upsample_layers(line, (4, 8), "bilinear")[0, 0, :, 0]
    np.testing.assert_array_equal(bilinear, [0, 0, 1, 1, 0, 0, 0, 0])
    line3 = np.zeros((1, 3, 3, 1), np.float32)
    line3[0, :, 1, 0] = 1.0
    # 3 -> 7 columns: nearest takes floor(j * 3 / 7) -> columns 3, 4 hit source column 1.
    np.testing.assert_array_equal(inference.upsample_layers(line3, (3, 7), "nearest")[0, 0, :, 0],
                                  [0, 0, 0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="upsample method"):
        inference.upsample_layers(line, (4, 8), "cubic")


def test_predict_sequences_batches_across_sequences(tmp_path):
    sequences = {}
    for name, frames in (("a", 3), ("b", 10), ("c", 17)):
        labels = np.zeros((frames, ef.H, ef.W), np.uint8)
        for t in range(frames):
            labels[t, 5:15, t:t + 10] = 1
            labels[t, 20:30, 40:50 + t] = 2
        sequences[name] = labels
    ef.write_davis(str(tmp_path), "davis2017m", sequences)
    bench = Benchmark("davis2017m", str(tmp_path), sequences="all")
    predictor = inference.WindowPredictor(ef.stub_predict_fn(), batch_size=2)
    outputs = list(inference.predict_sequences(bench, predictor, (1, -1), (ef.H, ef.W), 8))
    assert [o.record.name for o in outputs] == ["a", "b", "c"]
    for out in outputs:
        gt = sequences[out.record.name]
        assert out.labels.shape[0] == len(inference.cut_windows(len(gt), 8))
        for w, indices in enumerate(out.windows):
            np.testing.assert_array_equal(out.labels[w], gt[indices])
