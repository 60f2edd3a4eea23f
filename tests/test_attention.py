"""Tests for mlx_research.nn.attention against float64 numpy formulas."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import meta

from mlx_research.nn.attention import (
    MultiHeadAttention,
    combine_masks,
    make_causal_mask,
    make_padding_mask,
    scaled_dot_product_attention,
)

B, TQ, TK, H, D = 2, 3, 4, 2, 4


def dropout_key(seed: int) -> jax.Array:
    """A PRNG key whose bernoulli compiles fast on CPU (any key impl works)."""
    return jax.random.key(seed, impl="unsafe_rbg")


def np_attention(q, k, v, mask=None, bias=None, scale=None, causal=False):
    """float64 softmax(QK^T*scale + bias) V with boolean mask; fully masked rows -> 0."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    allowed = np.ones(logits.shape, bool)
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask, bool), logits.shape)
    if causal:
        allowed &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(allowed, logits, -np.inf)
    row_max = np.max(logits, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.exp(logits - row_max)
    denom = e.sum(-1, keepdims=True)
    w = np.where(denom > 0, e / np.where(denom > 0, denom, 1.0), 0.0)
    return np.einsum("bhqk,bkhd->bqhd", w, v), w


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(B, TQ, H, D)).astype(np.float32)
    k = rng.normal(size=(B, TK, H, D)).astype(np.float32)
    v = rng.normal(size=(B, TK, H, D)).astype(np.float32)
    mask = rng.random((B, 1, TQ, TK)) > 0.3
    mask[..., 0] = True
    bias = rng.normal(size=(1, H, TQ, TK)).astype(np.float32)
    return q, k, v, mask, bias


