"""Our train steps in the speed suite, compiled once for fixed arguments.

Cases: ``transformer`` (the seq2seq encoder-decoder at d 512), ``resnet18`` / ``resnet50`` (an
equivalent jitted classification step), ``faster_rcnn`` and ``r2gen`` (the trainer's jitted step
of their experiments). Dropout masks come from ``rng_impl="hash32"``. On GPU/TPU, or on a CPU
rehearsing that path, the steps compute in bfloat16 and the Transformer asks for cuDNN attention.
"""

from __future__ import annotations

import contextlib
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlx_research.data.pipeline import to_global_batch
from mlx_research.nn.resnet import resnet18, resnet50
from mlx_research.train.trainer import Trainer

CASES = ("transformer", "resnet18", "resnet50", "faster_rcnn", "r2gen")

_REHEARSAL = False  # --rehearse-accelerator: the GPU/TPU path on a CPU


def accelerator() -> bool:
    """Whether to take the GPU/TPU path (bfloat16, cuDNN attention, PyTorch on CUDA, autocast)."""
    return _REHEARSAL or jax.default_backend() != "cpu"


def rehearse_accelerator_path() -> None:
    """Makes `accelerator()` true on a CPU too: the GPU/TPU path runs here, as a check."""
    global _REHEARSAL  # pylint: disable=global-statement
    _REHEARSAL = True


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
    """The trainer's train step of ``config`` on one batch of its real input pipeline (the
    step's ``iterator`` attribute continues that pipeline); the trainer; the numpy batch."""
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
    """SGD with momentum on the mean cross-entropy of `Classifier`; images [B, H, W, 3] float32,
    labels [B] int."""
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


def suite_configs() -> dict:
    """Fresh configs of the trainer-step cases: transformer, faster_rcnn, r2gen."""
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
    config = suite_configs()[name]
    try:
        return (*trainer_step(config), {})
    except Exception as e:  # pylint: disable=broad-except
        if config.model.get("attention_implementation") != "cudnn":
            raise
        print(f"[suite] cuDNN attention failed ({str(e).splitlines()[0][:200]}); using XLA's")
        config.model.attention_implementation = "xla"
        return (*trainer_step(config), {})
