"""Data, tensor, pipeline and FSDP parallel training of the seq2seq Transformer through the trainer.

Every parallel run is compared with a single-device reference computed in the same subprocess:
the task's loss and `jax.grad` on unsharded copies of the same initial parameters, without a mesh
(the Trainer builds its mesh from all devices, so it cannot run on one device of eight), and
plain SGD updates. The pipelined model's equality with the per-layer model is checked in-process.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlx_research.models.seq2seq import Seq2SeqTransformer
from mlx_research.train import config as config_lib
from tests.multidevice import run_with_devices

LR = 0.5
STEPS = 3


def parallel_config(mesh, rules="default", layers=2, pipeline=False, microbatches=1, width=16):
    """Tiny reverse-task config trained with plain SGD on mesh axes ``mesh``."""
    from experiments.seq2seq.reverse import get_config

    c = get_config()
    c.model.update(d_model=width, nhead=4, dim_feedforward=2 * width, num_encoder_layers=layers,
                   num_decoder_layers=layers, dropout=0.0, pipeline=pipeline,
                   pipeline_microbatches=microbatches)
    c.data.update(min_len=2, max_len=6)
    c.batch_size, c.total_steps, c.eval_every, c.image_every = 8, STEPS, 0, 0
    c.eval.num_examples, c.eval.batch_size = 16, 8
    c.optim.update(name="sgd", lr=LR, momentum=0.0, schedule="constant", warmup_steps=0,
                   weight_decay=0.0, grad_clip_norm=0.0)
    c.mesh = dict(mesh)
    c.sharding_rules = rules
    return c


# name -> (mesh axes, rules, layers per stack, pipeline, micro-batches)
CASES = {
    "dp8": ({"data": 8}, "default", 2, False, 1),
    "tp_data4_model2": ({"data": 4, "model": 2}, "default", 2, False, 1),
    "tp_data2_model4": ({"data": 2, "model": 4}, "default", 2, False, 1),
    "pp_data4_stage2": ({"data": 4, "stage": 2}, "default", 2, True, 2),
    "pp_data2_stage4": ({"data": 2, "stage": 4}, "default", 4, True, 4),
    "fsdp8": ({"data": 8}, "fsdp", 2, False, 1),
    "data2_model2_stage2": ({"data": 2, "model": 2, "stage": 2}, "default", 2, True, 2),
}

# name -> (mesh axes, rules, pipeline): a 4-way split of the weights by each kind of parallelism.
MEMORY_CASES = {
    "model4": ({"data": 2, "model": 4}, "default", False),
    "stage4": ({"data": 2, "stage": 4}, "default", True),
    "fsdp4": ({"data": 4, "stage": 2}, "fsdp", False),
}

_SNIPPET = """
import json, tempfile
import flax.linen as nn
import jax, jax.numpy as jnp, numpy as np
from mlx_research.parallel.sharding import bytes_per_device
from mlx_research.train.state import TrainState
from mlx_research.train.tasks import get_task
from mlx_research.train.trainer import Trainer
from tests.test_parallel_training import CASES, LR, MEMORY_CASES, STEPS, parallel_config

assert jax.device_count() == 8
tmp = tempfile.mkdtemp()
src = get_task("seq2seq")(parallel_config({"data": 8}), jnp.float32).train_source()
batches = [{k: np.stack([src[8 * s + i][k] for i in range(8)]) for k in src[0]}
           for s in range(STEPS)]
kinds = {}  # (pipeline, layers) -> (initial params, single-device loss-and-grad), built once


def kind(pipeline, layers):
    if (pipeline, layers) not in kinds:
        task = get_task("seq2seq")(parallel_config({}, layers=layers, pipeline=pipeline),
                                   jnp.float32)
        variables = task.init_variables(jax.random.PRNGKey(0), batches[0])
        params = jax.tree.map(np.asarray, nn.meta.unbox(variables)["params"])
        kinds[pipeline, layers] = params, jax.jit(jax.value_and_grad(task.loss, has_aux=True))
    return kinds[pipeline, layers]


def leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


