"""R2Gen model: relational memory and MCLN against float64 numpy formulas, cached decoding against
teacher forcing, greedy/beam generation, padding, views, gradients, tensor-parallel loss."""

import functools
import json
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from flax.core import meta
from scipy.special import log_softmax

from mlx_research.models.decoding import beam_search, cached_step, search
from mlx_research.models.report.r2gen import R2Gen, make_step
from mlx_research.models.report.relational_memory import (
    ConditionalLayerNorm,
    R2GenLayerNorm,
    RelationalMemory,
)
from mlx_research.testing import run_with_devices
from tests.numeric import reordered_sum_rtol

KW = dict(vocab_size=12, max_len=8, backbone="small_cnn", small_cnn_features=(8, 16, 32),
          d_model=16, d_ff=32, num_heads=2, num_layers=2, dropout=0.1, feature_dropout=0.5,
          rm_num_slots=3, rm_num_heads=2, rm_d_model=16)
BOS, STEPS = 1, 6


def randomized(params, seed, scale=0.5):
    """Every parameter redrawn N(0, scale^2), so biases and affine terms are not 0/1."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def f64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# ------------------------------------------------------------------ numpy references

def np_attention(p, q_in, kv_in):
    """torch-style multi-head attention, our parameter layout; q_in [B, Q, E], kv_in [B, K, E]."""
    q = np.einsum("bqe,ehd->bqhd", q_in, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("bke,ehd->bkhd", kv_in, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("bke,ehd->bkhd", kv_in, p["value"]["kernel"]) + p["value"]["bias"]
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights, v)
    return np.einsum("bqhd,hde->bqe", out, p["out"]["kernel"]) + p["out"]["bias"]


def np_linear(p, x):
    return x @ p["kernel"] + p["bias"]


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_memory_step(p, memory, x):
    """R2Gen RelationalMemory.forward_step: memory [B, S, D], x [B, D]."""
    kv = np.concatenate([memory, x[:, None]], axis=1)
    nxt = memory + np_attention(p["attn"], memory, kv)
    nxt = nxt + relu(np_linear(p["mlp"]["wo"], relu(np_linear(p["mlp"]["wi"], nxt))))
    gates = np_linear(p["W"], x[:, None]) + np_linear(p["U"], np.tanh(memory))
    d = memory.shape[-1]
    return sigmoid(gates[..., :d]) * np.tanh(nxt) + sigmoid(gates[..., d:]) * memory


def np_norm(x, gamma, beta, eps=1e-6):
    """R2Gen LayerNorm: unbiased std, eps added to the std."""
    mean = x.mean(-1, keepdims=True)
    std = np.sqrt(((x - mean) ** 2).sum(-1, keepdims=True) / (x.shape[-1] - 1))
    return gamma * (x - mean) / (std + eps) + beta


# ------------------------------------------------------------------ building blocks

@pytest.mark.slow
def test_relational_memory_matches_numpy_recurrence():
    batch, length, slots, width = 2, 3, 3, 8
    module = RelationalMemory(num_slots=slots, num_heads=2, dropout=0.1)
    x = np.random.default_rng(0).normal(size=(batch, length, width)).astype(np.float32)
    params = randomized(meta.unbox(module.init(jax.random.key(0), x))["params"], seed=1)
    out = jax.jit(module.apply)({"params": params}, x)

    p = f64(params)["cell"]
    memory = np.broadcast_to(np.eye(slots, width), (batch, slots, width))  # identity rows, padded
    expected = []
    for t in range(length):
        memory = np_memory_step(p, memory, x[:, t].astype(np.float64))
        expected.append(memory.reshape(batch, -1))
    np.testing.assert_allclose(out, np.stack(expected, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_conditional_and_plain_layer_norm_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32) * 3 + 1
    memory = rng.normal(size=(2, 3, 24)).astype(np.float32)
    mcln = ConditionalLayerNorm()
    init = meta.unbox(mcln.init(jax.random.key(0), x, memory))["params"]
    for name in ("mlp_gamma_0", "mlp_gamma_1", "mlp_beta_0", "mlp_beta_1"):
        assert np.all(init[name]["bias"] == np.float32(0.1)), name  # R2Gen's bias init
    params = randomized(init, seed=2)
    p = f64(params)

    def mlp(name):
        hidden = relu(np_linear(p[f"mlp_{name}_0"], memory.astype(np.float64)))
        return np_linear(p[f"mlp_{name}_1"], hidden)

    expected = np_norm(x.astype(np.float64), p["gamma"] + mlp("gamma"), p["beta"] + mlp("beta"))
    np.testing.assert_allclose(mcln.apply({"params": params}, x, memory), expected,
                               rtol=1e-5, atol=1e-5)

    norm = R2GenLayerNorm()
    params = randomized(meta.unbox(norm.init(jax.random.key(0), x))["params"], seed=3)
    p = f64(params)
    np.testing.assert_allclose(norm.apply({"params": params}, x),
                               np_norm(x.astype(np.float64), p["gamma"], p["beta"]),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the model

def images(batch, views, seed=0):
    """Random ``[batch, views, 32, 32, 1]`` float32 studies (small_cnn: 4 x 4 patches a view)."""
    return np.random.default_rng(seed).normal(size=(batch, views, 32, 32, 1)).astype(np.float32)


@functools.cache
def memory_variables():
    """The full model's variables (one init compile); the base model's are a subset of them."""
    tokens = np.full((4, STEPS), BOS, np.int32)
    return meta.unbox(jax.jit(R2Gen(**KW).init)(jax.random.key(0), images(4, 2), tokens))


def base_variables(variables):
    """Drops the relational memory and the MCLN MLPs: the ``use_memory=False`` parameter tree."""
    flat = traverse_util.flatten_dict(variables)
    return traverse_util.unflatten_dict({
        path: value for path, value in flat.items()
        if "relational_memory" not in path and not any(n.startswith("mlp_") for n in path)})


class Setup(NamedTuple):
    model: R2Gen
    variables: dict
    x: np.ndarray  # [4, 2, 32, 32, 1]
    encode: Callable  # jitted (variables, images) -> encoded
    decode: Callable  # jitted (variables, encoded, decoder_inputs) -> logits


@functools.cache
def make_setup(use_memory):
    model = R2Gen(**KW, use_memory=use_memory)
    variables = memory_variables() if use_memory else base_variables(memory_variables())
    encode = jax.jit(lambda v, x: model.apply(v, x, method=R2Gen.encode))
    decode = jax.jit(lambda v, e, d: model.apply(v, e, d, method=R2Gen.decode))
    return Setup(model, variables, images(4, 2), encode, decode)


@pytest.fixture(params=[True, False], ids=["memory", "base"])
def setup(request):
    """The full model and R2Gen's base Transformer (``use_memory=False``)."""
    return make_setup(request.param)


