"""Test set-up that must happen before JAX or TensorFlow initialise."""

import os

# Eight fake CPU devices, so sharding is tested for real on one machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# TensorFlow must never take accelerator memory from JAX.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
