"""End-to-end evaluation on tiny fake benchmarks in their real layouts, with model stubs.

A stub that decodes the ground truth from the flows must score J = F = 1 (SR = 1 on MoCA);
a stub shifted right by S pixels must score the closed-form lower value.
"""

import csv
import json
import os

import eval_fakes as ef
import numpy as np
import pytest
from PIL import Image

from oclr_jax.eval import runner as oclr_eval
from oclr_jax.eval.runner import EvalOptions, evaluate

WINDOW = 8
SHIFT = 4


def options(dataset, root, out, **kwargs):
    kwargs.setdefault("sequences", "all")
    return EvalOptions(dataset=dataset, data_dir=str(root), out_dir=str(out),
                       resolution=(ef.H, ef.W), window=WINDOW, batch_size=2, progress=False,
                       **kwargs)


def moving_rects(frames, boxes):
    """(T, H, W) uint8 labels: box i (y, x, h, w) is object i+1, moving 1 px right per frame."""
    labels = np.zeros((frames, ef.H, ef.W), np.uint8)
    for t in range(frames):
        for i, (y, x, h, w) in enumerate(boxes):
            labels[t, y:y + h, x + t:x + t + w] = i + 1
    return labels


def shifted_j(width):
    return (width - SHIFT) / (width + SHIFT)


def expected_f(gt_fg, shift=SHIFT):
    pred = np.zeros_like(gt_fg)
    pred[..., shift:] = gt_fg[..., :-shift]
    return np.mean([ef.ref_f(p, g) for p, g in zip(pred, gt_fg)])


# ----------------------------------------------------------------------------- DAVIS

