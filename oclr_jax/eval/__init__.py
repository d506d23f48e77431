"""Evaluation: `python -m oclr_jax.eval --dataset NAME --data-dir DIR --checkpoint CKPT`.

Modules (one concern each):
  runner.py     `EvalOptions`, `evaluate`: one benchmark from flow files to a results table.
  inference.py  windows, the jitted predictor, stitching and upsampling of the masks.
  scoring.py    each benchmark's scoring rules (which masks are scored, how they are averaged).
  metrics.py    J, F, bounding-box accuracy and the matching of layers to objects.
  outputs.py    what a run writes: masks, overlays, the per-sequence cache, tables, results.

Importing this package imports nothing heavy; `__main__` holds only the command line.
"""
