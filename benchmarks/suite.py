"""The benchmark suite: train-step speed against PyTorch eager, FLOP utilisation, health checks.

    ./launch.sh bench suite [NAME ...]     (default: all; NAMEs below)

Writes benchmarks/results/suite_<backend>.json (cpu, gpu or tpu) and regenerates the README's
performance section (between ``<!-- suite:begin -->`` and ``<!-- suite:end -->``) from every
suite_*.json present, so GPU figures join the CPU ones once a GPU run has been made.

Cases (train steps; ours is the trainer's jitted step or, for the ResNets, an equivalent jitted
classification step; ours draws its dropout masks with ``rng_impl="hash32"``; PyTorch's is
`benchmarks/torch_twins.py`, eager, same shapes, optimizer and loss, measured in this process,
alternating the two after warm-up; the median of ``--reps``):

- ``transformer``: the seq2seq encoder-decoder, d 512, 8 heads, 2 + 2 layers, FFN 2048, dropout
  0.1, batch 16 x 128 tokens, vocabulary 1024, AdamW, clipping 1.0.
- ``resnet18`` / ``resnet50``: classification of a batch of 8 128x128 images into 10 classes,
  SGD with momentum 0.9.
- ``faster_rcnn``: experiments/detection/faster_rcnn_shapes.py's step (batch 8, 128x128).
- ``r2gen``: experiments/report/r2gen_cxr.py's step (batch 16, two 88x88 views, 60 tokens).

Per case: step time of both, speed ratio (PyTorch time / ours: > 1 means ours is faster), FLOPs
per step (``compiled.cost_analysis()``), MFU (FLOP/s over the device's measured matmul peak:
the better of a jitted XLA matmul and numpy's BLAS), compile time (persistent cache off), peak
memory (``compiled.memory_analysis()``; the device's own counter on GPU/TPU), and where the time
goes by XLA op category (a ``jax.profiler`` trace of ours).

Other names: ``pipeline`` (step time with the real input pipeline against a cached batch, for
the detection and report experiments), ``rng`` (hash32 against threefry dropout masks: the
before/after of that optimisation), ``barrier`` (the gradient barriers of
`mlx_research.nn.barrier` kept through XLA CPU's fusion or dropped: before/after), ``xla_flags``
(XLA CPU options against the defaults, each in its own process; ``barrier`` and ``xla_flags``
run on CPU only). Without torch the PyTorch columns are left empty.

On GPU/TPU ours computes in bfloat16 (float32 parameters) and PyTorch under bf16 autocast, and
the Transformer drops its dropout to use cuDNN flash attention (XLA's if cuDNN refuses; the
result records which) against PyTorch's fused attention. ``--rehearse-accelerator [CASE ...]``
runs that path on a CPU, once per case, writing nothing (a check before a GPU is at hand).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import gzip
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlx_research.data.pipeline import to_global_batch
from mlx_research.nn.resnet import resnet18, resnet50
from mlx_research.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
CASES = ("transformer", "resnet18", "resnet50", "faster_rcnn", "r2gen")
NAMES = (*CASES, "pipeline", "rng", "barrier", "xla_flags")
CPU_ONLY = ("barrier", "xla_flags")  # XLA CPU options: not run on GPU/TPU
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"


# ---------------------------------------------------------------- machine and timing

_REHEARSAL = False  # --rehearse-accelerator: the GPU/TPU path on a CPU


def accelerator() -> bool:
    """Whether to take the GPU/TPU path (bfloat16, cuDNN attention, PyTorch on CUDA, autocast)."""
    return _REHEARSAL or jax.default_backend() != "cpu"


def describe_machine(xla_flags: str) -> dict:
    """CPU model and cores or the accelerator kind, versions and the user's XLA flags."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = names[0] if names else cpu
    info = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "devices": jax.device_count(), "cpu": cpu, "cpu_cores": os.cpu_count(),
            "jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib"),
            "xla_flags": xla_flags,
            "load_average": [round(x, 2) for x in os.getloadavg()], "date": time.strftime("%Y-%m-%d")}
    with contextlib.suppress(ImportError):
        import torch
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def rounds(fns: dict, warmup: int, reps: int) -> dict[str, np.ndarray]:
    """Seconds of each blocking callable in each of ``reps`` rounds that call them in turn."""
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


def alternate(fns: dict, warmup: int, reps: int) -> dict[str, float]:
    """Median seconds of each blocking callable over ``reps`` rounds that call them in turn."""
    return {name: float(np.median(t)) for name, t in rounds(fns, warmup, reps).items()}