@pytest.fixture(scope="module")
def davis2016(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis2016")
    sequences = {"bear": moving_rects(11, [(10, 5, 16, 20)]),   # 2 windows of 8
                 "dog": moving_rects(5, [(20, 30, 12, 20)])}    # one padded window
    ef.write_davis(str(root), "davis2016", sequences, image_set=True)
    return root, sequences


def test_davis2016_ground_truth_and_shifted(davis2016, tmp_path):
    root, sequences = davis2016
    exact = evaluate(options("davis2016", root, tmp_path / "gt"), ef.stub_predict_fn())
    assert exact["summary"]["J_mean"] == 1.0 and exact["summary"]["F_mean"] == 1.0
    # The DAVIS 2016 evaluator drops the first and last frame of each sequence.
    assert [r["frames"] for r in exact["sequences"]] == [9, 3]
    shifted = evaluate(options("davis2016", root, tmp_path / "shift"),
                       ef.stub_predict_fn(shift=SHIFT))
    assert shifted["summary"]["J_mean"] == pytest.approx(shifted_j(20))
    for row in shifted["sequences"]:
        fg = sequences[row["sequence"]][1:-1] > 0
        assert row["F_mean"] == pytest.approx(expected_f(fg))
    # Saved masks: indexed PNGs in the DAVIS layout, object id 1 coloured white.
    image = Image.open(tmp_path / "shift" / "masks" / "bear" / "00003.png")
    assert image.mode == "P" and image.getpalette()[3:6] == [255, 255, 255]
    expected = np.zeros((ef.H, ef.W), np.uint8)
    expected[10:26, 5 + 3 + SHIFT:5 + 3 + SHIFT + 20] = 1
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_davis2017m_objects_layers_and_void(tmp_path):
    labels = moving_rects(10, [(2, 2, 10, 20), (15, 2, 10, 20), (30, 2, 10, 20), (2, 50, 8, 20)])
    labels[:, 40:, :4] = 255  # void pixels are left out
    other = moving_rects(6, [(10, 10, 20, 20)])
    ef.write_davis(str(tmp_path / "d"), "davis2017m", {"four": labels, "one": other})
    result = evaluate(options("davis2017m", tmp_path / "d", tmp_path / "out"),
                      ef.stub_predict_fn(num_layers=3))
    rows = {r["sequence"]: r for r in result["sequences"]}
    # Three layers for four objects: the fourth gets the padded empty proposal.
    assert [o["J_mean"] for o in rows["four"]["objects"]] == [1.0, 1.0, 1.0, 0.0]
    assert rows["one"]["J_mean"] == 1.0
    summary = result["summary"]
    assert summary["objects"] == 5
    assert summary["J_mean"] == pytest.approx(4 / 5)  # averaged over all objects
    assert summary["JF_mean"] == pytest.approx(4 / 5)
    # The official code's window J, weighted by object count, agrees here.
    assert summary["J_official_object_weighted"] == pytest.approx((3 / 4 * 4 + 1) / 5)
    saved = np.asarray(Image.open(tmp_path / "out" / "masks" / "four" / "00002.png"))
    np.testing.assert_array_equal(saved, np.where(np.isin(labels[2], [1, 2, 3]), labels[2], 0))


def test_davis2017m_shifted_matches_closed_form(tmp_path):
    labels = moving_rects(9, [(2, 2, 10, 20), (20, 30, 10, 30)])
    ef.write_davis(str(tmp_path / "d"), "davis2017m", {"two": labels})
    result = evaluate(options("davis2017m", tmp_path / "d", tmp_path / "out"),
                      ef.stub_predict_fn(shift=SHIFT))
    objects = result["sequences"][0]["objects"]
    assert objects[0]["J_mean"] == pytest.approx(shifted_j(20))
    assert objects[1]["J_mean"] == pytest.approx(shifted_j(30))
    for o, obj in enumerate(objects):
        assert obj["F_mean"] == pytest.approx(expected_f(labels == o + 1))


# ----------------------------------------------------------------------------- SegTrackv2/FBMS

def test_segtrackv2_merges_layers(tmp_path):
    fg = moving_rects(7, [(5, 5, 20, 30)]) > 0
    ef.write_binary_dataset(str(tmp_path / "st"), {"worm": fg})
    split = fg.astype(np.int64)
    split[:, :, 20:] *= 2  # the stub predicts the object as two layers; merged it is whole
    frames = [f"{i:05d}" for i in range(7)]
    ef.write_flows(str(tmp_path / "st"), "worm", frames, split)
    result = evaluate(options("segtrackv2", tmp_path / "st", tmp_path / "out"),
                      ef.stub_predict_fn())
    assert result["summary"]["J_mean"] == 1.0 and result["summary"]["F_mean"] == 1.0
    saved = np.asarray(Image.open(tmp_path / "out" / "masks" / "worm" / "00004.png"))
    np.testing.assert_array_equal(saved, fg[4])


def test_fbms_scores_only_annotated_frames(tmp_path):
    sequences = {"cars1": moving_rects(13, [(5, 5, 20, 30)]) > 0,
                 "tennis": moving_rects(6, [(8, 8, 10, 30)]) > 0}
    annotated = {"cars1": [0, 5, 10], "tennis": [2]}
    ef.write_binary_dataset(str(tmp_path / "fbms"), sequences, annotated, start=1)
    result = evaluate(options("fbms59", tmp_path / "fbms", tmp_path / "out"),
                      ef.stub_predict_fn(shift=SHIFT))
    rows = {r["sequence"]: r for r in result["sequences"]}
    assert rows["cars1"]["frames"] == 3 and rows["tennis"]["frames"] == 1
    assert rows["cars1"]["J_mean"] == pytest.approx(shifted_j(30))
    summary = result["summary"]
    assert summary["frames"] == 4
    assert summary["J_mean"] == pytest.approx(shifted_j(30))
    assert summary["F_mean"] == pytest.approx(np.mean(
        [expected_f(sequences[n][annotated[n]]) for n in ("cars1", "tennis")]))


# ----------------------------------------------------------------------------- MoCA

def test_moca_success_rate(tmp_path):
    boxes = {"crab": (12, {t: (5 + t, 10, 20, 12) for t in range(0, 12, 5)}),
             "flounder": (6, {0: (30, 20, 20, 20), 5: (40, 25, 20, 20)})}
    ef.write_moca(str(tmp_path / "moca"), boxes)
    exact = evaluate(options("moca", tmp_path / "moca", tmp_path / "gt"), ef.stub_predict_fn())
    summary = exact["summary"]
    assert summary["frames"] == 5
    assert summary["SR_mean"] == 1.0 and summary["box_iou_mean"] == 1.0
    shifted = evaluate(options("moca", tmp_path / "moca", tmp_path / "shift"),
                       ef.stub_predict_fn(shift=SHIFT))
    summary = shifted["summary"]
    iou = shifted_j(20)  # 16/24: above 0.5 and 0.6, below 0.7
    assert summary["box_iou_mean"] == pytest.approx(iou)
    assert [summary[f"SR_{t}"] for t in (0.5, 0.6, 0.7, 0.8, 0.9)] == [1, 1, 0, 0, 0]
    assert summary["SR_mean"] == pytest.approx(0.4)


# ----------------------------------------------------------------------------- Syn-Val

def synval_sequences():
    a = np.zeros((8, ef.H, ef.W, 2), bool)
    a[:, 5:25, 5:35, 0] = True
    a[:, 15:35, 25:55, 1] = True   # object 2 in front, overlapping object 1
    b = np.zeros((8, ef.H, ef.W, 3), bool)
    b[:, 2:20, 2:30, 0] = True
    b[:, 10:30, 20:50, 1] = True
    b[:, 25:45, 40:75, 2] = True
    return {"2_000000": a, "3_000001": b}


def test_synval_modal_and_amodal(tmp_path):
    sequences = synval_sequences()
    ef.write_synval(str(tmp_path / "syn"), sequences)
    exact = evaluate(options("synval", tmp_path / "syn", tmp_path / "gt"), ef.stub_predict_fn())
    assert exact["summary"]["J_modal"] == 1.0 and exact["summary"]["J_amodal"] == 1.0
    shifted = evaluate(options("synval", tmp_path / "syn", tmp_path / "shift"),
                       ef.stub_predict_fn(shift=SHIFT))
    # Independent: shift each amodal mask, compose (higher channel in front), IoU per object.
    per_seq_modal, per_seq_amodal = [], []
    for amodal in sequences.values():
        pred = np.zeros_like(amodal)
        pred[:, :, SHIFT:] = amodal[:, :, :-SHIFT]
        per_seq_amodal.append(np.mean([[ef.ref_iou(pred[t, ..., k], amodal[t, ..., k])
                                        for k in range(amodal.shape[-1])] for t in range(8)]))
        modal = lambda m: [m[..., k] & ~m[..., k + 1:].any(-1) for k in range(m.shape[-1])]
        per_seq_modal.append(np.mean([[ef.ref_iou(p, g) for p, g in zip(modal(pred[t]),
                                                                         modal(amodal[t]))]
                                      for t in range(8)]))
    assert shifted["summary"]["J_amodal"] == pytest.approx(np.mean(per_seq_amodal))
    assert shifted["summary"]["J_modal"] == pytest.approx(np.mean(per_seq_modal))
    amodal_png = np.asarray(Image.open(tmp_path / "gt" / "masks" / "2_000000" / "2_00003.png"))
    np.testing.assert_array_equal(amodal_png > 127, sequences["2_000000"][3, ..., 1])


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("dataset", ["davis2016", "davis2017m", "fbms59", "moca", "synval"])
def test_saved_masks_score_the_same(tmp_path, dataset):
    root = tmp_path / "data"
    if dataset in ("davis2016", "davis2017m"):
        ef.write_davis(str(root), dataset, {"x": moving_rects(10, [(3, 3, 12, 20),
                                                                   (20, 30, 15, 25)])})
    elif dataset == "fbms59":
        ef.write_binary_dataset(str(root), {"x": moving_rects(10, [(3, 3, 12, 20)]) > 0},
                                {"x": [0, 4, 9]})
    elif dataset == "moca":
        ef.write_moca(str(root), {"x": (10, {0: (3, 3, 20, 12), 5: (8, 3, 20, 12)})})
    else:
        ef.write_synval(str(root), synval_sequences())
    model = evaluate(options(dataset, root, tmp_path / "model"), ef.stub_predict_fn(shift=3))
    saved = evaluate(options(dataset, root, tmp_path / "scored",
                             predictions_dir=str(tmp_path / "model" / "masks")))
    # Saved masks carry no order logits: the order scores exist only in model mode.
    model_summary = {k: v for k, v in model["summary"].items() if not k.startswith("order_")}
    assert saved["summary"] == pytest.approx(model_summary)


def test_results_files_and_resume(davis2016, tmp_path):
    root, _ = davis2016
    out = tmp_path / "out"
    first = evaluate(options("davis2016", root, out), ef.stub_predict_fn(shift=SHIFT))
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert saved["summary"] == pytest.approx(first["summary"])
    assert [r["sequence"] for r in saved["sequences"]] == ["bear", "dog"]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["sequence"] for r in rows] == ["bear", "dog", "ALL"]
    assert float(rows[-1]["J_mean"]) == pytest.approx(first["summary"]["J_mean"])

    def must_not_run(flow):
        raise AssertionError("resumed sequences must not be predicted again")

    again = evaluate(options("davis2016", root, out), must_not_run)
    assert again["summary"] == pytest.approx(first["summary"])
    os.remove(out / "sequences" / "dog.json")  # an interrupted run: only "dog" is redone
    redo = evaluate(options("davis2016", root, out), ef.stub_predict_fn(shift=SHIFT))
    assert redo["summary"] == pytest.approx(first["summary"])


