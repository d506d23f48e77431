"""tta/keyframe.py on constructed disagreement patterns."""

import numpy as np
import pytest

from oclr_jax.tta.keyframe import consistent_frames, longest_run, select_keyframe


def _official_style_middle_of_longest_run(errors):
    """Independent version of the official rule via run boundaries of the padded 0/1 sequence."""
    flags = (errors < errors.mean()).astype(int)
    padded = np.concatenate([[0], flags, [0]])
    changes = np.flatnonzero(np.diff(padded))
    starts, ends = changes[0::2], changes[1::2] - 1  # inclusive, in error-list indices
    best = int(np.argmax(ends - starts + 1))  # first longest
    return int(1 + (starts[best] + ends[best]) / 2)


def test_lowest_rule_picks_the_smallest_error():
    errors = np.array([0.5, 0.1, 0.3, 0.05, 0.9])  # errors of frames 1..5
    assert select_keyframe(errors, "lowest") == 4


def test_longest_run_rule_picks_the_middle_of_the_longest_consistent_run():
    errors = np.array([0.1, 0.9, 0.2, 0.1, 0.15, 0.3, 0.9, 0.05])
    # mean 0.3375: consistent runs [0], [2..5], [7]; middle of 2..5 is index 3 -> frame 4.
    assert consistent_frames(errors).tolist() == [True, False, True, True, True, True, False,
                                                  True]
    assert select_keyframe(errors, "longest_run") == 4
    # The lowest error (index 7) lies in a short run: the rules disagree here.
    assert select_keyframe(errors, "lowest") == 8


@pytest.mark.parametrize("seed", range(6))
def test_longest_run_rule_agrees_with_an_independent_implementation(seed):
    rng = np.random.default_rng(seed)
    errors = rng.gamma(1.0, size=int(rng.integers(2, 40)))
    if (errors < errors.mean()).any():
        assert select_keyframe(errors, "longest_run") == \
            _official_style_middle_of_longest_run(errors)


def test_ties_take_the_first_longest_run():
    assert longest_run(np.array([1, 1, 0, 1, 1, 0, 1], bool)) == (0, 1)
    assert longest_run(np.array([0, 0, 1], bool)) == (2, 2)
    errors = np.array([0.1, 0.1, 0.9, 0.1, 0.1])
    assert select_keyframe(errors, "longest_run") == 1  # run (0, 1) -> 1 + 0


def test_equal_errors_make_every_frame_consistent():
    errors = np.full(6, 0.25)
    assert consistent_frames(errors).all()
    assert select_keyframe(errors, "lowest") == 1
    assert select_keyframe(errors, "longest_run") == 1 + (0 + 5) // 2


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="finite"):
        select_keyframe(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="non-empty"):
        select_keyframe(np.zeros((0,)))
    with pytest.raises(ValueError, match="unknown key-frame rule"):
        select_keyframe(np.array([0.1, 0.2]), "middle")
