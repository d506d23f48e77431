"""oclr-jax: OCLR (Object-Centric Layered Representation) in JAX/Flax.

Importing the package imports neither TensorFlow nor torch; each submodule pulls in only
what it needs.
"""

__version__ = "0.1.0"
