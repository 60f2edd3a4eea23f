"""How much of DETR's train step is matching, and the on-device matcher against scipy.

    python -m benchmarks.speed.detr_matching        (or ./launch.sh bench detr_matching)

1. Step share: the jitted train step of experiments/detection/detr_shapes.py (its batch, queries,
   query groups, decoder layers and max_boxes), and of the same with DETR's matching size (100
   queries, 50 target slots, 6 decoder layers; the shapes hold at most 6 objects), with
   ``model.matcher = "device"`` and ``"scipy"``; and the matching alone as the step runs it
   (``models.detection.set_criterion.hungarian_match`` over [layers, batch * groups, queries,
   max_boxes] costs with the batch's ``box_valid``), jitted. Share = matching / step of the
   same matcher.
2. Matcher speed at DETR's reference size: 100 queries x 50 target slots with a random number
   1..50 of valid targets, batches 1, 4, 16, 64, timed as in ``benchmarks.speed.matching_speed``
   (jit(vmap(linear_sum_assignment)); medians over fresh random batches; totals checked
   against scipy).

Writes benchmarks/results/detr_matching.json (one entry per JAX backend) and prints tables.
Times on a shared machine are inflated by other processes; the load average is recorded.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile

import jax
import numpy as np

from benchmarks.common import (cpu_model, load_average, median_seconds, read_result, today,
                               write_result)
from benchmarks.speed.matching_speed import compare_matchers, matcher_table
from experiments.detection.detr_shapes import get_config
from mlx_research.data.pipeline import make_train_iterator
from mlx_research.models.detection.set_criterion import hungarian_match
from mlx_research.train.trainer import Trainer

STEP_REPEATS = 15
MATCH_REPEATS = 30
INPUTS = 10  # random cost batches cycled through
QUERIES, TARGETS = 100, 50
BATCHES = (1, 4, 16, 64)


def step_share(**model) -> dict:
    """Train step and matching-alone times of the detr_shapes config (with `model` fields
    changed, e.g. DETR's 100 queries), for both matchers."""
    config = get_config()
    config.update(write_images=False)
    max_boxes = model.pop("max_boxes", config.data.max_boxes)
    config.model.update(model)
    config.data.max_boxes = max_boxes
    groups = config.model.query_groups
    out = dict(batch_size=config.batch_size, image_size=config.data.image_size,
               queries=config.model.num_queries, query_groups=groups,
               decoder_layers=config.model.num_decoder_layers, max_boxes=config.data.max_boxes)
    for method in ("device", "scipy"):
        config.model.matcher = method
        with tempfile.TemporaryDirectory() as workdir:
            trainer = Trainer(config, workdir)
            batch = next(make_train_iterator(
                trainer.train_source, global_batch_size=config.batch_size, seed=0,
                transform=trainer.task.train_transform))
            batch = jax.device_put(batch, trainer.batch_sharding)
            box_valid = batch["box_valid"]
            holder = [trainer.fresh_state()]

            def step():
                holder[0], metrics = trainer.train_step(holder[0], batch)
                return metrics

            with trainer.mesh_context():
                step_s = median_seconds(lambda: jax.block_until_ready(step()), STEP_REPEATS,
                                        warmup=1)  # the warm-up call compiles
            trainer.close()
        layers, queries = config.model.num_decoder_layers, config.model.num_queries
        box_valid = np.repeat(np.asarray(box_valid), groups, axis=0)  # groups match separately
        rng = np.random.default_rng(0)
        costs = [rng.uniform(size=(layers, len(box_valid), queries, box_valid.shape[1]))
                 .astype(np.float32) for _ in range(INPUTS)]
        match = jax.jit(lambda c, v, m=method: hungarian_match(c, v, m))
        jax.block_until_ready(match(costs[0], box_valid))
        calls = itertools.count()
        match_s = median_seconds(
            lambda: jax.block_until_ready(match(costs[next(calls) % INPUTS], box_valid)),
            MATCH_REPEATS)
        out[method] = dict(step_ms=1e3 * step_s, matching_ms=1e3 * match_s,
                           matching_share=match_s / step_s)
    return out


def matcher_speed() -> list[dict]:
    """Device vs scipy (pure_callback) vs a plain numpy/scipy loop at 100 x 50, masked targets."""
    rng = np.random.default_rng(1)
    rows = []
    for batch in BATCHES:
        costs = rng.uniform(size=(INPUTS, batch, QUERIES, TARGETS)).astype(np.float32)
        valid_rows = np.ones((INPUTS, batch, QUERIES), bool)
        valid_cols = np.arange(TARGETS) < rng.integers(1, TARGETS + 1, (INPUTS, batch, 1))
        row = dict(batch=batch, shape=[batch, QUERIES, TARGETS],
                   **compare_matchers((costs, valid_rows, valid_cols)))
        row["device_over_scipy"] = row["device_ms"] / row["scipy_ms"]
        rows.append(row)
    return rows


def main() -> None:
    # No options; --help prints the summary.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    load = load_average()
    shares = {"detr_shapes": step_share(),
              "detr_shapes, 100 queries x 50 targets, 6 decoder layers": step_share(
                  num_queries=100, query_groups=1, num_decoder_layers=6, max_boxes=50)}
    speed = matcher_speed()
    backend = jax.default_backend()
    result = read_result("detr_matching")
    result[backend] = dict(
        setup=dict(device=str(jax.devices()[0].device_kind),
                   host=cpu_model(), cpu_count=os.cpu_count(),
                   load_average_before=load, load_average_after=load_average(),
                   jax=jax.__version__,
                   timing=f"medians: {STEP_REPEATS} train steps, {MATCH_REPEATS} matchings "
                   f"after the compiling call; matcher speed as benchmarks.speed.matching_speed",
                   date=today()),
        step_share=shares,
        matcher_speed=speed,
    )
    write_result("detr_matching", result)
    print(f"backend: {backend}")
    print("| step | matcher | step (ms) | matching (ms) | share |")
    print("|---|---|---:|---:|---:|")
    for name, share in shares.items():
        for method in ("device", "scipy"):
            s = share[method]
            print(f"| {name} | {method} | {s['step_ms']:.1f} | {s['matching_ms']:.2f} | "
                  f"{100 * s['matching_share']:.2f}% |")
    print(f"\n{QUERIES} queries x {TARGETS} targets (1..{TARGETS} valid)")
    print(matcher_table(speed, "batch"))


if __name__ == "__main__":
    main()
