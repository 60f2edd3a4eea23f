"""Data, tensor, pipeline and FSDP parallel training of the seq2seq Transformer through the trainer.

Every parallel run is compared with a single-device reference computed in the same subprocess:
the task's loss and `jax.grad` on unsharded copies of the same initial parameters, without a mesh,
and plain SGD updates (an independent path: no trainer, no shardings). The pipelined model's equality with the per-layer model is checked in-process.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlx_research.errors import ConfigError
from mlx_research.models.seq2seq import Seq2SeqTransformer
from mlx_research.testing import run_with_devices
from mlx_research.train import config as config_lib
from tests.numeric import reordered_sum_rtol

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
    c.batch_size, c.total_steps, c.write_images = 8, STEPS, False
    c.evals.decode.update(every_steps=0, num_examples=16, batch_size=8)
    c.optim.update(name="sgd", lr=LR, momentum=0.0, schedule="constant", warmup_steps=0,
                   weight_decay=0.0, grad_clip_norm=0.0)
    c.mesh = dict(mesh)
    c.sharding_rules = rules
    return c


# name -> (mesh axes, rules, layers per stack, pipeline, micro-batches). The pipelined cases share
# 4 + 4 layers (divisible by 2 and 4 stages), so one reference program serves all of them.
CASES = {
    "dp8": ({"data": 8}, "default", 1, False, 1),
    "tp_data4_model2": ({"data": 4, "model": 2}, "default", 1, False, 1),
    "tp_data2_model4": ({"data": 2, "model": 4}, "default", 1, False, 1),
    "fsdp8": ({"data": 8}, "fsdp", 1, False, 1),
    "fsdp_data2_model4": ({"data": 2, "model": 4}, "fsdp", 1, False, 1),
    "pp_data4_stage2": ({"data": 4, "stage": 2}, "default", 4, True, 2),
    "pp_data2_stage4": ({"data": 2, "stage": 4}, "default", 4, True, 4),
    "data2_model2_stage2": ({"data": 2, "model": 2, "stage": 2}, "default", 4, True, 2),
}

# name -> (mesh axes over 4 devices, rules, pipeline): a 4-way split of the weights each.
MEMORY_CASES = {
    "model4": ({"model": 4}, "default", False),
    "stage4": ({"stage": 4}, "default", True),
    "fsdp4": ({"data": 4}, "fsdp", False),
}

_COMMON = """
import json, tempfile
import flax.linen as nn
import jax, jax.numpy as jnp, numpy as np
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
out = {}


def kind(pipeline, layers):
    if (pipeline, layers) not in kinds:
        task = get_task("seq2seq")(parallel_config({}, layers=layers, pipeline=pipeline),
                                   jnp.float32)
        variables = jax.jit(task.init_variables)(jax.random.PRNGKey(0), batches[0])
        params = jax.tree.map(np.asarray, nn.meta.unbox(variables)["params"])
        kinds[pipeline, layers] = params, jax.jit(jax.value_and_grad(mean_loss(task), has_aux=True))
    return kinds[pipeline, layers]


def mean_loss(task):
    \"\"\"The task's summed loss divided by its weight (the full-batch mean).\"\"\"
    def loss(params, model_state, batch, rng):
        (loss_sum, weight), aux = task.loss(params, model_state, batch, rng)
        return loss_sum / weight, aux
    return loss


def leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def run_case(name):
    \"\"\"STEPS trainer steps on the case's mesh vs the single-device reference; returns the
    trainer and its final state (the caller closes the trainer).\"\"\"
    mesh, rules, layers, pipeline, micro = CASES[name]
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
    # Single-device reference: the task's loss, jax.grad and plain SGD, without a mesh.
    p, ref_losses, ref_norms = p0, [], []
    for step, batch in enumerate(batches):
        (loss, _), g = grad_fn(p, {}, batch, jax.random.PRNGKey(1))
        ref_losses.append(float(loss))
        ref_norms.append(float(np.sqrt(sum(np.sum(x ** 2) for x in leaves(g)))))
        g0 = g if step == 0 else g0
        p = jax.tree.map(lambda a, b: a - LR * b, p, g)
    # The step-1 gradient implied by p1 = p0 - LR * g, relative to the largest gradient entry.
    scale = max(np.abs(x).max() for x in leaves(g0))
    grad_err = max(np.abs((a - b) / LR - g).max()
                   for a, b, g in zip(leaves(p0), leaves(p1), leaves(g0))) / scale
    moved = [(a - c, b - c) for a, b, c in zip(leaves(state.params), leaves(p), leaves(p0))]
    move_scale = max(np.abs(b).max() for _, b in moved)
    # float32 rounding of the parameters themselves (eps |p| per update), on the scales above.
    param_eps = np.finfo(np.float32).eps * max(np.abs(x).max() for x in leaves(p0))
    out[name] = {
        "loss_rel": max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses)),
        "grad_norm_rel": max(abs(a - b) / b for a, b in zip(norms, ref_norms)),
        "grad_err": float(grad_err),
        "grad_rounding": float(param_eps / LR / scale),
        "update_err": float(max(np.abs(a - b).max() for a, b in moved) / move_scale),
        "update_rounding": float(STEPS * param_eps / move_scale),
        "sharded_leaves": sum(x.sharding.shard_shape(x.shape) != x.shape
                              for x in jax.tree.leaves(state.params)),
    }
    return t, state
