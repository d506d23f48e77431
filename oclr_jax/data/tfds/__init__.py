"""tensorflow-datasets builders: `synthetic.py` (OclrSynthetic: Syn-Train/Syn-Val, generated
or ingested), `benchmarks.py` (OclrBenchmarks: the real benchmarks with precomputed flows),
built by `python -m oclr_jax.data.build_tfds`."""
