"""Tests for mlx_research.nn.transformer against float64 numpy layer formulas."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax.linen import meta
from scipy.special import erf

from mlx_research.nn.transformer import (
    MlpBlock,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

B, S, T, D, NHEAD, FF = 2, 5, 4, 8, 2, 16
EPS = 1e-5
SMALL = {"d_model": D, "nhead": NHEAD, "dim_feedforward": FF}


def random_params(module, *args, seed=0, **kwargs):
    """Random float32 params with the module's shapes, LayerNorms at identity; and specs."""
    abstract = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def fill(path, a):
        names = [getattr(k, "key", "") for k in path]
        if names[-1] == "scale":
            return np.ones(a.shape, np.float32)
        if names[-1] == "bias" and names[-2].startswith("norm"):
            return np.zeros(a.shape, np.float32)
        return (0.4 * rng.normal(size=a.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(fill, meta.unbox(abstract))["params"]
    return params, nn.get_partition_spec(abstract)["params"]


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def np_ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * p["scale"] + p["bias"]


def np_mha(p, xq, xk, xv, mask=None, bias=None):
    q = np.einsum("btf,fhd->bthd", xq, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("btf,fhd->bthd", xk, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("btf,fhd->bthd", xv, p["value"]["kernel"]) + p["value"]["bias"]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = np.where(np.asarray(mask, bool), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", w, v)
    return np.einsum("bthd,hdo->bto", out, p["out"]["kernel"]) + p["out"]["bias"]


def np_mlp(p, x, act=lambda h: np.maximum(h, 0.0)):
    h = act(x @ p["wi"]["kernel"] + p["wi"]["bias"])
    return h @ p["wo"]["kernel"] + p["wo"]["bias"]


def np_encoder_layer(p, x, mask, pos, norm_first):
    def sa(h):
        return np_mha(p["self_attn"], h + pos, h + pos, h, mask)

    if norm_first:
        x = x + sa(np_ln(x, p["norm1"]))
        return x + np_mlp(p["mlp"], np_ln(x, p["norm2"]))
    x = np_ln(x + sa(x), p["norm1"])
    return np_ln(x + np_mlp(p["mlp"], x), p["norm2"])


def np_decoder_layer(p, t, m, self_mask, cross_mask, pos, qpos, norm_first, cross_bias=None):
    def sa(h):
        return np_mha(p["self_attn"], h + qpos, h + qpos, h, self_mask)

    def ca(h):
        return np_mha(p["cross_attn"], h + qpos, m + pos, m, cross_mask, cross_bias)

    if norm_first:
        t = t + sa(np_ln(t, p["norm1"]))
        t = t + ca(np_ln(t, p["norm2"]))
        return t + np_mlp(p["mlp"], np_ln(t, p["norm3"]))
    t = np_ln(t + sa(t), p["norm1"])
    t = np_ln(t + ca(t), p["norm2"])
    return np_ln(t + np_mlp(p["mlp"], t), p["norm3"])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)

    def f32(*shape):
        return rng.normal(size=shape).astype(np.float32)

    mem_valid = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], bool)
    return {
        "src": f32(B, S, D),
        "tgt": f32(B, T, D),
        "pos": f32(B, S, D),
        "qpos": f32(1, T, D),
        "mem_valid": mem_valid,
        "pad": mem_valid[:, None, None, :],
        "causal": np.tril(np.ones((T, T), bool))[None, None],
    }


def test_encoder_layer_pre_and_post_ln_match_numpy(data):
    x, pos, pad = data["src"], data["pos"], data["pad"]
    post = TransformerEncoderLayer(**SMALL)
    pre = TransformerEncoderLayer(**SMALL, norm_first=True)
    params, _ = random_params(post, x)
    run = jax.jit(
        lambda p: (post.apply({"params": p}, x, pad, pos), pre.apply({"params": p}, x, pad, pos))
    )
    out_post, out_pre = run(params)
    for out, norm_first in ((out_post, False), (out_pre, True)):
        ref = np_encoder_layer(f64(params), x.astype(np.float64), pad, pos, norm_first)
        assert out.shape == (B, S, D)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(out_post, out_pre, atol=1e-2)


@pytest.mark.slow
def test_decoder_layer_pre_and_post_ln_match_numpy(data):
    tgt, mem, pos, qpos = data["tgt"], data["src"], data["pos"], data["qpos"]
    self_mask, cross_mask = data["causal"], data["pad"]
    post = TransformerDecoderLayer(**SMALL)
    pre = TransformerDecoderLayer(**SMALL, norm_first=True)
    params, _ = random_params(post, tgt, mem)
    args = (tgt, mem, self_mask, cross_mask, pos, qpos)
    run = jax.jit(lambda p: (post.apply({"params": p}, *args), pre.apply({"params": p}, *args)))
    for out, norm_first in zip(run(params), (False, True)):
        ref = np_decoder_layer(f64(params), *f64(args[:2]), *args[2:], norm_first)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)

    bias = np.random.default_rng(3).normal(size=(B, NHEAD, T, S)).astype(np.float32) * 2.0
    for layer, norm_first in ((post, False), (pre, True)):  # cross_bias: added to the logits
        out = jax.jit(lambda p, b: layer.apply({"params": p}, *args, cross_bias=b))(params, bias)
        ref = np_decoder_layer(f64(params), *f64(args[:2]), *args[2:], norm_first, bias)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_mlp_block_gelu_matches_numpy(data):
    x = data["src"]
    mlp = MlpBlock(dim_feedforward=FF, activation="gelu")
    params, specs = random_params(mlp, x)
    assert tuple(specs["wi"]["kernel"]) == ("embed", "mlp")
    assert tuple(specs["wo"]["kernel"]) == ("mlp", "embed")
    out = jax.jit(lambda p: mlp.apply({"params": p}, x))(params)

    def gelu(h):
        return 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))

    np.testing.assert_allclose(
        out, np_mlp(f64(params), x.astype(np.float64), gelu), rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow
def test_encoder_stack_specs_post_ln_and_dropout(data):
    x, pad = data["src"], data["pad"]
    enc = TransformerEncoder(num_layers=2, **SMALL, dropout=0.3)
    params, specs = random_params(enc, x)
    assert "norm" not in params
    _, pre_specs = random_params(TransformerEncoder(num_layers=2, **SMALL, norm_first=True), x)
    assert tuple(pre_specs["norm"]["scale"]) == ("embed",)
    layer = specs["layers_1"]
    assert tuple(layer["self_attn"]["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(layer["self_attn"]["out"]["kernel"]) == ("heads", "kv", "embed")
    assert tuple(layer["norm2"]["bias"]) == ("embed",)
    assert all(len(tuple(s)) > 0 for s in jax.tree.leaves(specs, is_leaf=lambda s: s is not None))

    @jax.jit
    def run(key):
        train = enc.apply({"params": params}, x, pad, deterministic=False, rngs={"dropout": key})
        return train, enc.apply({"params": params}, x, pad)

    # unsafe_rbg keys only make the CPU compile faster; any key impl works.
    a, eval_out = run(jax.random.key(1, impl="unsafe_rbg"))
    b, _ = run(jax.random.key(2, impl="unsafe_rbg"))
    p = f64(params)
    ref = x.astype(np.float64)
    for i in range(2):
        ref = np_encoder_layer(p[f"layers_{i}"], ref, pad, 0.0, False)
    assert eval_out.shape == (B, S, D)
    np.testing.assert_allclose(eval_out, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(eval_out.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(eval_out.std(-1), 1.0, atol=1e-4)
    assert not np.allclose(a, eval_out, atol=1e-3)
    assert not np.allclose(a, b, atol=1e-3)


def test_decoder_causal_padding_and_intermediate(data):
    tgt, mem, pos, qpos = data["tgt"], data["src"], data["pos"], data["qpos"]
    self_mask, cross_mask, mem_valid = data["causal"], data["pad"], data["mem_valid"]
    dec = TransformerDecoder(num_layers=2, **SMALL, final_norm=True, return_intermediate=True)
    params, specs = random_params(dec, tgt, mem)
    assert tuple(specs["layers_0"]["cross_attn"]["key"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(specs["norm"]["scale"]) == ("embed",)
    run = jax.jit(
        lambda t, m: dec.apply({"params": params}, t, m, self_mask, cross_mask, pos, qpos)
    )
    base = run(tgt, mem)
    assert base.shape == (2, B, T, D)

    p = f64(params)
    h = tgt.astype(np.float64)
    for i in range(2):
        h = np_decoder_layer(p[f"layers_{i}"], h, mem, self_mask, cross_mask, pos, qpos, False)
        np.testing.assert_allclose(base[i], np_ln(h, p["norm"]), rtol=1e-4, atol=1e-4)

    future = tgt.copy()
    future[:, 2:] += 1.0
    moved = run(future, mem)
    np.testing.assert_allclose(moved[:, :, :2], base[:, :, :2], rtol=1e-5, atol=1e-5)
    assert not np.allclose(moved[:, :, 2:], base[:, :, 2:], atol=1e-3)

    padded = mem.copy()
    padded[~mem_valid] += 3.0
    np.testing.assert_allclose(run(tgt, padded), base, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_decoder_decode_cache_matches_causal_decoder(data):
    """Incremental decoding (self-attention cache, cross-attention recomputed) equals the causal
    decoder position by position, with query positions and memory padding."""
    tgt, mem, pos, qpos = data["tgt"], data["src"], data["pos"], data["qpos"]
    causal, cross_mask = data["causal"], data["pad"]
    dec = TransformerDecoder(num_layers=2, **SMALL, final_norm=True)
    params, _ = random_params(dec, tgt, mem)
    full = jax.jit(lambda t: dec.apply({"params": params}, t, mem, causal, cross_mask, pos, qpos))

    def create(t):
        return dec.apply({"params": params}, t, mem, causal, cross_mask, pos, qpos, decode=True,
                         mutable=["cache"])[1]["cache"]

    cache = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(create, tgt))
    assert set(cache["layers_1"]) == {"self_attn"}  # cross-attention is not cached

    @jax.jit
    def step(cache, t_i, qpos_i):
        out, state = dec.apply({"params": params, "cache": cache}, t_i, mem, None, cross_mask,
                               pos, qpos_i, decode=True, mutable=["cache"])
        return state["cache"], out

    outs = []
    for i in range(T):
        cache, out = step(cache, tgt[:, i : i + 1], qpos[:, i : i + 1])
        outs.append(out)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full(tgt), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_attention_implementation_reaches_dot_product_attention():
    """"xla" equals the default; "cudnn" reaches jax.nn.dot_product_attention, which refuses it
    on a CPU (float32, no cuDNN), so the stack passes the choice down to its layers."""
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    stack = functools.partial(TransformerEncoder, num_layers=2, d_model=8, nhead=2,
                              dim_feedforward=16, dropout=0.0)
    variables = stack().init(jax.random.key(0), x)
    np.testing.assert_array_equal(stack(attention_implementation="xla").apply(variables, x),
                                  stack().apply(variables, x))
    with pytest.raises(Exception, match="(?i)cudnn|gpu|cuda|dtype"):
        stack(attention_implementation="cudnn").apply(variables, x)
