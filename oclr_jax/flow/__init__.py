"""Optical flow for OCLR: RAFT in Flax (`raft`), its weights port (`convert`, `weights`), and
`python -m oclr_jax.flow`, which writes `.flo` files in the layout of the official scripts."""
