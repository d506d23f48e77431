"""Split plans: Table B5 composition (counted, nothing rendered) and purity per index."""

import collections
import itertools

import pytest

from oclr_jax.data.synth import SPLITS, plan_split, spec_for_index


def _count(specs, *fields):
    return collections.Counter(tuple(getattr(s, f) for f in fields) for s in specs)


def test_syn_train_matches_table_b5():
    specs = plan_split("syn_train")
    assert len(specs) == 4608
    # 1/2/3 objects equal, homography/real backgrounds equal, polygons/silhouettes equal.
    assert _count(specs, "num_objects") == {(1,): 1536, (2,): 1536, (3,): 1536}
    assert _count(specs, "background") == {("homography",): 2304, ("video",): 2304}
    assert _count(specs, "sprite_kind") == {("polygon",): 2304, ("silhouette",): 2304}
    # homography : homography+tps = 1 : 3.
    assert _count(specs, "motion") == {("homography",): 1152, ("homography+tps",): 3456}
    # The factors are crossed evenly, not just balanced one at a time.
    crossed = _count(specs, "num_objects", "background", "sprite_kind", "motion")
    assert len(crossed) == 3 * 2 * 2 * 2
    for (_, _, _, motion), count in crossed.items():
        assert count == (96 if motion == "homography" else 288)


def test_stationary_objects_and_occluders():
    specs = plan_split("syn_train")
    stationary = [s for s in specs if s.stationary]
    assert all(s.background == "homography" for s in stationary)  # homography backgrounds only
    assert len(stationary) == 2304 // 3  # one third of them
    assert all(1 <= s.stationary_length <= 5 and 0 <= s.stationary_object < s.num_objects
               for s in stationary)
    assert {s.stationary_length for s in stationary} == {1, 2, 3, 4, 5}
    assert sum(s.occluder for s in specs) == 4608 // 4


@pytest.mark.parametrize("split, count, objects", [("syn_val", 384, {1, 2, 3}), ("syn_single", 256, {1})])
def test_other_splits(split, count, objects):
    specs = plan_split(split)
    assert len(specs) == count == SPLITS[split].num_sequences
    assert {s.num_objects for s in specs} == objects
    assert _count(specs, "background")[("homography",)] == count // 2
    assert _count(specs, "sprite_kind")[("polygon",)] == count // 2
    assert _count(specs, "motion")[("homography",)] == count // 4


def test_a_sequence_is_a_pure_function_of_split_seed_index():
    long_plan = plan_split("syn_train", 200, seed=3)
    assert plan_split("syn_train", 57, seed=3) == long_plan[:57]
    assert [spec_for_index("syn_train", 3, i) for i in (199, 5, 120)] == [long_plan[i] for i in (199, 5, 120)]
    # A different seed or split gives a different plan.
    assert plan_split("syn_train", 200, seed=4) != long_plan
    assert [s.scene_seed.entropy for s in plan_split("syn_val", 5, 3)] != \
        [s.scene_seed.entropy for s in long_plan[:5]]
    # Shards partition the indices.
    shards = [[s.index for s in long_plan if s.index % 3 == k] for k in range(3)]
    assert sorted(itertools.chain(*shards)) == list(range(200))


def test_names_start_with_the_object_count_and_are_unique():
    specs = plan_split("syn_train")
    assert all(s.name[0] == str(s.num_objects) for s in specs)
    assert len({s.name for s in specs}) == len(specs)


def test_stationary_transitions_fit_the_sequence():
    spec = next(s for s in plan_split("syn_train", 300) if s.stationary)
    for frames in (2, 4, 30):
        transitions = spec.stationary_transitions(frames)
        assert 1 <= len(transitions) <= min(spec.stationary_length, frames - 1)
        assert transitions == tuple(range(transitions[0], transitions[0] + len(transitions)))
        assert 0 <= transitions[0] and transitions[-1] <= frames - 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown split 'syn_test'"):
        plan_split("syn_test")
    with pytest.raises(ValueError, match=">= 0"):
        plan_split("syn_val", -1)
