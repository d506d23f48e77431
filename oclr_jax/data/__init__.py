"""Data: flow files, the synthetic generator, benchmark readers and the input pipeline."""