@pytest.fixture
def full():
    """The full model only."""
    return make_setup(True)


@pytest.mark.slow
def test_cached_decode_step_equals_teacher_forcing(setup):
    model, variables = setup.model, setup.variables
    encoded = setup.encode(variables, setup.x)
    dec = np.random.default_rng(5).integers(2, KW["vocab_size"], (4, STEPS)).astype(np.int32)
    dec[:, 0] = BOS
    dec[0, 2] = dec[2, 4:] = 0  # padding among the decoder inputs is masked as keys
    dec[3, 0] = 0  # a pad-id BOS (R2Gen's bos = pad = 0) stays a key

    @jax.jit
    def cached(variables):
        step, cache = cached_step(model, variables, R2Gen.decode_step, (encoded,), STEPS)
        cache, logits = jax.lax.scan(lambda c, t: step(t, c)[::-1], cache, dec.T)
        return jnp.swapaxes(logits, 0, 1), cache["model"]

    logits, cache = cached(variables)
    teacher_forced = setup.decode(variables, encoded, dec)
    assert np.isfinite(teacher_forced).all()
    np.testing.assert_allclose(logits, teacher_forced, rtol=1e-5, atol=1e-5)
    assert int(cache["decode_state"]["position"]) == STEPS
    if model.use_memory:
        assert cache["relational_memory"]["memory"].shape == (4, 3, 16)


