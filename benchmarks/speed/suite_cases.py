"""One case of the speed suite: our train step against its PyTorch eager twin, with FLOPs, MFU,
compile time, peak memory and where the time goes; and the device's matmul peak that MFU is
measured against."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import alternate
from benchmarks.speed.op_profile import op_categories
from benchmarks.speed.suite_steps import CompiledStep, accelerator, our_step
from mlx_research.train.trainer import Trainer


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


def _torch_device():
    import torch

    return torch.device("cuda" if accelerator() and torch.cuda.is_available() else "cpu")


def _torch_twin(name: str, trainer: Trainer | None, local: dict, extra: dict):
    """(step, parameter count) of the PyTorch twin, or None without torch."""
    try:
        from benchmarks.speed import torch_twins
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
        return torch_twins.faster_rcnn_step(local, trainer.config, trainer.task._num_classes(),
                                            device, bf16)
    from mlx_research.data.tokenizer import BOS_ID

    task = trainer.task
    return torch_twins.r2gen_step(local, trainer.config, task.output_size(), task.max_len, BOS_ID,
                                  device, bf16)


def _peak_memory(step: CompiledStep) -> int | None:
    """The device's peak bytes in use on GPU/TPU, else the compiled step's memory analysis."""
    stats = jax.devices()[0].memory_stats() if accelerator() else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else \
        step.memory_bytes


def run_case(name: str, reps: int, peak: float) -> dict:
    """Times our step of case ``name`` and its PyTorch twin alternately (median of ``reps``
    rounds after 2 warm-up calls each); MFU against ``peak`` FLOP/s."""
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
