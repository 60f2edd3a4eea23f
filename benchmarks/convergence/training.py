"""What the convergence benchmarks share: train a config from scratch, time the whole run
(compilation and periodic evaluations included) and describe the machine and its load (other
processes inflate the wall time)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

import jax

from benchmarks.common import cpu_model, load_average, today
from mlx_research.train.metrics import read_metrics
from mlx_research.train.trainer import Trainer


def train(config, eval_key: str, workdir: str | None = None) -> tuple[float, list[dict], dict]:
    """Trains ``config`` from scratch.

    Args:
      config: the experiment's config.
      eval_key: a metric of the evaluations to return, e.g. ``"eval/coco/AP"``.
      workdir: where to train, kept afterwards (its checkpoints evaluated again, say); default a
        temporary directory removed afterwards.

    Returns:
      (wall seconds, the metric records holding ``eval_key`` in step order, the result's machine
      fields: ``machine``, ``cpu_count``, ``load_average_before``, ``load_average_after``,
      ``date``).
    """
    load_before = load_average()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory())
        start = time.perf_counter()
        trainer = Trainer(config, workdir)
        trainer.train()
        trainer.close()
        wall = time.perf_counter() - start
        evals = [r for r in read_metrics(workdir) if eval_key in r]
    machine = {
        "machine": f"{cpu_model()}, {jax.device_count()} device(s)",
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "date": today(),
    }
    return wall, evals, machine
