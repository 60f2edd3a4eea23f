"""Runs a Python snippet in a subprocess that sees several fake CPU devices.

XLA reads ``--xla_force_host_platform_device_count`` once, when JAX initialises its backend, so a
test that needs N devices runs its code in a fresh interpreter. Put several checks in one snippet:
each subprocess pays a JAX start-up.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout holding mlx_research/
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def run_with_devices(code: str, num_devices: int = 8, timeout: float | None = None) -> str:
    """Runs ``code`` with ``python -c`` on ``num_devices`` fake CPU devices.

    The snippet runs from the repository root with the repository on ``PYTHONPATH`` (so
    ``import mlx_research`` works); it is dedented first, so it may be written indented.

    Args:
      code: Python source; it should ``print`` whatever the test wants to inspect.
      num_devices: number of CPU devices JAX will see.
      timeout: seconds before the subprocess is killed; None: no limit of its own (in the tests,
        pytest-timeout's per-test limit stops a hung run, and a slow machine is no failure).

    Returns:
      The subprocess's stdout.

    Raises:
      RuntimeError: the subprocess exited non-zero (message holds its stderr and stdout).
      subprocess.TimeoutExpired: it ran longer than ``timeout``.
    """
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").split()
    other_flags = [f for f in flags if not f.startswith(_DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join([*other_flags, f"{_DEVICE_COUNT_FLAG}={num_devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"subprocess with {num_devices} devices exited with {proc.returncode}\n"
            f"--- stderr ---\n{proc.stderr}\n--- stdout ---\n{proc.stdout}")
    return proc.stdout