@pytest.mark.slow
def test_greedy_and_beam_generation(full):
    model, variables = full.model, full.variables
    encoded = full.encode(variables, full.x)

    def greedy_reference(eos):
        """Argmax of teacher-forced `decode` on the growing prefix (later positions pad, which
        causality hides), pad after EOS."""
        buf = np.zeros((4, STEPS), np.int32)
        buf[:, 0] = BOS
        out = np.zeros_like(buf)
        for t in range(STEPS):
            out[:, t] = np.asarray(full.decode(variables, encoded, buf))[:, t].argmax(-1)
            if t + 1 < STEPS:
                buf[:, t + 1] = out[:, t]
        if eos is not None:
            out[np.cumsum(out == eos, axis=1) - (out == eos) > 0] = 0
        return out

    def log_prob(tokens):
        """Teacher-forced float64 log-probability of each row's tokens up to its EOS."""
        ended = np.cumsum(tokens == eos, axis=1) - (tokens == eos) > 0
        dec = np.concatenate([np.full((4, 1), BOS, np.int32), tokens[:, :-1]], axis=1)
        logp = log_softmax(np.asarray(full.decode(variables, encoded, dec), np.float64), -1)
        token_logp = np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
        return np.where(ended, 0.0, token_logp).sum(1)

    present = [set(row.tolist()) for row in greedy_reference(None)]
    candidates = set().union(*present) - set.intersection(*present) - {0, BOS}
    assert candidates, "every row generates the same tokens: change the seed"
    eos = min(candidates)
    ref = greedy_reference(eos)
    assert (ref == eos).any() and (ref != eos).all(axis=1).any()  # early EOS, and none

    ids = dict(batch_size=4, max_len=STEPS, bos_id=BOS, eos_id=eos, pad_id=0)
    greedy = jax.jit(lambda v, x: search(*make_step(model, v, x, STEPS), 1, **ids))(variables,
                                                                                     full.x)
    np.testing.assert_array_equal(greedy, ref)

    @jax.jit
    def beams(variables):
        step, cache = make_step(model, variables, full.x, STEPS)
        return beam_search(step, cache, beam_size=3, length_penalty=0.0, **ids)

    tokens, scores = jax.tree.map(np.asarray, beams(variables))
    for row in tokens:  # valid: vocabulary ids, pad exactly after the first EOS
        assert ((row >= 0) & (row < KW["vocab_size"])).all()
        after = np.cumsum(row == eos) - (row == eos) > 0
        assert (row[after] == 0).all()
    # Each score is the teacher-forced log-probability of its tokens (the cache, relational
    # memory included, follows the beams), and at least the greedy report's.
    beam_logp, greedy_logp = log_prob(tokens), log_prob(ref)
    np.testing.assert_allclose(scores, beam_logp, rtol=1e-4, atol=1e-5)
    assert (beam_logp >= greedy_logp - 1e-5).all() and (beam_logp > greedy_logp + 1e-3).any()


@pytest.mark.slow
def test_padding_does_not_reach_real_positions(setup):
    model, variables = setup.model, setup.variables
    encoded = setup.encode(variables, setup.x)
    dec = np.array([[BOS, 5, 6, 7, 0, 0]] * 4, np.int32)
    padded = np.asarray(setup.decode(variables, encoded, dec))
    # Trailing padding: the same logits as the unpadded sequence.
    np.testing.assert_allclose(padded[:, :4], setup.decode(variables, encoded, dec[:, :4]),
                               rtol=1e-5, atol=1e-5)
    # A padding key inside the sequence: the pad embedding never reaches real positions through
    # attention. The relational memory reads every token, as R2Gen's, so there it does.
    dec[:, 2] = 0
    table = variables["params"]["embed"]["embedding"]
    shift = np.random.default_rng(1).normal(size=table.shape[1]).astype(np.float32)  # not a
    # constant shift, which layer norms remove
    moved = {**variables, "params": {**variables["params"], "embed": {
        "embedding": table.at[0].add(shift)}}}
    before = np.asarray(setup.decode(variables, encoded, dec))
    after = np.asarray(setup.decode(moved, encoded, dec))
    if model.use_memory:
        assert not np.allclose(before[:, 3], after[:, 3], atol=1e-3)
    else:
        real = dec != 0
        np.testing.assert_allclose(after[real], before[real], rtol=1e-5, atol=1e-5)
    assert not np.allclose(after[:, 2], before[:, 2], atol=1e-3)  # the pad position itself moves


