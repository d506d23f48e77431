"""`python -m oclr_jax.eval ... --tta dino --dino-checkpoint PATH` on a tiny DAVIS2016 copy."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import eval_fakes as ef  # noqa: E402

from oclr_jax.config.loading import load_config  # noqa: E402
from oclr_jax.data import masks_io  # noqa: E402
from oclr_jax.eval import runner as oclr_eval  # noqa: E402
from oclr_jax.tta.dino_port import save_dino_state_dict  # noqa: E402
from oclr_jax.tta.vit import init_vit_params, vit_from_config  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _dataset(root):
    """A 10-frame DAVIS2016 sequence (48x80, a box moving 2 px per frame) and, as the flow
    model's predictions, the ground truth with frame 6 emptied."""
    labels = np.zeros((10, ef.H, ef.W), np.uint8)
    for t in range(10):
        labels[t, 16:32, 8 + 2 * t:32 + 2 * t] = 1
    ef.write_davis(str(root / "data"), "davis2016", {"bear": labels})
    predictions = labels.copy()
    predictions[6] = 0
    for t, frame_labels in enumerate(predictions):
        masks_io.write_indexed_png(str(root / "pred" / "bear" / f"{t:05d}.png"), frame_labels)
    return labels


def _cli(root, *extra):
    return oclr_eval.main(["--dataset", "davis2016", "--data-dir", str(root / "data"),
                           "--predictions", str(root / "pred"), "--sequences", "bear",
                           "--config", "configs/tiny.py", "--config.eval.window=10",
                           "--config.tta.short_side=48", *extra])


def test_cli_reports_adapted_beside_flow_only(tmp_path, capsys):
    _dataset(tmp_path)
    tta = load_config("configs/tiny.py").tta
    checkpoint = str(tmp_path / "dino.pth")
    save_dino_state_dict(checkpoint, init_vit_params(vit_from_config(tta), seed=0))

    assert _cli(tmp_path, "--out", str(tmp_path / "plain")) == 0
    plain = json.load(open(tmp_path / "plain" / "results.json"))
    capsys.readouterr()
    assert _cli(tmp_path, "--out", str(tmp_path / "tta"), "--tta", "dino",
                "--dino-checkpoint", checkpoint) == 0
    out = capsys.readouterr().out
    assert "flow only: davis2016" in out and "with TTA:  davis2016" in out
    adapted = json.load(open(tmp_path / "tta" / "results.json"))
    assert adapted["summary_flow_only"] == plain["summary"]
    assert adapted["sequences"][0]["flow_only"]["J_mean"] == plain["sequences"][0]["J_mean"]
    assert "TTARefiner(dino" in adapted["options"]["refine"]
    assert np.isfinite(adapted["summary"]["J_mean"])
    # The refined masks are what was scored: a second run resumes from the cached rows.
    assert _cli(tmp_path, "--out", str(tmp_path / "tta"), "--tta", "dino",
                "--dino-checkpoint", checkpoint) == 0
    assert json.load(open(tmp_path / "tta" / "results.json"))["summary"] == adapted["summary"]


def test_cli_tta_errors(tmp_path, capsys):
    _dataset(tmp_path)
    with pytest.raises(SystemExit) as info:
        _cli(tmp_path, "--tta", "dino")
    assert info.value.code == 2
    assert "--dino-checkpoint" in capsys.readouterr().err
    missing = str(tmp_path / "missing.pth")
    assert _cli(tmp_path, "--out", str(tmp_path / "o"), "--tta", "dino",
                "--dino-checkpoint", missing) == 2
    assert "missing.pth: DINO checkpoint not found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o" / "results.json")
