"""Keeping TensorFlow (tf.data, tfds) off the accelerators, which belong to JAX."""

import tensorflow as tf


def hide_accelerators_from_tf() -> None:
    """Makes GPUs/TPUs invisible to TensorFlow so it never takes accelerator memory from JAX."""
    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            # RuntimeError: devices already initialised (then they stayed hidden if this ran
            # first); ValueError: no such device type in this build.
            pass