def matmul_peak(reps: int) -> dict:
    """FLOP/s of a square matmul: jitted XLA and, on CPU, numpy's BLAS (float32; bf16 on
    accelerators, where the host's BLAS is not the device's peak)."""
    n = 8192 if accelerator() else 2048
    dtype = jnp.bfloat16 if accelerator() else jnp.float32
    a, b = (jax.random.normal(jax.random.key(i), (n, n), dtype) for i in range(2))
    matmul = jax.jit(jnp.matmul)
    fns = {"xla": lambda: matmul(a, b).block_until_ready()}
    if not accelerator():
        an, bn = np.asarray(a), np.asarray(b)
        fns["numpy"] = lambda: an @ bn
    rates = {name: 2 * n**3 / t for name, t in alternate(fns, warmup=2, reps=reps).items()}
    return {"n": n, "dtype": jnp.dtype(dtype).name, "xla_flops": rates["xla"],
            "numpy_flops": rates.get("numpy"), "peak_flops": max(rates.values())}


# ---------------------------------------------------------------- our steps

class CompiledStep:
    """A jitted step function compiled for fixed arguments: compile time, FLOPs, memory; calling
    it runs one step on the held state (donated and replaced) and blocks."""

    def __init__(self, jitted, state, *args, context=contextlib.nullcontext,
                 compiler_options=None):
        self.context, self.state, self.args = context, state, args
        with self.context():
            lowered = jitted.lower(state, *args)
            start = time.perf_counter()
            self.compiled = lowered.compile(compiler_options)
            self.compile_s = time.perf_counter() - start
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        self.flops = float(cost.get("flops", 0.0)) if cost else 0.0
        memory = self.compiled.memory_analysis()
        self.memory_bytes = None if memory is None else int(
            memory.argument_size_in_bytes + memory.output_size_in_bytes
            + memory.temp_size_in_bytes - memory.alias_size_in_bytes)

    def __call__(self, *args):
        with self.context():
            self.state, out = self.compiled(self.state, *(args or self.args))
        jax.block_until_ready(out)


def trainer_step(config) -> tuple[CompiledStep, Trainer, dict]:
    """The trainer's train step of ``config`` on one batch of its real input pipeline."""
    trainer = Trainer(config, tempfile.mkdtemp(prefix="suite_"))
    iterator = trainer.train_iterator()
    local = next(iterator)
    batch = to_global_batch(local, trainer.batch_sharding)
    step = CompiledStep(trainer.train_step, trainer.fresh_state(), batch,
                        context=trainer.mesh_context)
    step.iterator = iterator
    return step, trainer, local


class Classifier(nn.Module):
    """ResNet backbone, global average pool, Dense (torchvision's classification ResNet)."""

    arch: str
    num_classes: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        backbone = {"resnet18": resnet18, "resnet50": resnet50}[self.arch](dtype=self.dtype)
        features = backbone(x, train)["C5"].mean(axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(features).astype(jnp.float32)


def classification_step(arch, images, labels, num_classes, lr, momentum, dtype) -> CompiledStep:
    model = Classifier(arch, num_classes, dtype)
    variables = model.init(jax.random.key(0), images[:1], train=False)
    tx = optax.sgd(lr, momentum=momentum)

    def step(state, x, y):
        params, stats, opt = state

        def loss_fn(p):
            logits, new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), new["batch_stats"], opt), loss

    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    return CompiledStep(jax.jit(step, donate_argnums=0), state, jnp.asarray(images),
                        jnp.asarray(labels))


# ---------------------------------------------------------------- cases

def _configs():
    from experiments.detection.faster_rcnn_shapes import get_config as faster_rcnn
    from experiments.report.r2gen_cxr import get_config as r2gen
    from experiments.seq2seq.reverse import get_config as seq2seq

    transformer = seq2seq()
    transformer.model.update(d_model=512, nhead=8, num_encoder_layers=2, num_decoder_layers=2,
                             dim_feedforward=2048, dropout=0.1)
    transformer.data.update(vocab_size=1024, min_len=127, max_len=127)  # + EOS = 128 tokens
    transformer.batch_size = 16
    if accelerator():  # cuDNN flash attention (it has no weight dropout)
        transformer.model.update(dropout=0.0, attention_implementation="cudnn")
    configs = {"transformer": transformer, "faster_rcnn": faster_rcnn(), "r2gen": r2gen()}
    for config in configs.values():
        config.rng_impl = "hash32"
        config.checkpoint.async_save = False
        if accelerator():
            config.compute_dtype = "bfloat16"
    return configs


