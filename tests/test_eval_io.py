"""Mask PNG I/O and the benchmark readers' layout details."""

import os

import cv2
import eval_fakes as ef
import numpy as np
import pytest
from PIL import Image

from oclr_jax.data import masks_io
from oclr_jax.data.benchmarks import Benchmark, BenchmarkError, read_moca_csv

# ----------------------------------------------------------------------------- masks_io

def test_indexed_png_round_trip_and_palette(tmp_path):
    labels = np.random.default_rng(0).integers(0, 6, (12, 17)).astype(np.uint8)
    labels[0, 0] = 255
    path = str(tmp_path / "seq" / "00000.png")
    masks_io.write_indexed_png(path, labels)
    image = Image.open(path)
    assert image.mode == "P"
    palette = np.array(image.getpalette()).reshape(-1, 3)
    np.testing.assert_array_equal(palette[1:4], [[128, 0, 0], [0, 128, 0], [128, 128, 0]])
    np.testing.assert_array_equal(masks_io.read_label_png(path), labels)
    assert os.listdir(tmp_path / "seq") == ["00000.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="0..255"):
        masks_io.write_indexed_png(path, np.full((2, 2), 300))


def test_label_png_from_rgb_and_gray(tmp_path):
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    rgb = masks_io.davis_palette()[labels]
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[..., ::-1])
    np.testing.assert_array_equal(masks_io.read_label_png(str(tmp_path / "rgb.png")), labels)
    rgb[0, 0] = (7, 7, 7)
    cv2.imwrite(str(tmp_path / "odd.png"), rgb[..., ::-1])
    with pytest.raises(masks_io.MaskFileError, match=r"odd\.png: colour \(7, 7, 7\)"):
        masks_io.read_label_png(str(tmp_path / "odd.png"))
    cv2.imwrite(str(tmp_path / "gray.png"), labels)
    np.testing.assert_array_equal(masks_io.read_label_png(str(tmp_path / "gray.png")), labels)


def test_binary_png_conventions(tmp_path):
    mask = np.zeros((6, 6), bool)
    mask[1:4, 2:5] = True
    cv2.imwrite(str(tmp_path / "gray.png"), np.where(mask, 255, 0).astype(np.uint8))
    masks_io.write_indexed_png(str(tmp_path / "pal.png"), mask.astype(np.uint8),
                               masks_io.binary_palette())
    cv2.imwrite(str(tmp_path / "white.png"), np.where(mask[..., None], 255, 0).repeat(3, -1))
    for name in ("gray.png", "pal.png", "white.png"):
        np.testing.assert_array_equal(masks_io.read_binary_png(str(tmp_path / name)), mask)
    masks_io.write_binary_png(str(tmp_path / "out.png"), mask)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), mask * 255)
    with pytest.raises(masks_io.MaskFileError, match="does not exist"):
        masks_io.read_binary_png(str(tmp_path / "none.png"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(masks_io.MaskFileError, match=r"bad\.png: cannot decode"):
        masks_io.read_label_png(str(tmp_path / "bad.png"))


# ----------------------------------------------------------------------------- readers

def test_moca_csv_formats(tmp_path):
    filtered = tmp_path / "filtered.csv"
    filtered.write_text(",file_list,spatial_coordinates,metadata\n"
                        "0,/crab/00005.jpg,\"[2,-3,4,10,20]\",{'1': '2'}\n"
                        "1,/crab/00000.jpg,\"[2,1.5,2,10,20]\",{'1': '1'}\n"
                        "2,/crab/00010.jpg,\"[]\",{'1': '1'}\n"
                        "3,/crab/00015.jpg,\"[2,1,2,3,4]\",{}\n")
    boxes = read_moca_csv(str(filtered))
    assert sorted(boxes["crab"]) == ["00000", "00005", "00015"]  # the row without a box is skipped
    np.testing.assert_allclose(boxes["crab"]["00000"][0], [1.5, 2, 11.5, 22])
    np.testing.assert_allclose(boxes["crab"]["00005"][0], [0, 4, 10, 24])  # x clipped at 0
    assert boxes["crab"]["00015"][1] == "2"  # empty motion: the previous row's (by file name)
    via = tmp_path / "via.csv"
    via.write_text("# Exported using VGG Image Annotator\n# CSV_HEADER = ...\n"
                   "metadata_id,file_list,flags,temporal_coordinates,spatial_coordinates,metadata\n"
                   "1_a,\"[\"\"/arctic_fox/00000.jpg\"\"]\",0,\"[]\",\"[2,10,20,30,40]\","
                   "\"{\"\"1\"\":\"\"0\"\"}\"\n")
    np.testing.assert_allclose(read_moca_csv(str(via))["arctic_fox"]["00000"][0],
                               [10, 20, 40, 60])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(BenchmarkError, match="file_list, spatial_coordinates"):
        read_moca_csv(str(bad))


def test_davis_image_sets_and_unsupervised_annotations(tmp_path):
    labels = np.zeros((3, ef.H, ef.W), np.uint8)
    labels[:, 5:10, 5:10] = 1
    ef.write_davis(str(tmp_path), "davis2017m", {"b": labels, "a": labels, "c": labels},
                   image_set=True)
    os.rename(tmp_path / "Annotations", tmp_path / "Annotations_unsupervised")
    bench = Benchmark("davis2017m", str(tmp_path))
    assert bench.sequences == ["b", "a", "c"]  # the ImageSets order
    record = bench.read_sequence("a")
    assert record.labels.shape == (3, ef.H, ef.W) and record.annotated == (0, 1, 2)
    assert record.image_size == (ef.H, ef.W)
    assert record.flow_paths[1][-1] is None and record.flow_paths[-1][0] is None
    assert record.flow_paths[1][0].endswith("Flows_gap1/a/00000.flo")
    ef.write_davis(str(tmp_path / "d16"), "davis2016", {"x": labels, "y": labels},
                   image_set=True)
    assert Benchmark("davis2016", str(tmp_path / "d16")).sequences == ["x", "y"]


def test_custom_flow_folder_name(tmp_path):
    fg = np.zeros((3, ef.H, ef.W), bool)
    fg[:, 5:10, 5:10] = True
    ef.write_binary_dataset(str(tmp_path), {"s": fg})
    os.rename(tmp_path / "Flows_gap1", tmp_path / "raft_fwd_1")
    with pytest.raises(BenchmarkError, match="Flows_gap1: missing flow folder for gap 1"):
        Benchmark("segtrackv2", str(tmp_path), sequences="all")
    os.rename(tmp_path / "Flows_gap-1", tmp_path / "raft_fwd_-1")
    bench = Benchmark("segtrackv2", str(tmp_path), sequences="all", flow_dir_name="raft_fwd_{gap}")
    assert bench.read_sequence("s").flow_paths[1][0].endswith("raft_fwd_1/s/00000.flo")


def test_synval_reader(tmp_path):
    amodal = np.zeros((2, ef.H, ef.W, 2), bool)
    amodal[:, 1:5, 1:5, 0] = True
    amodal[:, 3:9, 3:9, 1] = True
    ef.write_synval(str(tmp_path), {"2_000007": amodal})
    record = Benchmark("synval", str(tmp_path)).read_sequence("2_000007")
    np.testing.assert_array_equal(record.amodal, amodal)
    os.remove(tmp_path / "AmodalAnnotations" / "2_000007" / "2_00001.png")
    with pytest.raises(BenchmarkError, match=r"2_00001\.png"):
        Benchmark("synval", str(tmp_path)).read_sequence("2_000007")
