"""Where a step's time goes: the share of traced device time per XLA op category, from a
``jax.profiler`` trace (on CPU the per-op events need ``--xla_cpu_enable_xprof_traceme=true``
in XLA_FLAGS before the backend starts)."""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable

import jax

_CATEGORIES = (  # (substring of the op name, category), first match wins
    ("ynn_fusion", "matmul/conv"), ("dot", "matmul/conv"), ("conv", "matmul/conv"),
    ("rng", "rng"), ("threefry", "rng"), ("scatter", "gather/scatter"),
    ("gather", "gather/scatter"), ("dynamic", "gather/scatter"), ("sort", "sort"),
    ("custom-call", "custom call"), ("callback", "custom call"), ("reduce", "reduce"),
    ("copy", "copy/transpose"), ("transpose", "copy/transpose"))
_CONTAINERS = ("while", "call", "conditional")  # their bodies' ops have their own events


def op_categories(step: Callable[[], None], steps: int = 3) -> dict[str, float]:
    """Share of the traced device time per XLA op category over a few calls of the blocking
    ``step``, largest first (empty without a trace)."""
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            for _ in range(steps):
                step()
        files = glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"), recursive=True)
        if not files:
            return {}
        events = json.loads(gzip.open(files[0]).read()).get("traceEvents", [])
    totals = defaultdict(float)
    for event in events:
        category = _op_category(event.get("name", ""))
        if event.get("ph") == "X" and category:
            totals[category] += float(event.get("dur", 0.0))
    total = sum(totals.values())
    return {k: round(v / total, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])
            } if total else {}


def _op_category(name: str) -> str | None:
    """The category of an XLA op's trace event (``ynn_fusion.3``, ``reduce_add_fusion``, ...);
    None for other events (runtime, Python) and for control flow containers."""
    if not re.fullmatch(r"[a-z][a-z0-9_\-]*(\.\d+)?", name):
        return None
    base = name.split(".")[0]
    if base in _CONTAINERS:
        return None
    return next((cat for key, cat in _CATEGORIES if key in base), "elementwise")
