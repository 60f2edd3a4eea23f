"""The input pipeline's cost in the speed suite: train steps fed by the real pipeline against the
same cached batch, for the detection and report experiments."""

from __future__ import annotations

import json
import time

import numpy as np

from benchmarks.common import timed_rounds
from benchmarks.speed.suite_steps import suite_configs, trainer_step
from mlx_research.data.pipeline import to_global_batch

PIPELINE_CHUNK = 5  # steps timed together: more than the 2 batches the iterator prefetches


def pipeline(reps: int) -> dict:
    """Steps with the real input pipeline (next batch prepared while the step runs, as the
    trainer's loop) against the same cached batch, for the detection and report experiments.
    The slowdown is the median over 3 * ``reps`` rounds of each round's real / cached time (a
    shared machine's drift moves both sides of a round alike). Also the host's CPU time per
    batch (all threads, with no step running): what the pipeline takes from the step's cores."""
    out = {}
    for name in ("faster_rcnn", "r2gen"):
        print(f"[suite] pipeline {name}", flush=True)
        step, trainer, _ = trainer_step(suite_configs()[name])
        sharding = trainer.batch_sharding
        start = time.process_time()
        for _ in range(4 * PIPELINE_CHUNK):
            next(step.iterator)
        host_s = (time.process_time() - start) / (4 * PIPELINE_CHUNK)

        def real():
            for _ in range(PIPELINE_CHUNK):
                step(to_global_batch(next(step.iterator), sharding))

        def cached():
            for _ in range(PIPELINE_CHUNK):
                step()

        times = timed_rounds({"real": real, "cached": cached}, warmup=1, reps=3 * reps)
        out[name] = {"real_s": float(np.median(times["real"])) / PIPELINE_CHUNK,
                     "cached_s": float(np.median(times["cached"])) / PIPELINE_CHUNK,
                     "slowdown": float(np.median(times["real"] / times["cached"])) - 1.0,
                     "host_cpu_s_per_batch": host_s}
        trainer.close()
        print(json.dumps(out[name]), flush=True)
    return out