def _torch_device():
    import torch

    return torch.device("cuda" if accelerator() and torch.cuda.is_available() else "cpu")


def _torch_twin(name: str, trainer: Trainer | None, local: dict, extra: dict):
    """(step, parameter count) of the PyTorch twin, or None without torch."""
    try:
        from benchmarks import torch_twins
    except ImportError:
        return None
    device, bf16 = _torch_device(), accelerator()
    if name == "transformer":
        from mlx_research.data.seq2seq import BOS_ID

        c = trainer.config
        return torch_twins.transformer_step(local, c.model, c.optim, BOS_ID, c.data.vocab_size,
                                            device, bf16)
    if name.startswith("resnet"):
        return torch_twins.resnet_step(name, extra["images"], extra["labels"], 10, 0.1, 0.9,
                                       device, bf16)
    if name == "faster_rcnn":
        return torch_twins.faster_rcnn_step(local, trainer.config, trainer.task.num_classes,
                                            device, bf16)
    from mlx_research.data.tokenizer import BOS_ID

    task = trainer.task
    return torch_twins.r2gen_step(local, trainer.config, task.output_size(), task.max_len, BOS_ID,
                                  device, bf16)


def op_categories(step: CompiledStep, steps: int = 3) -> dict[str, float]:
    """Share of the traced device time per XLA op category over a few steps of ``step``."""
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


_CATEGORIES = (  # (substring of the op name, category), first match wins
    ("ynn_fusion", "matmul/conv"), ("dot", "matmul/conv"), ("conv", "matmul/conv"),
    ("rng", "rng"), ("threefry", "rng"), ("scatter", "gather/scatter"),
    ("gather", "gather/scatter"), ("dynamic", "gather/scatter"), ("sort", "sort"),
    ("custom-call", "custom call"), ("callback", "custom call"), ("reduce", "reduce"),
    ("copy", "copy/transpose"), ("transpose", "copy/transpose"))
_CONTAINERS = ("while", "call", "conditional")  # their bodies' ops have their own events


def _op_category(name: str) -> str | None:
    """The category of an XLA op's trace event (``ynn_fusion.3``, ``reduce_add_fusion``, ...);
    None for other events (runtime, Python) and for control flow containers."""
    if not re.fullmatch(r"[a-z][a-z0-9_\-]*(\.\d+)?", name):
        return None
    base = name.split(".")[0]
    if base in _CONTAINERS:
        return None
    return next((cat for key, cat in _CATEGORIES if key in base), "elementwise")


def our_step(name: str) -> tuple[CompiledStep, Trainer | None, dict, dict]:
    """Our step of case ``name``, its trainer (None for the ResNets), the numpy batch, and the
    ResNets' inputs."""
    if name.startswith("resnet"):
        rng = np.random.default_rng(0)
        extra = {"images": rng.normal(size=(8, 128, 128, 3)).astype(np.float32),
                 "labels": rng.integers(0, 10, size=8)}
        step = classification_step(name, extra["images"], extra["labels"], 10, 0.1, 0.9,
                                   jnp.bfloat16 if accelerator() else jnp.float32)
        return step, None, {}, extra
    config = _configs()[name]
    try:
        return (*trainer_step(config), {})
    except Exception as e:  # pylint: disable=broad-except
        if config.model.get("attention_implementation") != "cudnn":
            raise
        print(f"[suite] cuDNN attention failed ({str(e).splitlines()[0][:200]}); using XLA's")
        config.model.attention_implementation = "xla"
        return (*trainer_step(config), {})


def run_case(name: str, reps: int, peak: float) -> dict:
    print(f"[suite] {name}", flush=True)
    ours, trainer, local, extra = our_step(name)
    params = ours.state[0] if trainer is None else ours.state.params
    twin = _torch_twin(name, trainer, local, extra)
    fns = {"ours": ours} if twin is None else {"ours": ours, "torch": twin[0]}
    times = alternate(fns, warmup=2, reps=reps)
    result = {
        "ours_s": times["ours"], "torch_s": times.get("torch"),
        "speed_ratio": times["torch"] / times["ours"] if twin else None,
        "params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "torch_params": twin[1] if twin else None,
        "flops": ours.flops, "mfu": ours.flops / times["ours"] / peak if ours.flops else None,
        "compile_s": ours.compile_s, "memory_bytes": _peak_memory(ours),
        "op_time_shares": op_categories(ours),
    }
    if trainer is not None:
        if "attention_implementation" in trainer.config.model:
            result["attention"] = trainer.config.model.attention_implementation
        trainer.close()
    print(json.dumps(result), flush=True)
    return result


