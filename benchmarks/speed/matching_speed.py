"""Speed of exact matching: optax's on-device Hungarian vs scipy through jax.pure_callback.

    python -m benchmarks.speed.matching_speed        (or ./launch.sh bench matching_speed)

Both methods run as ``jax.jit(jax.vmap(linear_sum_assignment))`` over a batch of 8 cost
matrices, at DETR-like sizes (100 queries x 20 target slots, all valid or with a random number
1..20 of valid targets) and NADM-like (98 memory entries x 49 grid features), plus a square
100 x 100. Also timed: plain ``scipy.optimize.linear_sum_assignment`` on the 8 matrices in a
NumPy loop (no JAX), the floor of the callback path. Medians over REPEATS calls that cycle
through fresh random batches; each call's matching total is checked against scipy's.

Writes benchmarks/results/matching_speed.json (one entry per JAX backend, so a GPU run adds its
own rows beside the CPU ones) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import jax
import numpy as np
import scipy.optimize

from benchmarks.common import cpu_model, load_average, median_seconds, read_result, write_result
from mlx_research.ops.matching import linear_sum_assignment
BATCH = 8
REPEATS = 100
INPUTS = 10  # distinct random batches cycled through
CASES = (  # name, rows, cols, random number of valid columns
    ("detr 100x20", 100, 20, False),
    ("detr 100x20, 1..20 valid targets", 100, 20, True),
    ("nadm 98x49", 98, 49, False),
    ("square 100x100", 100, 100, False),
)


def _inputs(rng, n, m, masked):
    costs = rng.uniform(size=(INPUTS, BATCH, n, m)).astype(np.float32)
    valid_rows = np.ones((INPUTS, BATCH, n), bool)
    valid_cols = np.ones((INPUTS, BATCH, m), bool)
    if masked:
        counts = rng.integers(1, m + 1, size=(INPUTS, BATCH, 1))
        valid_cols = np.arange(m) < counts
    return costs, valid_rows, valid_cols


def _median_ms(fn, args) -> float:
    """Median ms of REPEATS calls of ``fn``, cycling through the batches of ``args``."""
    batches = list(zip(*args))
    calls = itertools.count()
    return 1e3 * median_seconds(
        lambda: jax.block_until_ready(fn(*batches[next(calls) % len(batches)])), REPEATS)


def _scipy_totals(costs, valid_rows, valid_cols):
    out = []
    for c, r, k in zip(costs, valid_rows, valid_cols):
        sub = c[np.ix_(r, k)].astype(np.float64)
        i, j = scipy.optimize.linear_sum_assignment(sub)
        out.append(sub[i, j].sum())
    return np.array(out)


def _matched_totals(costs, rows, cols):
    rows, cols = np.asarray(rows), np.asarray(cols)
    return np.array([c[r[r >= 0], k[r >= 0]].astype(np.float64).sum()
                     for c, r, k in zip(costs, rows, cols)])


def _batched(method):
    return jax.jit(jax.vmap(lambda c, r, k: linear_sum_assignment(
        c, valid_rows=r, valid_cols=k, method=method)))


def compare_matchers(args) -> dict:
    """The device and the scipy (pure_callback) matcher on the K batches ``args`` =
    (costs [K, B, N, M], valid_rows [K, B, N], valid_cols [K, B, M]): per method the compiling
    first call's seconds, the largest |total - scipy's optimum| and the median ms; and the median
    ms of a plain numpy/scipy loop."""
    row = {}
    for method in ("device", "scipy"):
        fn = _batched(method)
        start = time.perf_counter()
        jax.block_until_ready(fn(*[x[0] for x in args]))
        row[f"{method}_first_call_s"] = time.perf_counter() - start
        err = 0.0
        for batch in zip(*args):  # every method reaches scipy's optimum on every input
            got = _matched_totals(batch[0], *fn(*batch))
            err = max(err, float(np.abs(got - _scipy_totals(*batch)).max()))
        row[f"{method}_max_abs_total_error"] = err
        row[f"{method}_ms"] = _median_ms(fn, args)
    row["numpy_scipy_loop_ms"] = _median_ms(_scipy_totals, args)
    return row


def matcher_table(rows: list[dict], first: str) -> str:
    """Markdown table of `compare_matchers` rows, led by each row's field ``first`` (a case
    name or a batch size)."""
    lead = "---" if isinstance(rows[0][first], str) else "---:"
    lines = [f"| {first} | device (ms) | scipy via pure_callback (ms) | scipy numpy loop (ms) |",
             f"|{lead}|---:|---:|---:|"]
    lines += [f"| {r[first]} | {r['device_ms']:.2f} | {r['scipy_ms']:.2f} | "
              f"{r['numpy_scipy_loop_ms']:.2f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    # No options; --help prints the summary.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    load = load_average()  # other processes on the host inflate the times
    rng = np.random.default_rng(0)
    rows_out = []
    for name, n, m, masked in CASES:
        args = _inputs(rng, n, m, masked)
        rows_out.append(dict(case=name, shape=[BATCH, n, m], **compare_matchers(args)))

    backend = jax.default_backend()
    result = read_result("matching_speed")
    result[backend] = dict(
        setup=dict(
            device=str(jax.devices()[0].device_kind),
            host=cpu_model(),
            cpu_count=os.cpu_count(),
            load_average_before=load,
            jax=jax.__version__,
            batch=BATCH,
            timing=f"median of {REPEATS} jitted vmapped calls after the compiling one, "
            f"{INPUTS} random uniform [0, 1) batches cycled",
        ),
        rows=rows_out,
    )
    write_result("matching_speed", result)
    print(f"backend: {backend} ({jax.devices()[0].device_kind}), batch {BATCH}")
    print(matcher_table(rows_out, "case"))


if __name__ == "__main__":
    main()
