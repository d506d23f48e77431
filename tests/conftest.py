"""Test set-up that must happen before JAX or TensorFlow initialise."""

import os
import signal

# A shell starts a background job (`pytest ... &`, `nohup`) with SIGINT ignored, and children
# inherit that: Python then never raises KeyboardInterrupt, and the Ctrl-C tests would see
# jobs that cannot be interrupted.  The tests emulate a foreground terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Eight fake CPU devices, so sharding is tested for real on one machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# TensorFlow must never take accelerator memory from JAX.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the whole test session, shared with every
# subprocess a test starts (they inherit os.environ): the CLI tests start the trainer, eval and
# demo dozens of times on the same tiny programs, and a cache hit turns a trainer start's
# compile (~60 % of its time) into a file read.  A fresh folder per session, so nothing is
# carried from an older checkout; removed at exit.  A user's own JAX_COMPILATION_CACHE_DIR wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="oclr-jax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
