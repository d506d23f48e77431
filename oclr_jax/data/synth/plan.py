"""Split plans: which kind of scene each sequence index gets (paper Table B5).

A split is cut into blocks of consecutive indices.  Each block holds every combination
("cell") of the balanced factors exactly once, in an order shuffled by the block's own
random stream:

  object count (1/2/3, or 1 for Syn-Single) x background (homography image / real video)
  x sprite kind (polygon / silhouette) x motion slot (1 homography : 3 homography+TPS)

so a block has 48 cells (16 for Syn-Single) and the Table B5 sizes (4608 = 96 x 48,
384 = 8 x 48, 256 = 16 x 16) are exactly balanced.  Within a block, stationary objects go to
one third of the homography-background sequences and occluders to one quarter of all
sequences (rounded per block so that the running totals stay on those fractions).

Everything about sequence `index` follows from `(split, seed, index)` alone: its block's
shuffle and its own random stream.  Shards, workers and a larger `num_sequences` therefore
never change a sequence that was already planned.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import zlib

import numpy as np

BACKGROUNDS = ("homography", "video")
SPRITE_KINDS = ("polygon", "silhouette")
# One homography-only slot for three homography+TPS slots (Table B5: homo : homo+tps = 1 : 3).
MOTION_SLOTS = ("homography", "homography+tps", "homography+tps", "homography+tps")
MOTIONS = ("homography", "homography+tps")
STATIONARY_FRACTION = 1.0 / 3.0  # of homography-background sequences (App. B).
OCCLUDER_FRACTION = 0.25  # of all sequences: our choice; the paper gives no ratio.
MAX_STATIONARY_FRAMES = 5


@dataclasses.dataclass(frozen=True)
class SplitComposition:
    """Size and object counts of one split of Table B5."""

    num_sequences: int
    object_counts: tuple[int, ...]


SPLITS = {
    "syn_train": SplitComposition(4608, (1, 2, 3)),
    "syn_single": SplitComposition(256, (1,)),
    "syn_val": SplitComposition(384, (1, 2, 3)),
}


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
    """Everything that determines one synthetic sequence (besides the render options).

    Attributes:
      split, seed, index: the sequence's identity; `scene_seed` derives from them.
      num_objects: moving objects (= amodal layers), 1..3.
      background: 'homography' (a textured image moved by a homography) or 'video'
        (a user video; procedural non-rigid motion when no video folder is given).
      sprite_kind: 'polygon' or 'silhouette' (all objects of the sequence).
      motion: 'homography' or 'homography+tps' (all objects of the sequence).
      occluder: an artificial occluder on the top layer that moves with the background.
      stationary_object: channel of the object that rests relative to the background,
        -1 for none (only with homography backgrounds).
      stationary_length: number of consecutive frame transitions it rests (1..5).
      stationary_start_fraction: where in the sequence the rest starts, in [0, 1).
    """

    split: str
    seed: int
    index: int
    num_objects: int
    background: str
    sprite_kind: str
    motion: str
    occluder: bool
    stationary_object: int = -1
    stationary_length: int = 0
    stationary_start_fraction: float = 0.0

    @property
    def name(self) -> str:
        """Folder name; starts with the object count as the official loader requires."""
        return f"{self.num_objects}_{self.index:05d}"

    @property
    def stationary(self) -> bool:
        return self.stationary_object >= 0

    @property
    def sprite_kinds(self) -> tuple[str, ...]:
        return (self.sprite_kind,) * self.num_objects

    @property
    def motion_types(self) -> tuple[str, ...]:
        return (self.motion,) * self.num_objects

    @property
    def scene_seed(self) -> np.random.SeedSequence:
        """The root of every random choice made while building the scene."""
        return np.random.SeedSequence([self.seed, split_code(self.split), self.index, 1])

    def stationary_transitions(self, num_frames: int) -> tuple[int, ...]:
        """Frames `t` whose forward motion (t -> t+1) of the stationary object is zero
        relative to the background; empty when there is none."""
        if not self.stationary or num_frames < 2:
            return ()
        length = min(self.stationary_length, num_frames - 1)
        start = int(self.stationary_start_fraction * (num_frames - length))
        return tuple(range(start, start + length))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"name": self.name}

    @classmethod
    def from_dict(cls, values: dict) -> "SequenceSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in fields})


def split_code(split: str) -> int:
    """A stable integer per split name (Python's `hash` of a str changes per process)."""
    return zlib.crc32(split.encode("utf-8"))


def _composition(split: str) -> SplitComposition:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[split]


def _cells(object_counts: tuple[int, ...]) -> list[tuple[int, str, str, str]]:
    return list(itertools.product(object_counts, BACKGROUNDS, SPRITE_KINDS, MOTION_SLOTS))


def _quota(block: int, per_block: float) -> int:
    """How many of a block's cells get a feature so the running total is floor(b * f)."""
    return int(np.floor((block + 1) * per_block + 1e-9) - np.floor(block * per_block + 1e-9))


@functools.lru_cache(maxsize=256)
def _block(split: str, seed: int, block: int) -> tuple[tuple[int, str, str, str, bool, bool], ...]:
    """The shuffled cells of one block, each with its stationary and occluder flags."""
    cells = _cells(_composition(split).object_counts)
    rng = np.random.default_rng([seed, split_code(split), block, 0])
    cells = [cells[i] for i in rng.permutation(len(cells))]
    homography_slots = [i for i, cell in enumerate(cells) if cell[1] == "homography"]
    num_stationary = _quota(block, len(homography_slots) * STATIONARY_FRACTION)
    stationary = set(rng.choice(homography_slots, num_stationary, replace=False).tolist())
    num_occluded = _quota(block, len(cells) * OCCLUDER_FRACTION)
    occluded = set(rng.choice(len(cells), num_occluded, replace=False).tolist())
    return tuple(cell + (i in stationary, i in occluded) for i, cell in enumerate(cells))


def spec_for_index(split: str, seed: int, index: int) -> SequenceSpec:
    """The spec of one sequence; a pure function of `(split, seed, index)`."""
    if index < 0:
        raise ValueError(f"sequence index must be >= 0, got {index}")
    block_size = len(_cells(_composition(split).object_counts))
    cell = _block(split, seed, index // block_size)[index % block_size]
    num_objects, background, sprite_kind, motion, stationary, occluder = cell
    spec = SequenceSpec(split=split, seed=seed, index=index, num_objects=num_objects,
                        background=background, sprite_kind=sprite_kind, motion=motion,
                        occluder=occluder)
    if stationary:
        rng = np.random.default_rng([seed, split_code(split), index, 0])
        spec = dataclasses.replace(
            spec,
            stationary_object=int(rng.integers(num_objects)),
            stationary_length=int(rng.integers(1, MAX_STATIONARY_FRAMES + 1)),
            stationary_start_fraction=float(rng.random()))
    return spec


def plan_split(split: str, num_sequences: int | None = None, seed: int = 0) -> list[SequenceSpec]:
    """Specs of sequences `0 .. num_sequences-1` of a split (default: the Table B5 size)."""
    if num_sequences is None:
        num_sequences = _composition(split).num_sequences
    if num_sequences < 0:
        raise ValueError(f"num_sequences must be >= 0, got {num_sequences}")
    _composition(split)
    return [spec_for_index(split, seed, i) for i in range(num_sequences)]


def composition_counts(specs: list[SequenceSpec]) -> dict[str, dict[str, int]]:
    """Counts per factor, as Table B5 reports them (used by `plan` and the tests)."""
    factors = {
        "num_objects": lambda s: str(s.num_objects),
        "background": lambda s: s.background,
        "sprite_kind": lambda s: s.sprite_kind,
        "motion": lambda s: s.motion,
        "stationary": lambda s: f"{s.background}:{s.stationary}",
        "occluder": lambda s: str(s.occluder),
    }
    counts: dict[str, dict[str, int]] = {}
    for factor, key in factors.items():
        values: dict[str, int] = {}
        for spec in specs:
            values[key(spec)] = values.get(key(spec), 0) + 1
        counts[factor] = dict(sorted(values.items()))
    return counts
