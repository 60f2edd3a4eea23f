"""What every benchmark shares: the median timer, the machine description and the result writer.

Results go to ``benchmarks/results/<name>.json``. Times on a shared machine are inflated by other
processes, so results record the load average next to the CPU and the date.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- timing

def timed_rounds(fns: Mapping[str, Callable[[], object]], warmup: int,
                 reps: int) -> dict[str, np.ndarray]:
    """Seconds of each callable in each of ``reps`` rounds that call them in turn.

    Args:
      fns: name -> callable that blocks until its work is done (e.g. on a JAX result).
      warmup: untimed calls of each callable first (compilation, caches).
      reps: timed rounds.

    Returns:
      name -> [reps] float seconds, round by round.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = defaultdict(list)
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: np.array(t) for name, t in times.items()}


def alternate(fns: Mapping[str, Callable[[], object]], warmup: int, reps: int) -> dict[str, float]:
    """Median seconds of each blocking callable over ``reps`` rounds that call them in turn."""
    return {name: float(np.median(t)) for name, t in timed_rounds(fns, warmup, reps).items()}


def median_seconds(fn: Callable[[], object], reps: int, warmup: int = 0) -> float:
    """Median seconds of ``reps`` calls of the blocking callable ``fn`` after ``warmup`` calls."""
    return alternate({"fn": fn}, warmup, reps)["fn"]


# ---------------------------------------------------------------- the machine

def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's processor or architecture."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = names[0] if names else cpu
    return cpu


def load_average() -> list[float]:
    """The host's 1, 5 and 15 minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def today() -> str:
    """The date as YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d")


def describe_machine() -> dict:
    """JAX's backend, device kind and count, the CPU and its cores, the JAX versions, the load
    average and the date."""
    import jax  # not at the top: the parity scripts' torch venv may run without JAX

    return {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "devices": jax.device_count(), "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
            "jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib"),
            "load_average": load_average(), "date": today()}


# ---------------------------------------------------------------- results

def result_path(name: str) -> Path:
    """``benchmarks/results/<name>.json``."""
    return RESULTS / f"{name}.json"


def read_result(name: str) -> dict:
    """The result ``name`` written earlier; empty when there is none."""
    path = result_path(name)
    return json.loads(path.read_text()) if path.exists() else {}


def write_result(name: str, result: dict, echo: bool = False) -> Path:
    """Writes ``result`` to ``benchmarks/results/<name>.json`` (indented, newline-terminated) and,
    with ``echo``, prints the same JSON."""
    text = json.dumps(result, indent=2)
    path = result_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    if echo:
        print(text)
    return path