@pytest.mark.parametrize(
    "use_mask,use_bias,causal,scale",
    [(False, False, False, None), (True, True, False, 0.7), (False, True, True, None)],
)
def test_sdpa_matches_numpy_on_both_paths(qkv, use_mask, use_bias, causal, scale):
    q, k, v, mask, bias = qkv
    kwargs = {
        "mask": mask if use_mask else None,
        "bias": bias if use_bias else None,
        "is_causal": causal,
        "scale": scale,
    }
    ref_out, ref_w = np_attention(q, k, v, kwargs["mask"], kwargs["bias"], scale, causal)

    @jax.jit
    def both_paths(q, k, v):
        fast = scaled_dot_product_attention(q, k, v, **kwargs)
        return fast, *scaled_dot_product_attention(q, k, v, return_weights=True, **kwargs)

    fast, slow, weights = both_paths(q, k, v)
    np.testing.assert_allclose(fast, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(slow, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights, ref_w, rtol=1e-5, atol=1e-6)
    assert weights.shape == (B, H, TQ, TK)


def test_fully_masked_row_gives_zeros_and_finite_grads(qkv):
    q, k, v, _, bias = qkv
    mask = np.ones((B, 1, TQ, TK), bool)
    mask[0, :, 1, :] = False  # query 1 of batch 0 sees nothing

    def loss(q, k, v, bias, return_weights):
        out = scaled_dot_product_attention(q, k, v, mask, bias, return_weights=return_weights)
        out = out[0] if return_weights else out
        return jnp.sum(out**2), out

    grad_fn = jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
    both = jax.jit(lambda *a: (grad_fn(*a, False), grad_fn(*a, True)))
    for grads, out in both(q, k, v, bias):
        np.testing.assert_array_equal(out[0, 1], 0.0)
        np.testing.assert_allclose(out, np_attention(q, k, v, mask, bias)[0], rtol=1e-5, atol=1e-5)
        for g in grads:
            assert np.all(np.isfinite(g))
        np.testing.assert_array_equal(grads[0][0, 1], 0.0)


def test_padding_mask_excludes_padded_keys(qkv):
    q, k, v, _, _ = qkv
    k_valid = np.array([[True, True, False, False], [True, True, True, False]])
    k2, v2 = k.copy(), v.copy()
    k2[~k_valid] += 5.0
    v2[~k_valid] -= 7.0

    @jax.jit
    def outputs(k, v):
        mask = make_padding_mask(None, k_valid)
        fast = scaled_dot_product_attention(q, k, v, mask)
        slow = scaled_dot_product_attention(q, k, v, mask, return_weights=True)[0]
        return fast, slow, scaled_dot_product_attention(q, k, v)

    fast, slow, unmasked = outputs(k, v)
    fast2, slow2, unmasked2 = outputs(k2, v2)
    np.testing.assert_allclose(fast2, fast, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(slow, fast, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(slow2, fast, rtol=1e-6, atol=1e-6)
    assert not np.allclose(unmasked2, unmasked, atol=1e-3)


def test_dropout_train_vs_eval(qkv):
    q, k, v, mask, _ = qkv
    rate = 0.5

    @jax.jit
    def run(key):
        eval_out = scaled_dot_product_attention(
            q, k, v, mask, dropout_rate=rate, deterministic=True
        )
        train = scaled_dot_product_attention(
            q,
            k,
            v,
            mask,
            dropout_rate=rate,
            dropout_rng=key,
            deterministic=False,
            return_weights=True,
        )
        return eval_out, *train

    eval_out, out, w = run(dropout_key(0))
    np.testing.assert_allclose(eval_out, np_attention(q, k, v, mask)[0], rtol=1e-5, atol=1e-5)
    _, w_ref = np_attention(q, k, v, mask)
    kept = np.asarray(w) != 0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(np.asarray(w)[kept], w_ref[kept] / (1 - rate), rtol=1e-5)
    np.testing.assert_allclose(out, np.einsum("bhqk,bkhd->bqhd", w, v), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="dropout_rng"):
        scaled_dot_product_attention(q, k, v, dropout_rate=rate, deterministic=False)


def test_mask_helpers():
    q_valid = np.array([[True, False]])
    k_valid = np.array([[True, True, False]])
    m = make_padding_mask(q_valid, k_valid)
    assert m.shape == (1, 1, 2, 3) and m.dtype == jnp.bool_
    np.testing.assert_array_equal(m[0, 0], q_valid[0][:, None] & k_valid[0][None, :])
    assert make_padding_mask(None, k_valid).shape == (1, 1, 1, 3)
    c = make_causal_mask(3)
    np.testing.assert_array_equal(c[0, 0], np.tril(np.ones((3, 3), bool)))
    np.testing.assert_array_equal(
        combine_masks(None, make_padding_mask(None, k_valid), c), c & k_valid[:, None, None, :]
    )
    assert combine_masks(None, None) is None


def random_params(module, *args, seed=0, **kwargs):
    """Random float32 params with the module's shapes (eval_shape: no init compile)."""
    abstract = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.key(0), *args)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda a: (0.5 * rng.normal(size=a.shape)).astype(np.float32), meta.unbox(abstract)
    )["params"]
    return params, nn.get_partition_spec(abstract)["params"]


def np_mha(params, xq, xkv, xv, num_heads, mask=None):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def proj(name, x):
        kernel = p[name]["kernel"]
        y = np.einsum("btf,fhd->bthd", x, kernel) + p[name]["bias"]
        return y

    out, w = np_attention(proj("query", xq), proj("key", xkv), proj("value", xv), mask)
    return np.einsum("bthd,hdo->bto", out, p["out"]["kernel"]) + p["out"]["bias"], w


def test_mha_matches_numpy_and_logical_names():
    rng = np.random.default_rng(1)
    xq = rng.normal(size=(B, TQ, 6)).astype(np.float32)
    xkv = rng.normal(size=(B, TK, 5)).astype(np.float32)
    xv = rng.normal(size=(B, TK, 5)).astype(np.float32)
    mask = make_padding_mask(None, np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool))
    mha = MultiHeadAttention(num_heads=2, qkv_features=8, out_features=3)
    params, specs = random_params(mha, xq, xkv)
    assert tuple(specs["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(specs["value"]["bias"]) == ("heads", "kv")
    assert tuple(specs["out"]["kernel"]) == ("heads", "kv", "embed")
    assert tuple(specs["out"]["bias"]) == ("embed",)
    assert params["query"]["kernel"].shape == (6, 2, 4)
    assert params["key"]["kernel"].shape == (5, 2, 4)
    out, w = jax.jit(
        lambda p: mha.apply({"params": p}, xq, xkv, mask, inputs_v=xv, return_weights=True)
    )(params)
    ref, ref_w = np_mha(params, xq, xkv, xv, 2, mask)
    assert out.shape == (B, TQ, 3)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w, ref_w, rtol=1e-4, atol=1e-6)


def test_mha_rejects_indivisible_heads():
    x = jnp.ones((1, 2, 6))
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(MultiHeadAttention(num_heads=4).init, jax.random.key(0), x)


def test_mha_causal_output_independent_of_future_inputs():
    rng = np.random.default_rng(2)
    t = 5
    x = rng.normal(size=(1, t, 8)).astype(np.float32)
    mha = MultiHeadAttention(num_heads=2)
    params, _ = random_params(mha, x)
    apply = jax.jit(lambda x: mha.apply({"params": params}, x, mask=make_causal_mask(t)))
    base = apply(x)
    x2 = x.copy()
    x2[:, 3:] += rng.normal(size=(1, 2, 8)).astype(np.float32)
    moved = apply(x2)
    np.testing.assert_allclose(moved[:, :3], base[:, :3], rtol=1e-6, atol=1e-6)
    assert not np.allclose(moved[:, 3:], base[:, 3:], atol=1e-3)


def test_mha_dropout_uses_dropout_rng():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 4, 8)), jnp.float32)
    mha = MultiHeadAttention(num_heads=2, dropout_rate=0.5)
    variables = {"params": random_params(mha, x, deterministic=True)[0]}

    @jax.jit
    def run(key):
        train = mha.apply(variables, x, deterministic=False, rngs={"dropout": key})
        return train, mha.apply(variables, x, deterministic=True)

    a, eval_a = run(dropout_key(1))
    b, eval_b = run(dropout_key(2))
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(a, b)
    assert not np.allclose(a, eval_a)


@pytest.mark.slow
def test_mha_decode_cache_matches_causal_attention():
    """One position per call with the key/value cache equals full causal self-attention."""
    rng = np.random.default_rng(4)
    t = 5
    x = rng.normal(size=(B, t, 8)).astype(np.float32)
    mha = MultiHeadAttention(num_heads=2)
    params, _ = random_params(mha, x)
    full = mha.apply({"params": params}, x, mask=make_causal_mask(t))

    def create(x):
        return mha.apply({"params": params}, x, decode=True, mutable=["cache"])[1]["cache"]

    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(create, x))
    assert cache["cached_key"].shape == cache["cached_value"].shape == (B, t, 2, 4)
    assert cache["cache_index"].shape == ()

    @jax.jit
    def step(cache, x_t):
        out, state = mha.apply({"params": params, "cache": cache}, x_t, decode=True,
                               mutable=["cache"])
        return state["cache"], out

    outs = []
    for i in range(t):
        cache, out = step(cache, x[:, i : i + 1])
        outs.append(out)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)
    assert int(cache["cache_index"]) == t
    with pytest.raises(ValueError, match="one position"):
        mha.apply({"params": params, "cache": cache}, x[:, :2], decode=True, mutable=["cache"])