# ----------------------------------------------------------------------------- errors

def test_clear_errors(tmp_path, davis2016):
    root, _ = davis2016
    from oclr_jax.data.benchmarks import Benchmark, BenchmarkError

    with pytest.raises(BenchmarkError, match="does not exist"):
        Benchmark("davis2016", str(tmp_path / "nope"))
    with pytest.raises(BenchmarkError, match=r"missing JPEGImages/480p"):
        Benchmark("davis2016", str(tmp_path))
    with pytest.raises(BenchmarkError, match="use --sequences all"):
        Benchmark("davis2017m", str(root), sequences=None)  # official list, folders missing
    with pytest.raises(BenchmarkError, match=r"Flows_gap2.*gap 2"):
        Benchmark("davis2016", str(root), gaps=(1, -1, 2))
    # A missing annotation of a densely annotated benchmark is named.
    d = tmp_path / "d"
    ef.write_davis(str(d), "davis2016", {"s": moving_rects(4, [(3, 3, 5, 5)])})
    os.remove(d / "Annotations/480p/s/00002.png")
    with pytest.raises(BenchmarkError, match=r"Annotations/480p/s/00002\.png.*4 frames and 3"):
        Benchmark("davis2016", str(d), sequences="all").read_sequence("s")
    # Sparse annotations naming no frame, and MoCA without its CSV.
    f = tmp_path / "f"
    ef.write_binary_dataset(str(f), {"s": moving_rects(3, [(3, 3, 5, 5)]) > 0})
    ef.write_frames(str(f / "Annotations" / "s"), 1, start=7)
    os.rename(f / "Annotations/s/00007.jpg", f / "Annotations/s/00007.png")
    with pytest.raises(BenchmarkError, match=r"00007.*have no frame"):
        Benchmark("fbms59", str(f), sequences="all").read_sequence("s")
    with pytest.raises(BenchmarkError, match="annotations.csv"):
        Benchmark("moca", str(f), sequences="all")
    # Predictions missing a frame.
    from oclr_jax.data import masks_io

    for t in (0, 2):
        masks_io.write_indexed_png(str(tmp_path / "p" / "bear" / f"{t:05d}.png"),
                                   np.zeros((ef.H, ef.W), np.uint8))
    with pytest.raises(masks_io.MaskFileError, match=r"p/bear/00001\.png: mask file does not"):
        evaluate(options("davis2016", root, tmp_path / "o", predictions_dir=str(tmp_path / "p"),
                         sequences=["bear"]))