"""

# Data/tensor/FSDP runs, and train-state (parameter + optimizer) bytes per device on 4-device
# meshes against one device, as XLA's memory_analysis() reports them for the trainer's shardings.
_SNIPPET_SPMD = _COMMON + """

for name in ("dp8", "tp_data4_model2", "tp_data2_model4", "fsdp8", "fsdp_data2_model4"):
    run_case(name)[0].close()

# Collectives of one tensor-parallel encoder layer's forward on data=4 x model=2.
import re
from mlx_research.nn.transformer import TransformerEncoderLayer
from mlx_research.parallel.mesh import create_mesh
from mlx_research.parallel.sharding import get_rules, logical_shardings

tp_mesh, tp_rules = create_mesh({"data": 4, "model": 2}), get_rules("default")
tp_layer = TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0)
x = jnp.ones((8, 6, 32))
with jax.set_mesh(tp_mesh), nn.logical_axis_rules(tp_rules):
    boxed = jax.eval_shape(tp_layer.init, jax.random.PRNGKey(0), x)
    tp_params = jax.jit(tp_layer.init, out_shardings=logical_shardings(boxed, tp_mesh, tp_rules))(
        jax.random.PRNGKey(0), x)
    hlo = jax.jit(tp_layer.apply).lower(tp_params, x).compile().as_text()
out["tp_collectives"] = {op: len(re.findall(rf"= \\S+ {op}\\(", hlo)) for op in
                         ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")}


def state_bytes_per_device(trainer):
    # XLA's per-device argument bytes of a program that takes the sharded train state.
    copy = jax.jit(lambda s: jax.tree.map(lambda x: x + 0, s),
                   in_shardings=(trainer.state_shardings,), out_shardings=trainer.state_shardings)
    return copy.lower(trainer.abstract_state()).compile().memory_analysis().argument_size_in_bytes


one_device = None
for name, (axes, rules, pipeline) in MEMORY_CASES.items():
    c = parallel_config(axes, rules, layers=4, pipeline=pipeline, width=64)
    c.optim.name = "adamw"
    if one_device is None:
        c1 = parallel_config({"data": 1}, "default", layers=4, pipeline=False, width=64)
        c1.optim.name = "adamw"
        t = Trainer(c1, f"{tmp}/memory_1", devices=jax.devices()[:1])
        one_device = state_bytes_per_device(t)
        t.close()
    t = Trainer(c, f"{tmp}/memory_{name}", devices=jax.devices()[:4])
    out["memory_" + name] = state_bytes_per_device(t) / one_device
    t.close()
print(json.dumps(out))
"""

# Pipeline runs, and a checkpoint written under stage=4 restored under data=8: the stacked layer
# tree does not depend on the stage count.
_SNIPPET_PIPELINE = _COMMON + """
for name in ("pp_data4_stage2", "data2_model2_stage2", "pp_data2_stage4"):
    t, state = run_case(name)
t.checkpointer.save(STEPS, state, None)
t.checkpointer.wait()
t.close()
saved = leaves(state.params)
_, rules, layers, pipeline, micro = CASES["pp_data2_stage4"]
t = Trainer(parallel_config({"data": 8}, rules, layers, pipeline, micro), f"{tmp}/pp_data2_stage4")
restored, _ = t.initial_state()
t.close()
out["restore"] = {
    "step": int(restored.step),
    "devices": len(jax.tree.leaves(restored.params)[0].sharding.device_set),
    "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(leaves(restored.params), saved)),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def parallel_run():
    """Both 8-device snippets, run concurrently (each pays one JAX start-up)."""
    with ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(run_with_devices, (_SNIPPET_SPMD, _SNIPPET_PIPELINE)))
    results = {}
    for output in outputs:
        results.update(json.loads(output.strip().splitlines()[-1]))
    return results


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.slow
def test_parallel_training_matches_single_device(parallel_run, name):
    r = parallel_run[name]
    # The layouts sum over the batch's 8 x 7 target tokens in different orders: float32 rounding
    # allows about eps * sqrt(56) (tests/numeric.py). The gradient read back from p0 - p1 and the
    # parameters' movement also carry the rounding of the parameters (eps |p| per update).
    rtol = reordered_sum_rtol(8 * 7)
    assert r["loss_rel"] < rtol, r
    assert r["grad_norm_rel"] < rtol, r
    assert r["grad_err"] < rtol + r["grad_rounding"], r
    assert r["update_err"] < STEPS * rtol + r["update_rounding"], r
    assert r["sharded_leaves"] > 0 or name == "dp8", r


@pytest.mark.slow
def test_pipeline_checkpoint_restores_under_data_parallel(parallel_run):
    restore = parallel_run["restore"]
    assert restore == {"step": STEPS, "devices": 8, "max_diff": 0.0}


@pytest.mark.slow
def test_tensor_parallel_layer_needs_one_all_reduce_per_block(parallel_run):
    # Megatron: column-parallel Q/K/V and FFN-in, row-parallel out and FFN-out; the only
    # communication of a layer's forward is one all-reduce after attention and one after the FFN.
    assert parallel_run["tp_collectives"] == {
        "all-reduce": 2, "all-gather": 0, "reduce-scatter": 0, "all-to-all": 0}


@pytest.mark.parametrize("name", sorted(MEMORY_CASES))
@pytest.mark.slow
def test_param_and_optimizer_bytes_shrink(parallel_run, name):
    assert parallel_run["memory_" + name] <= 0.35


def _stack_layers(stack_params, num_layers):
    """Per-layer params {layers_i: tree, norm: ...} -> stacked {layers: tree[L, ...], norm: ...}."""
    layers = [stack_params[f"layers_{i}"] for i in range(num_layers)]
    return {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers),
            "norm": stack_params["norm"]}


