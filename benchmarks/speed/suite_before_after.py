"""Optimisations' before/after in the speed suite: the gradient barriers kept through XLA CPU's
fusion or dropped, and hash32 against threefry dropout masks."""

from __future__ import annotations

import json

from benchmarks.common import alternate
from benchmarks.speed.suite_steps import CompiledStep, suite_configs, trainer_step


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
        kept, trainer, _ = trainer_step(suite_configs()[name])
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
            config = suite_configs()[name]
            config.rng_impl = impl
            steps[label], trainer, _ = trainer_step(config)
            trainers.append(trainer)
        return steps, trainers

    return before_after("rng", build, reps)
