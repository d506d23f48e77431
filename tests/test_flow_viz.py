"""The Middlebury colour wheel, checked against colours derived by hand from its definition.

Wheel: 55 colours; segment red->yellow (15 steps) starts at index 0 with G = floor(255 i/15).
A vector (u, v) picks position (atan2(-v, -u)/pi + 1)/2 * 54 on the wheel, blended linearly
between neighbours; length r (after normalisation) gives 1 - r (1 - colour), floored.
"""

import numpy as np
import pytest

from oclr_jax.data.flow_viz import COLOUR_WHEEL, colour_wheel_legend, flow_to_rgb


def _one(u, v, max_magnitude=None):
    return flow_to_rgb(np.array([[[u, v]]], np.float32), max_magnitude)[0, 0].tolist()


def test_zero_flow_is_white():
    assert flow_to_rgb(np.zeros((3, 4, 2), np.float32)).tolist() == [[[255, 255, 255]] * 4] * 3


def test_cardinal_directions_match_hand_derived_colours():
    # Right: atan2(-0, -1) = -pi -> position 0 -> pure red.
    assert _one(1.0, 0.0) == [255, 0, 0]
    # Down (v > 0 in image coordinates): atan2(-1, 0) = -pi/2 -> position 13.5, halfway
    # between G = floor(255*13/15) = 221 and floor(255*14/15) = 238 -> 229.5 -> 229.
    assert _one(0.0, 1.0) == [255, 229, 0]
    # Left: atan2(0, 1) = 0 -> position 27 = cyan->blue step 2: G = 255 - floor(255*2/11) = 209.
    assert _one(-1.0, 0.0) == [0, 209, 255]
    # Up: atan2(1, 0) = pi/2 -> position 40.5: blue->magenta steps 4 and 5 (R = floor(255*4/13)
    # = 78, floor(255*5/13) = 98) -> 88.
    assert _one(0.0, -1.0) == [88, 0, 255]


def test_length_sets_saturation_and_overflow_darkens():
    # Half the normaliser: halfway to white: floor(255 * (1 - 0.5)) = 127 (up to the 1e-5 eps).
    assert _one(1.0, 0.0, max_magnitude=2.0) == [255, 127, 127]
    # Three times the normaliser: the hue darkened to 75 %: floor(255 * 0.75) = 191.
    assert _one(3.0, 0.0, max_magnitude=1.0) == [191, 0, 0]
    # Default normaliser = the longest vector: the longest one is fully saturated.
    rgb = flow_to_rgb(np.array([[[1.0, 0.0], [4.0, 0.0]]], np.float32))
    assert rgb[0, 1].tolist() == [255, 0, 0]
    assert rgb[0, 0].tolist() == [255, 191, 191]  # 1 - 0.25 = 0.75 -> 191


def test_wheel_is_the_published_one():
    assert COLOUR_WHEEL.shape == (55, 3)
    assert COLOUR_WHEEL[0].tolist() == [255, 0, 0]
    assert COLOUR_WHEEL[15].tolist() == [255, 255, 0]  # yellow starts the second segment
    assert COLOUR_WHEEL[21].tolist() == [0, 255, 0]  # green
    assert COLOUR_WHEEL[25].tolist() == [0, 255, 255]  # cyan
    assert COLOUR_WHEEL[36].tolist() == [0, 0, 255]  # blue
    assert COLOUR_WHEEL[49].tolist() == [255, 0, 255]  # magenta


def test_non_finite_vectors_are_black_and_ignored_by_the_normaliser():
    flow = np.array([[[np.nan, 0.0], [2.0, 0.0], [np.inf, 1.0]]], np.float32)
    rgb = flow_to_rgb(flow)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 2].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == [255, 0, 0]


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        flow_to_rgb(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="positive"):
        flow_to_rgb(np.zeros((4, 4, 2)), max_magnitude=0.0)


def test_legend_is_a_disk_on_white():
    legend = colour_wheel_legend(33)
    assert legend.shape == (33, 33, 3) and legend.dtype == np.uint8
    assert legend[16, 16].tolist() == [255, 255, 255]  # centre: zero flow
    assert legend[0, 0].tolist() == [255, 255, 255]  # outside the disk
    assert legend[16, 32].tolist() == [255, 0, 0]  # rightmost: unit vector to the right