@pytest.mark.slow
def test_pipelined_model_equals_per_layer_model():
    kw = dict(vocab_size=16, d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
              dim_feedforward=32, dropout=0.0)
    per_layer = Seq2SeqTransformer(**kw)
    pipelined = Seq2SeqTransformer(**kw, pipeline=True, pipeline_microbatches=2)
    rng = np.random.default_rng(0)
    inputs, targets = rng.integers(3, 16, (4, 6)), rng.integers(3, 16, (4, 7))
    inputs[:, 4:], targets[0, 5:] = 0, 0  # padding in both
    params = nn.meta.unbox(jax.jit(per_layer.init)(jax.random.PRNGKey(0), inputs, targets))
    params = params["params"]
    stacked = dict(params, encoder=_stack_layers(params["encoder"], 2),
                   decoder=_stack_layers(params["decoder"], 2))
    boxed = jax.eval_shape(pipelined.init, jax.random.PRNGKey(0), inputs, targets)
    assert jax.tree.structure(nn.meta.unbox(boxed)["params"]) == jax.tree.structure(stacked)
    specs = nn.get_partition_spec(boxed)["params"]
    assert tuple(specs["encoder"]["layers"]["mlp"]["wi"]["kernel"]) == ("layers", "embed", "mlp")

    @jax.jit
    def logits_and_grads(params, stacked):
        def loss(model, p):
            logits = model.apply({"params": p}, inputs, targets)
            return jnp.mean(logits**2), logits

        return (jax.value_and_grad(loss, argnums=1, has_aux=True)(per_layer, params),
                jax.value_and_grad(loss, argnums=1, has_aux=True)(pipelined, stacked))

    ((_, ref_logits), g_ref), ((_, logits), g) = logits_and_grads(params, stacked)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    g_ref = dict(g_ref, encoder=_stack_layers(g_ref["encoder"], 2),
                 decoder=_stack_layers(g_ref["decoder"], 2))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="dropout"):
        jax.eval_shape(lambda p: Seq2SeqTransformer(**dict(kw, dropout=0.1), pipeline=True).apply(
            {"params": p}, inputs, targets, train=True, rngs={"dropout": jax.random.key(0)}),
            stacked)


@pytest.mark.parametrize(
    "mesh, model, message",
    [
        ({"data": 4, "stage": 2}, {}, "needs model.pipeline=True"),
        ({"stage": 4}, {"pipeline": True, "num_encoder_layers": 2}, "not divisible by mesh.stage"),
        ({"stage": 2}, {"pipeline": True, "pipeline_microbatches": 0}, "must be >= 1"),
        ({"stage": 2}, {"pipeline": True, "dropout": 0.1}, "does not support dropout"),
        ({"stage": 2}, {"pipeline": True, "pipeline_microbatches": 3}, "not divisible by model.pip"),
    ],
)
def test_pipeline_config_errors(mesh, model, message):
    config = parallel_config(mesh)
    config.model.update(model)
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(config)
