"""Test-session settings, applied before JAX initialises (subprocesses inherit them).

- XLA's CPU backend optimisation level 0: tiny test programs compile ~3x faster.
- A persistent compilation cache shared by this session's processes, so the subprocess runs of
  the trainer tests (same config, several processes) compile each program once.
- The `slow` marker: ``./launch.sh test --fast`` leaves those tests out (the unit tier).
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mlx_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_configure(config):
    """Registers the `slow` marker."""
    config.addinivalue_line(
        "markers",
        "slow: runs through the trainer or the entry point, subprocesses with fake devices, and "
        "unit tests that compile for seconds (./launch.sh test --fast runs -m 'not slow')")
