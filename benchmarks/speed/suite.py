"""The benchmark suite: train-step speed against PyTorch eager, FLOP utilisation, health checks.

    ./launch.sh bench suite [NAME ...]     (default: all; NAMEs below)

Writes benchmarks/results/suite_<backend>.json (cpu, gpu or tpu) and regenerates the README's
performance section (`suite_report`) from every suite_*.json present, so GPU figures join the
CPU ones once a GPU run has been made.

Cases (train steps, `suite_steps`; ours is the trainer's jitted step or, for the ResNets, an
equivalent jitted classification step; ours draws its dropout masks with ``rng_impl="hash32"``;
PyTorch's is `torch_twins`, eager, same shapes, optimizer and loss, measured in this process,
alternating the two after warm-up; the median of ``--reps``):

- ``transformer``: the seq2seq encoder-decoder, d 512, 8 heads, 2 + 2 layers, FFN 2048, dropout
  0.1, batch 16 x 128 tokens, vocabulary 1024, AdamW, clipping 1.0.
- ``resnet18`` / ``resnet50``: classification of a batch of 8 128x128 images into 10 classes,
  SGD with momentum 0.9.
- ``faster_rcnn``: experiments/detection/faster_rcnn_shapes.py's step (batch 8, 128x128).
- ``r2gen``: experiments/report/r2gen_cxr.py's step (batch 16, two 88x88 views, 60 tokens).

Per case (`suite_cases`): step time of both, speed ratio (PyTorch time / ours: > 1 means ours is
faster), FLOPs per step (``compiled.cost_analysis()``), MFU (FLOP/s over the device's measured
matmul peak: the better of a jitted XLA matmul and numpy's BLAS), compile time (persistent cache
off), peak memory (``compiled.memory_analysis()``; the device's own counter on GPU/TPU), and
where the time goes by XLA op category (`op_profile`: a ``jax.profiler`` trace of ours).

Other names: ``pipeline`` (`suite_pipeline`: step time with the real input pipeline against a
cached batch, for the detection and report experiments), ``rng`` (`suite_before_after`: hash32
against threefry dropout masks, the before/after of that optimisation), ``barrier`` (the
gradient barriers of `mlx_research.nn.barrier` kept through XLA CPU's fusion or dropped:
before/after), ``xla_flags`` (`xla_flag_sweep`: XLA CPU options against the defaults, each in
its own process; ``barrier`` and ``xla_flags`` run on CPU only). Without torch the PyTorch
columns are left empty.

On GPU/TPU ours computes in bfloat16 (float32 parameters) and PyTorch under bf16 autocast, and
the Transformer drops its dropout to use cuDNN flash attention (XLA's if cuDNN refuses; the
result records which) against PyTorch's fused attention. ``--rehearse-accelerator [CASE ...]``
runs that path on a CPU, once per case, writing nothing (a check before a GPU is at hand).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os

import jax

from benchmarks.common import alternate, describe_machine, read_result, write_result
from benchmarks.speed.suite_before_after import barrier_before_after, rng_before_after
from benchmarks.speed.suite_cases import matmul_peak, run_case
from benchmarks.speed.suite_pipeline import pipeline
from benchmarks.speed.suite_report import update_readme
from benchmarks.speed.suite_steps import (CASES, accelerator, our_step,
                                          rehearse_accelerator_path)
from benchmarks.speed.xla_flag_sweep import xla_flag_sweep

NAMES = (*CASES, "pipeline", "rng", "barrier", "xla_flags")
CPU_ONLY = ("barrier", "xla_flags")  # XLA CPU options: not run on GPU/TPU


def _machine(xla_flags: str) -> dict:
    """`describe_machine` with the user's XLA flags and, when importable, torch's version and
    threads."""
    info = {**describe_machine(), "xla_flags": xla_flags}
    with contextlib.suppress(ImportError):
        import torch
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def rehearse_accelerator(names) -> None:
    """Runs each case once through the accelerator path on this CPU (bfloat16, the cuDNN attention
    request and its fallback to XLA's, PyTorch autocast), to catch errors before a GPU is at
    hand."""
    peak = matmul_peak(1)["peak_flops"]  # the CPU's float32 peak
    rehearse_accelerator_path()
    for name in names:
        run_case(name, reps=1, peak=peak)
    print(f"[suite] accelerator path ran on the CPU for: {', '.join(names)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*",
                        help=f"what to run (default: all of {', '.join(NAMES)})")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions after warm-up")
    parser.add_argument("--time-ours", choices=CASES, help="only print our step time of a case "
                        "as JSON (used by the xla_flags sweep)")
    parser.add_argument("--rehearse-accelerator", action="store_true", help="on a CPU: run the "
                        "cases (default: all) once through the GPU/TPU path and write nothing")
    args = parser.parse_args()
    if args.rehearse_accelerator:
        if set(args.names) - set(CASES):
            parser.error(f"--rehearse-accelerator runs cases: {', '.join(CASES)}")
        rehearse_accelerator(args.names or CASES)
        return
    if args.time_ours:
        step = our_step(args.time_ours)[0]
        print(json.dumps({"ours_s": alternate({"ours": step}, 2, args.reps)["ours"]}))
        return
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown name(s) {unknown}; known: {', '.join(NAMES)}")
    xla_flags = os.environ.get("XLA_FLAGS", "")
    # Per-op trace events on CPU (for op_categories); read when the backend starts, below.
    os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_cpu_enable_xprof_traceme=true".strip()
    names = args.names or [n for n in NAMES if not (n in CPU_ONLY and accelerator())]
    jax.config.update("jax_enable_compilation_cache", False)  # compile times are cold
    result_name = f"suite_{jax.default_backend()}"
    result = read_result(result_name) or {"cases": {}}
    result["machine"] = _machine(xla_flags)
    result["command"] = "./launch.sh bench suite " + " ".join(args.names)
    result["matmul_peak"] = matmul_peak(args.reps)
    print(json.dumps(result["matmul_peak"]), flush=True)
    for name in names:
        if name in CASES:
            result["cases"][name] = run_case(name, args.reps, result["matmul_peak"]["peak_flops"])
        elif name == "pipeline":
            result["pipeline"] = pipeline(args.reps)
        elif name == "rng":
            result["rng"] = rng_before_after(args.reps)
        elif name == "barrier":
            result["barrier"] = barrier_before_after(args.reps)
        else:
            result["xla_flags"] = xla_flag_sweep(args.reps)
        write_result(result_name, result)  # kept if a later name fails
    update_readme()


if __name__ == "__main__":
    main()
