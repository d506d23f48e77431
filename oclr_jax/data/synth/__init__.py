"""The synthetic training data of OCLR (paper Sect. 3 and App. B).

In-memory API:
  specs = plan_split("syn_train", num_sequences=None, seed=0)   # cheap; Table B5 composition
  sequence = render_sequence(specs[7], RenderOptions())         # SyntheticSequence of arrays
  write_sequence(out_dir, sequence)                             # official layout, atomic
  generate("syn_train", out_dir, workers=2, shard=(0, 1))       # a whole split, resumable

Command line: `python -m oclr_jax.data.synth {generate,show,plan} --help`.
See docs/synthetic_data.md.
"""

from oclr_jax.data.synth.generate import GenerateSummary, SequenceGenerationError, generate
from oclr_jax.data.synth.plan import SPLITS, SequenceSpec, composition_counts, plan_split, spec_for_index
from oclr_jax.data.synth.reader import list_sequences, read_sequence
from oclr_jax.data.synth.render import SyntheticSequence, render_scene, render_sequence
from oclr_jax.data.synth.scene import RenderOptions, Scene, build_scene
from oclr_jax.data.synth.writer import is_complete, write_sequence

__all__ = [
    "SPLITS", "SequenceSpec", "composition_counts", "plan_split", "spec_for_index",
    "RenderOptions", "Scene", "build_scene", "SyntheticSequence", "render_scene", "render_sequence",
    "write_sequence", "is_complete", "read_sequence", "list_sequences",
    "generate", "GenerateSummary", "SequenceGenerationError",
]
