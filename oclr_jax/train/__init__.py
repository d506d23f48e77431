"""Training: `python -m oclr_jax.train --config configs/oclr_paper.py --workdir DIR`.

Modules (one concern each):
  trainer.py   `train_and_evaluate`: the loop, resume, preemption saves, Syn-Val, export.
  step.py      the jitted, sharded train and eval steps and the train state.
  state_io.py  orbax checkpoints of the train state in DIR/checkpoints (resume).
  batches.py   where the per-process numpy batches come from (folder, tfds, generator).
  optim.py     the optimizer and the paper's learning-rate schedule.

Importing this package imports nothing heavy; `__main__` holds only the command line.
"""