@pytest.mark.slow
def test_views_share_the_extractor(full):
    variables, two = full.variables, full.x
    dec = np.array([[BOS, 3, 4, 5, 0, 0], [BOS, 6, 7, 0, 0, 0]] * 2, np.int32)
    # No positions on visual tokens: swapping the views permutes the encoded patches only, and
    # the logits stay the same.
    swapped = np.ascontiguousarray(two[:, ::-1])
    enc, enc_swapped = full.encode(variables, two), full.encode(variables, swapped)
    assert enc.shape == (4, 2 * 16, 16)
    np.testing.assert_allclose(enc_swapped, np.concatenate([enc[:, 16:], enc[:, :16]], 1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(full.decode(variables, enc_swapped, dec),
                               full.decode(variables, enc, dec), rtol=1e-5, atol=1e-5)
    one = full.encode(variables, two[:, :1])
    assert one.shape == (4, 16, 16) and np.isfinite(one).all()


@pytest.mark.slow
def test_training_gradients_are_finite_and_reach_every_module(full):
    model, variables = full.model, full.variables
    dec = np.array([[BOS, 3, 4, 5, 0, 0], [BOS, 6, 7, 8, 9, 0]] * 2, np.int32)

    def loss(params):
        logits, state = model.apply({**variables, "params": params}, full.x, dec, train=True,
                                    rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, np.roll(dec, -1, axis=1)[..., None], axis=-1)[..., 0]
        return jnp.mean(nll), state

    (value, state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    for name, tree in grads.items():
        assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(tree)), name
    assert not np.allclose(state["batch_stats"]["backbone"]["bn1"]["mean"],
                           variables["batch_stats"]["backbone"]["bn1"]["mean"])


def test_bad_configuration_names_the_field():
    x, dec = images(1, 1), np.full((1, 3), BOS, np.int32)

    def init(dec=dec, **changes):
        jax.eval_shape(R2Gen(**{**KW, **changes}).init, jax.random.key(0), x, dec)

    with pytest.raises(ValueError, match="rm_d_model"):
        init(rm_d_model=8)
    with pytest.raises(ValueError, match="backbone"):
        init(backbone="vgg")
    with pytest.raises(ValueError, match="max_len"):
        init(np.full((1, 9), BOS, np.int32))


_TP_SNIPPET = """
import json
import flax.linen as nn
import jax, jax.numpy as jnp, numpy as np
from flax import traverse_util
from mlx_research.models.report.r2gen import R2Gen
from mlx_research.parallel.mesh import create_mesh
from mlx_research.parallel.sharding import (
    DEFAULT_RULES, batch_sharding, logical_shardings, shard_tree)
from tests.test_r2gen_model import BOS, KW, images

variables = traverse_util.unflatten_dict(dict(np.load(VARIABLES_PATH)), sep="/")
model = R2Gen(**KW)
x = images(8, 2, seed=3)
dec = np.random.default_rng(0).integers(2, KW["vocab_size"], (8, 6)).astype(np.int32)
dec[:, 0], dec[::2, 4:] = BOS, 0


@jax.jit
def loss(params, batch_stats, x, dec):
    # Training mode: dropout and batch statistics (partitionable threefry: the same dropout masks
    # under any sharding).
    logits, state = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, dec, train=True,
        rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, jnp.roll(dec, -1, 1)[..., None], -1)[..., 0]
    return nll.mean(), state["batch_stats"]


single, stats = loss(variables["params"], variables["batch_stats"], x, dec)
mesh = create_mesh({"data": 4, "model": 2})
with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    abstract = jax.eval_shape(model.init, jax.random.key(0), x, dec)
    placed = shard_tree(variables, logical_shardings(abstract, mesh, DEFAULT_RULES))
    xs, ds = (jax.device_put(a, batch_sharding(mesh)) for a in (x, dec))
    value, stats_tp = loss(placed["params"], placed["batch_stats"], xs, ds)


def max_diff(a, b):
    return max(float(jnp.abs(u - v).max()) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


print(json.dumps({
    "single": float(single), "sharded": float(value),
    "stats_rel": max_diff(stats, stats_tp) / max(float(jnp.abs(s).max())
                                                 for s in jax.tree.leaves(stats)),
    "specs": {"/".join(k.key for k in path): str(leaf.sharding.spec)
              for path, leaf in jax.tree_util.tree_leaves_with_path(placed["params"])},
}))
"""


@pytest.mark.slow
def test_tensor_parallel_training_loss_equals_single_device(tmp_path):
    """Training-mode loss and batch statistics under mesh data=4 x model=2 (default rules) equal
    the single-device ones; attention heads, memory gates, MCLN MLPs and logits are sharded."""
    path = tmp_path / "variables.npz"
    np.savez(path, **traverse_util.flatten_dict(memory_variables(), sep="/"))
    out = json.loads(run_with_devices(_TP_SNIPPET.replace("VARIABLES_PATH", repr(str(path))))
                     .strip().splitlines()[-1])
    # Batch statistics average 8 x 2 views x 32 x 32 pixels, summed in a different order under
    # the mesh: float32 rounding allows about eps * sqrt(that) (tests/numeric.py).
    rtol = reordered_sum_rtol(8 * 2 * 32 * 32)
    np.testing.assert_allclose(out["sharded"], out["single"], rtol=rtol)
    assert out["stats_rel"] < rtol, out["stats_rel"]
    specs = out["specs"]
    assert specs["decoder_layers_0/self_attn/query/kernel"] == "P(None, 'model', None)"
    assert specs["relational_memory/cell/W/kernel"] == "P(None, 'model')"
    assert specs["decoder_layers_0/norm1/mlp_gamma_0/kernel"] == "P(None, 'model')"
    assert specs["decoder_layers_0/norm1/mlp_gamma_1/kernel"] == "P('model', None)"
    assert specs["logit/kernel"] == "P(None, 'model')"
