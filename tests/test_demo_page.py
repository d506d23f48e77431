"""The demo page as a user sees it: the video plays in a real browser (headless Chromium), the
tile labels are legible, tiles follow the input size, the flow has a colour key, and layers are
numbered 1..K in summary.json as on the page and in the file names.

Fast: the report is written from a made-up clip and prediction (no model).
"""

import json
import os
import shutil
import subprocess
import types

import numpy as np
import pytest

try:  # the report moves into the demo package (issue 16)
    from oclr_jax.demo import report
except ImportError:
    from oclr_jax import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which(
    "google-chrome")


def fake_report(out, height=48, width=64, frames=6, layers=2, with_gt=True):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8)
    amodal = np.zeros((frames, height, width, layers), bool)
    for k in range(layers):
        amodal[:, 5 + 8 * k:25 + 8 * k, 5 + 10 * k:30 + 10 * k, k] = True
    modal = amodal.copy()
    modal[..., 0] &= ~amodal[..., 1]
    flow = rng.normal(size=(frames, height // 2, width // 2, 4)).astype(np.float32)
    clip = types.SimpleNamespace(rgb=rgb, flow=flow, name="made-up clip", fps=8.0,
                                 gt_amodal=amodal[..., :1] if with_gt else None,
                                 gt_modal=modal[..., :1] if with_gt else None)
    prediction = types.SimpleNamespace(
        amodal=amodal, modal=modal, front_to_back=np.tile([1, 0], (frames, 1)),
        order_logits=np.tile([0.1, 0.9], (frames, 1)).astype(np.float32))
    scores = ({"objects": [{"object": 1, "layer": 0, "modal_J": 0.5, "amodal_J": 0.4}],
               "modal_J": 0.5, "amodal_J": 0.4} if with_gt else None)
    return report.write_report(str(out), clip, prediction, scores, checkpoint="made-up")


def test_summary_numbers_layers_from_one_like_the_page_and_files(tmp_path):
    summary = fake_report(tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["front_to_back_first_window"] == [2, 1] == summary["front_to_back_first_window"]
    assert on_disk["scores"]["objects"][0]["layer"] == 1  # 0-based layer 0 -> layer 1
    assert sorted(os.listdir(tmp_path / "out" / "amodal"))[:2] == ["1_00000.png", "1_00001.png"]
    page = (tmp_path / "out" / "index.html").read_text()
    assert "front to back: layer 2, layer 1" in page
    assert "<tr><td>1</td><td>1</td>" in page


def test_labels_outline_hugs_the_text():
    """The black outline must follow the white glyphs: a thicker outline stroke advances each
    glyph further, so its box runs far past the white text (the garbled labels)."""
    tile = np.full((60, 256, 3), 128, np.uint8)
    out = report.label(tile, "ground truth, mean J 0.99")
    white = np.argwhere(out.min(axis=-1) > 220)
    dark = np.argwhere(out.max(axis=-1) < 40)
    assert len(white) and len(dark)
    slack = 3
    assert dark[:, 1].max() <= white[:, 1].max() + slack
    assert dark[:, 1].min() >= white[:, 1].min() - slack


@pytest.mark.parametrize("size,tile", [((720, 1280), (360, 640)), ((128, 224), (146, 256)),
                                       ((480, 640), (480, 640))])
def test_tiles_follow_the_input_size(size, tile):
    assert report.tile_size(*size) == tile
    height, width = size
    rgb = np.zeros((height, width, 3), np.uint8)
    masks = np.zeros((height, width, 3), bool)
    frame = report.panel(rgb, rgb, masks, masks, np.arange(3))
    assert frame.shape == (tile[0], tile[1] * 5, 3)


def test_flow_tile_has_a_colour_key():
    tile = np.full((146, 256, 3), 255, np.uint8)  # zero flow is white
    keyed = report.with_flow_key(tile, 2.5)
    corner = keyed[-60:, -60:]
    saturation = corner.max(axis=-1).astype(int) - corner.min(axis=-1)
    assert (saturation > 150).sum() > 100  # the wheel's saturated rim
    assert (keyed[:40] == 255).all()  # the rest of the tile untouched


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine "
                    "(apt-get install chromium) to play the video in a real browser")
def test_video_plays_in_headless_chromium(tmp_path):
    out = tmp_path / "out"
    fake_report(out)
    page = (out / "index.html").read_text()
    assert 'id="demo"' in page
    probe = """<pre id="probe">pending</pre><script>
const v = document.getElementById('demo'), p = document.getElementById('probe');
const report = tag => p.textContent = JSON.stringify({tag, error: v.error && v.error.code,
  readyState: v.readyState, width: v.videoWidth, height: v.videoHeight});
v.addEventListener('loadeddata', () => report('loadeddata'));
v.addEventListener('error', () => report('error'));
if (v.readyState >= 2) report('loadeddata');
</script></body>"""
    (out / "probe.html").write_text(page.replace("</body>", probe))
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", (out / "probe.html").as_uri()], capture_output=True, text=True, timeout=120)
    dom = result.stdout
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    state = json.loads(dom[start:dom.index("</pre>", start)])
    assert state["error"] is None, state
    assert state["readyState"] >= 2, state
    panel_width = report.tile_size(48, 64)[1] * 4
    assert (state["width"], state["tag"]) == (panel_width, "loadeddata"), state
