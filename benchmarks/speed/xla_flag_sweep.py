"""XLA CPU flags against the defaults in the speed suite: our step time under each flag set, each
measured in its own process (XLA reads its flags once, when the backend starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FLAG_SETS = {"oneDNN custom calls": "--xla_cpu_experimental_onednn_custom_call=true",
             "no YNNPACK fusions": "--xla_cpu_experimental_ynn_fusion_type="}


def xla_flag_sweep(reps: int) -> dict:
    """Our step time under each of `FLAG_SETS` against the default flags, each in its own
    process (``benchmarks.speed.suite --time-ours``), baseline and variant processes
    alternating twice."""
    out = {}
    for case in ("transformer", "resnet50"):
        for label, flags in FLAG_SETS.items():
            print(f"[suite] xla_flags {case}: {label}", flush=True)
            times = defaultdict(list)
            for _ in range(2):
                for variant, extra in (("default", ""), ("variant", flags)):
                    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {extra}")
                    line = subprocess.run(
                        [sys.executable, "-m", "benchmarks.speed.suite", "--time-ours", case,
                         "--reps", str(reps)], env=env, cwd=ROOT, capture_output=True,
                        text=True, check=True).stdout.strip().splitlines()[-1]
                    times[variant].append(json.loads(line)["ours_s"])
            base, new = float(np.median(times["default"])), float(np.median(times["variant"]))
            out[f"{case}: {label}"] = {"flags": flags, "default_s": base, "variant_s": new,
                                       "speedup": base / new}
            print(json.dumps(out[f"{case}: {label}"]), flush=True)
    return out