def _peak_memory(step: CompiledStep) -> int | None:
    stats = jax.devices()[0].memory_stats() if accelerator() else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else \
        step.memory_bytes


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
        step, trainer, _ = trainer_step(_configs()[name])
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

        times = rounds({"real": real, "cached": cached}, warmup=1, reps=3 * reps)
        out[name] = {"real_s": float(np.median(times["real"])) / PIPELINE_CHUNK,
                     "cached_s": float(np.median(times["cached"])) / PIPELINE_CHUNK,
                     "slowdown": float(np.median(times["real"] / times["cached"])) - 1.0,
                     "host_cpu_s_per_batch": host_s}
        trainer.close()
        print(json.dumps(out[name]), flush=True)
    return out


def before_after(label: str, build, reps: int) -> dict:
    """An optimisation's before/after on the transformer and r2gen train steps: ``build(name)``
    gives ``({before_name: step, after_name: step}, trainers)``; the steps alternate."""
    out = {}
    for name in ("transformer", "r2gen"):
        print(f"[suite] {label} {name}", flush=True)
        steps, trainers = build(name)
        times = alternate(steps, warmup=2, reps=reps)
        before, after = steps
        out[name] = {f"{before}_s": times[before], f"{after}_s": times[after],
                     "speedup": times[before] / times[after]}
        for trainer in trainers:
            trainer.close()
        print(json.dumps(out[name]), flush=True)
    return out


def barrier_before_after(reps: int) -> dict:
    """Train-step time with the gradient barriers of `mlx_research.nn.barrier` kept through fusion
    (the trainer's CPU compiler options) against XLA CPU's default, which drops them before
    fusion: the step as it was before the barriers."""
    def build(name):
        kept, trainer, _ = trainer_step(_configs()[name])
        dropped = CompiledStep(trainer.train_step, trainer.fresh_state(), *kept.args,
                               context=trainer.mesh_context,
                               compiler_options={"xla_disable_hlo_passes": ""})
        return {"dropped": dropped, "kept": kept}, [trainer]

    return before_after("barrier", build, reps)


def rng_before_after(reps: int) -> dict:
    """Train-step time with threefry against hash32 dropout masks (`mlx_research.prng`)."""
    def build(name):
        steps, trainers = {}, []
        for label, impl in (("threefry", "threefry2x32"), ("hash32", "hash32")):
            config = _configs()[name]
            config.rng_impl = impl
            steps[label], trainer, _ = trainer_step(config)
            trainers.append(trainer)
        return steps, trainers

    return before_after("rng", build, reps)


FLAG_SETS = {"oneDNN custom calls": "--xla_cpu_experimental_onednn_custom_call=true",
             "no YNNPACK fusions": "--xla_cpu_experimental_ynn_fusion_type="}


def xla_flag_sweep(reps: int) -> dict:
    """Our step time under each of `FLAG_SETS` against the default flags, each in its own
    process (XLA reads its flags once), baseline and variant processes alternating twice."""
    out = {}
    for case in ("transformer", "resnet50"):
        for label, flags in FLAG_SETS.items():
            print(f"[suite] xla_flags {case}: {label}", flush=True)
            times = defaultdict(list)
            for _ in range(2):
                for variant, extra in (("default", ""), ("variant", flags)):
                    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {extra}")
                    line = subprocess.run(
                        [sys.executable, "-m", "benchmarks.suite", "--time-ours", case,
                         "--reps", str(reps)], env=env, cwd=ROOT, capture_output=True,
                        text=True, check=True).stdout.strip().splitlines()[-1]
                    times[variant].append(json.loads(line)["ours_s"])
            base, new = float(np.median(times["default"])), float(np.median(times["variant"]))
            out[f"{case}: {label}"] = {"flags": flags, "default_s": base, "variant_s": new,
                                       "speedup": base / new}
            print(json.dumps(out[f"{case}: {label}"]), flush=True)
    return out


# ---------------------------------------------------------------- results and README

def _before_after_line(result: dict | None, title: str, before: str, after: str) -> list[str]:
    """README lines of a `before_after` result (none when it was not measured)."""
    if not result:
        return []
    return ["", f"{title}: " + "; ".join(
        f"{k} {v[f'{before}_s'] * 1e3:.0f} -> {v[f'{after}_s'] * 1e3:.0f} ms "
        f"({v['speedup']:.2f}x)" for k, v in result.items()) + "."]