out = {}
for name, (mesh, rules, layers, pipeline, micro) in CASES.items():
    t = Trainer(parallel_config(mesh, rules, layers, pipeline, micro), f"{tmp}/{name}")
    p0, grad_fn = kind(pipeline, layers)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=p0, model_state={},
                       opt_state=t.tx.init(p0), rng=jax.random.PRNGKey(1),
                       bad_step=jnp.full((), -1, jnp.int32))
    state = jax.device_put(state, t.state_shardings)
    losses, norms = [], []
    with t.mesh_context():
        for step, batch in enumerate(batches):
            state, metrics = t.train_step(state, jax.device_put(batch, t.batch_sharding))
            losses.append(float(metrics["loss"]))
            norms.append(float(metrics["grad_norm"]))
            if step == 0:
                p1 = jax.tree.map(np.asarray, state.params)
    # Single-device reference: same loss, jax.grad, plain SGD, no mesh.
    p, ref_losses, ref_norms = p0, [], []
    for step, batch in enumerate(batches):
        (loss, _), g = grad_fn(p, {}, batch, jax.random.PRNGKey(1))
        ref_losses.append(float(loss))
        ref_norms.append(float(np.sqrt(sum(np.sum(x ** 2) for x in leaves(g)))))
        g0 = g if step == 0 else g0
        p = jax.tree.map(lambda a, b: a - LR * b, p, g)
    # Gradient of step 1 implied by the update p1 = p0 - LR * g, relative to the largest entry.
    scale = max(np.abs(x).max() for x in leaves(g0))
    grad_err = max(np.abs((a - b) / LR - g).max()
                   for a, b, g in zip(leaves(p0), leaves(p1), leaves(g0))) / scale
    moved = [(a - c, b - c) for a, b, c in zip(leaves(state.params), leaves(p), leaves(p0))]
    out[name] = {
        "loss_rel": max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses)),
        "grad_norm_rel": max(abs(a - b) / b for a, b in zip(norms, ref_norms)),
        "grad_err": float(grad_err),
        "update_err": float(max(np.abs(a - b).max() for a, b in moved)
                            / max(np.abs(b).max() for _, b in moved)),
        "sharded_leaves": sum(x.sharding.shard_shape(x.shape) != x.shape
                              for x in jax.tree.leaves(state.params)),
    }
    if name == "pp_data2_stage4":
        t.checkpointer.save(STEPS, state, None)
        t.checkpointer.wait()
        pp_params = leaves(state.params)
    t.close()

# Checkpoint written under stage=4 restores under data=8 (stacked layers, same tree).
mesh, rules, layers, pipeline, micro = CASES["pp_data2_stage4"]
t = Trainer(parallel_config({"data": 8}, rules, layers, True, micro), f"{tmp}/pp_data2_stage4")
restored, _ = t.initial_state()
out["restore_dp8_max_diff"] = max(float(np.abs(a - b).max())
                                  for a, b in zip(leaves(restored.params), pp_params))
out["restore_dp8_step"] = int(restored.step)
out["restore_dp8_devices"] = len(jax.tree.leaves(restored.params)[0].sharding.device_set)
t.close()

# Parameter + optimizer (AdamW) bytes per device, from the trainer's state shardings.
for name, (mesh, rules, pipeline) in MEMORY_CASES.items():
    c = parallel_config(mesh, rules, layers=4, pipeline=pipeline, microbatches=2, width=64)
    c.optim.name = "adamw"
    c.data.vocab_size = 16
    t = Trainer(c, f"{tmp}/memory_{name}")
    abstract = t.abstract_state()
    tree = (abstract.params, abstract.opt_state)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    out["memory_" + name] = bytes_per_device(tree, (t.state_shardings.params,
                                                    t.state_shardings.opt_state)) / total
    t.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def parallel_run():
    return json.loads(run_with_devices(_SNIPPET).strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_parallel_training_matches_single_device(parallel_run, name):
    r = parallel_run[name]
    assert r["loss_rel"] < 1e-5, r
    assert r["grad_norm_rel"] < 1e-4, r
    assert r["grad_err"] < 1e-4, r
    assert r["update_err"] < 1e-4, r
    assert r["sharded_leaves"] > 0 or name == "dp8", r


def test_pipeline_checkpoint_restores_under_data_parallel(parallel_run):
    assert parallel_run["restore_dp8_step"] == STEPS
    assert parallel_run["restore_dp8_devices"] == 8
    assert parallel_run["restore_dp8_max_diff"] == 0.0


@pytest.mark.parametrize("name", sorted(MEMORY_CASES))
def test_param_and_optimizer_bytes_shrink(parallel_run, name):
    assert parallel_run["memory_" + name] <= 0.35