def test_cli_scores_predictions_and_reports_errors(davis2016, tmp_path, capsys):
    root, _ = davis2016
    evaluate(options("davis2016", root, tmp_path / "model"), ef.stub_predict_fn(shift=SHIFT))
    code = oclr_eval.main(["--dataset", "davis2016", "--data-dir", str(root), "--predictions",
                           str(tmp_path / "model" / "masks"), "--out", str(tmp_path / "cli"),
                           "--sequences", "bear,dog", "--config.eval.window=8"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ALL" in out and "bear" in out and f"{shifted_j(20):.4f}" in out
    assert os.path.isfile(tmp_path / "cli" / "results.json")
    code = oclr_eval.main(["--dataset", "davis2016", "--data-dir", str(tmp_path / "missing"),
                           "--predictions", str(tmp_path)])
    assert code == 2
    assert "missing: data dir does not exist" in capsys.readouterr().err


def test_synval_order_accuracy_and_counts_by_objects(tmp_path):
    """Order accuracy over overlapping GT pairs (2_000000: 1 pair; 3_000001: pairs 1-2 and
    2-3 overlap, 1-3 do not), per-object-count J, and the spread of the order logits."""
    ef.write_synval(str(tmp_path / "syn"), synval_sequences())
    stub = ef.stub_predict_fn()  # layer k = object k+1, order [3, 2, 1]: the higher nearer
    right = evaluate(options("synval", tmp_path / "syn", tmp_path / "right"), stub)["summary"]
    assert right["order_pairs"] == 3 and right["order_accuracy"] == 1.0
    assert right["J_modal_2obj"] == 1.0 and right["J_modal_3obj"] == 1.0
    assert right["J_amodal_3obj"] == 1.0 and "J_modal_1obj" not in right
    assert right["order_logit_std"] == 0.0  # the stub's order ignores the clip

    def reversed_order(flow):
        out = stub(flow)
        return dict(out, order_logits=-out["order_logits"])

    wrong = evaluate(options("synval", tmp_path / "syn", tmp_path / "wrong"), reversed_order)
    assert wrong["summary"]["order_pairs"] == 3 and wrong["summary"]["order_accuracy"] == 0.0
    rows = {r["sequence"]: r for r in wrong["sequences"]}
    assert (rows["2_000000"]["order_pairs"], rows["3_000001"]["order_pairs"]) == (1, 2)
    assert rows["3_000001"]["num_objects"] == 3