def _fmt(x, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def render(results: list[dict]) -> str:
    lines = []
    for r in results:
        m, peak = r["machine"], r.get("matmul_peak", {})
        where = (f"{m['device_kind']} ({m['backend']})" if m["backend"] != "cpu"
                 else f"{m['cpu']}, {m['cpu_cores']} cores")
        lines += [f"**{where}** — {m['date']}, jax {m['jax']}, torch {m.get('torch', 'absent')} "
                  f"({m.get('torch_threads', '–')} threads), XLA_FLAGS "
                  f"`{m['xla_flags'] or '(none)'}`, load average {m['load_average'][0]}. "
                  f"Matmul peak {_fmt(peak.get('peak_flops', 0) / 1e9, '.0f')} GFLOP/s "
                  f"(jitted XLA {_fmt(peak.get('xla_flops', 0) / 1e9, '.0f')}, numpy "
                  f"{_fmt(peak.get('numpy_flops') and peak['numpy_flops'] / 1e9, '.0f')}; {peak.get('dtype')} "
                  f"{peak.get('n')}²).", "",
                  "| train step | ours ms | PyTorch eager ms | speed vs PyTorch | GFLOP/step | MFU "
                  "| compile s | peak memory MB | top op categories (share of traced time) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name in CASES:
            c = r["cases"].get(name)
            if not c:
                continue
            ops = ", ".join(f"{k} {v:.0%}" for k, v in list(c["op_time_shares"].items())[:3])
            lines.append(
                f"| {name} | {c['ours_s'] * 1e3:.0f} | {_fmt(c['torch_s'] and c['torch_s'] * 1e3, '.0f')}"
                f" | {_fmt(c['speed_ratio'], '.2f')}x | {c['flops'] / 1e9:.1f} | "
                f"{_fmt(c['mfu'], '.2f')} | {c['compile_s']:.1f} | "
                f"{_fmt(c['memory_bytes'] and c['memory_bytes'] / 2**20, '.0f')} | {ops or '–'} |")
        if r.get("pipeline"):
            lines += ["", "Input pipeline (real pipeline vs cached batch, per step): " + "; ".join(
                f"{k} {v['real_s'] * 1e3:.0f} vs {v['cached_s'] * 1e3:.0f} ms "
                f"({v['slowdown']:+.1%}; host CPU {v['host_cpu_s_per_batch'] * 1e3:.0f} ms "
                "per batch)" for k, v in r["pipeline"].items()) + "."]
        lines += _before_after_line(
            r.get("barrier"), "Gradient barriers (`mlx_research.nn.barrier`) kept through XLA "
            "CPU's fusion against dropped (the step before them)", "dropped", "kept")
        lines += _before_after_line(
            r.get("rng"), "Dropout masks from `rng_impl=\"hash32\"` instead of threefry",
            "threefry", "hash32")
        if r.get("xla_flags"):
            lines += ["", "XLA CPU flags (our step, default flags time / with the flags): " + "; ".join(
                f"{k} `{v['flags']}` {v['speedup']:.2f}x" for k, v in r["xla_flags"].items()) + "."]
        lines.append("")
    return "\n".join(lines).rstrip()


def update_readme() -> None:
    results = [json.loads(Path(p).read_text()) for p in sorted(glob.glob(str(RESULTS / "suite_*.json")))]
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"README has no {BEGIN} ... {END} section; not updated")
        return
    head, rest = text.split(BEGIN, 1)
    body = render(results)
    README.write_text(f"{head}{BEGIN}\n{body}\n{END}{rest.split(END, 1)[1]}")
    print(body)


def rehearse_accelerator(names) -> None:
    """Runs each case once through the accelerator path on this CPU (bfloat16, the cuDNN attention
    request and its fallback to XLA's, PyTorch autocast), to catch errors before a GPU is at hand."""
    global _REHEARSAL
    peak = matmul_peak(1)["peak_flops"]  # the CPU's float32 peak
    _REHEARSAL = True
    for name in names:
        run_case(name, reps=1, peak=peak)
    print(f"[suite] accelerator path ran on the CPU for: {', '.join(names)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"what to run (default: all of {', '.join(NAMES)})")
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
    path = RESULTS / f"suite_{jax.default_backend()}.json"
    result = json.loads(path.read_text()) if path.exists() else {"cases": {}}
    result["machine"] = describe_machine(xla_flags)
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
        path.write_text(json.dumps(result, indent=2) + "\n")  # kept if a later name fails
    update_readme()


if __name__ == "__main__":
    main()
