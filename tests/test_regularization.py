"""Tests for mlx_research.nn.regularization against numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlx_research.nn.regularization import (
    DEFAULT_EXCLUDE,
    Dropout,
    decay_mask,
    dropout,
    l1_penalty,
    l2_penalty,
)


def _tree():
    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return {
        "encoder": {
            "layer_0": {"attn": {"query": {"kernel": arr(3, 2), "bias": arr(2)}}},
            "LayerNorm_0": {"scale": arr(3), "bias": arr(3), "gain": arr(3)},
            "normal_memory": {"kernel": arr(2, 2)},
        },
        "head": {"kernel": arr(2, 4), "scale": arr(4)},
    }


EXPECTED_DEFAULT_MASK = {
    "encoder": {
        "layer_0": {"attn": {"query": {"kernel": True, "bias": False}}},
        "LayerNorm_0": {"scale": False, "bias": False, "gain": False},
        "normal_memory": {"kernel": True},
    },
    "head": {"kernel": True, "scale": False},
}


def _np_sums(tree, paths):
    """float64 (sum |w|, 0.5 * sum w^2) over the leaves at the "/"-joined paths."""
    leaves = []
    for path in paths:
        node = tree
        for part in path.split("/"):
            node = node[part]
        leaves.append(np.asarray(node, np.float64))
    return sum(np.abs(w).sum() for w in leaves), 0.5 * sum((w**2).sum() for w in leaves)


def test_decay_mask_default_structure_and_values():
    params = _tree()
    mask = decay_mask(params)
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    assert mask == EXPECTED_DEFAULT_MASK
    assert decay_mask(params, exclude=None) == jax.tree.map(lambda _: True, params)


def test_penalties_match_numpy_with_include_and_exclude():
    params = _tree()
    query = "encoder/layer_0/attn/query"
    cases = [
        ({}, [f"{query}/kernel", "encoder/normal_memory/kernel", "head/kernel"]),
        ({"include": [r"^encoder/"]}, [f"{query}/kernel", "encoder/normal_memory/kernel"]),
        ({"include": [r"attn"], "exclude": None}, [f"{query}/kernel", f"{query}/bias"]),
        ({"exclude": [*DEFAULT_EXCLUDE, r"memory"]}, [f"{query}/kernel", "head/kernel"]),
        ({"include": [r"Norm_0/(scale|gain)"], "exclude": None},
         ["encoder/LayerNorm_0/scale", "encoder/LayerNorm_0/gain"]),
        ({"include": [r"nothing_matches"]}, []),
    ]
    for kwargs, paths in cases:
        l1, l2 = jax.jit(lambda p, kw=kwargs: (l1_penalty(p, **kw), l2_penalty(p, **kw)))(params)
        l1_ref, l2_ref = _np_sums(params, paths)
        np.testing.assert_allclose(float(l1), l1_ref, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(float(l2), l2_ref, rtol=1e-6, atol=1e-12)


def test_penalty_gradients_are_sign_and_weight():
    params = _tree()
    mask = decay_mask(params)
    g1, g2 = jax.jit(lambda p: (jax.grad(l1_penalty)(p), jax.grad(l2_penalty)(p)))(params)
    expected2 = jax.tree.map(lambda m, w: np.asarray(w) if m else np.zeros(w.shape), mask, params)
    expected1 = jax.tree.map(lambda m, w: np.sign(np.asarray(w)) if m else np.zeros(w.shape), mask, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6), g2, expected2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6), g1, expected1)


def test_l1_gradient_is_zero_at_zero():
    params = {"dense": {"kernel": jnp.array([-2.0, 0.0, 3.0])}}
    grad = jax.grad(l1_penalty)(params)["dense"]["kernel"]
    np.testing.assert_array_equal(np.asarray(grad), [-1.0, 0.0, 1.0])
    assert float(l1_penalty(params)) == 5.0


def test_decay_mask_drives_optax_weight_decay():
    params = _tree()
    tx = optax.add_decayed_weights(0.1, mask=decay_mask(params))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    expected = jax.tree.map(
        lambda m, w: 0.1 * np.asarray(w) if m else np.zeros(w.shape), EXPECTED_DEFAULT_MASK, params
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6), updates, expected)


class _Boxed(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(
            3,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("mlp",)),
            name="proj",
        )(x)
        return nn.LayerNorm(
            scale_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("mlp",)),
            name="final_norm",
        )(x)


def test_boxed_params_are_handled_transparently():
    boxed = jax.jit(_Boxed().init)(jax.random.key(0), jnp.ones((1, 2)))["params"]
    assert isinstance(boxed["proj"]["kernel"], nn.LogicallyPartitioned)
    unboxed = nn.meta.unbox(boxed)
    kernel = np.asarray(unboxed["proj"]["kernel"], np.float64)
    expected_mask = {"proj": {"kernel": True, "bias": False}, "final_norm": {"scale": False, "bias": False}}
    assert decay_mask(boxed) == expected_mask
    tx = optax.add_decayed_weights(0.5, mask=decay_mask(boxed))

    def penalties_and_decay(p):
        decay, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
        return l1_penalty(p), l2_penalty(p), l1_penalty(p, include=["norm/scale"], exclude=None), decay

    l1, l2, l1_scale, decay = jax.jit(penalties_and_decay)(boxed)
    decay = nn.meta.unbox(decay)
    np.testing.assert_allclose(np.asarray(decay["proj"]["kernel"]), 0.5 * kernel, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(decay["proj"]["bias"]), 0.0)
    np.testing.assert_allclose(float(l1), np.abs(kernel).sum(), rtol=1e-6)
    np.testing.assert_allclose(float(l2), 0.5 * (kernel**2).sum(), rtol=1e-6)
    scale = np.asarray(unboxed["final_norm"]["scale"], np.float64)
    np.testing.assert_allclose(float(l1_scale), np.abs(scale).sum(), rtol=1e-6)


def test_dropout_train_statistics_and_edges():
    rate = 0.3
    x = jnp.ones((100, 100), jnp.float32)
    out = np.asarray(jax.jit(dropout, static_argnums=(1, 3))(x, rate, jax.random.key(0)))
    kept = out[out != 0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - rate), rtol=1e-6)
    assert abs((out == 0).mean() - rate) < 0.02
    assert abs(out.mean() - 1.0) < 0.03
    np.testing.assert_array_equal(np.asarray(dropout(x, rate, None, deterministic=True)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(dropout(x, 0.0, None)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(dropout(x, 1.0, jax.random.key(0))), np.zeros(x.shape))
    grad = jax.grad(lambda v: jnp.sum(dropout(v, 1.0, jax.random.key(0))))(x)
    assert np.all(np.asarray(grad) == 0.0)
    with pytest.raises(ValueError, match="rate"):
        dropout(x, 1.5, jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        dropout(x, 0.5, None)


def test_flax_dropout_train_and_eval():
    rate = 0.25
    x = jnp.full((50, 200), 2.0, jnp.float32)
    layer = Dropout(rate=rate)
    assert Dropout is nn.Dropout
    np.testing.assert_array_equal(np.asarray(layer.apply({}, x, deterministic=True)), np.asarray(x))
    train = jax.jit(lambda k: layer.apply({}, x, deterministic=False, rngs={"dropout": k}))
    out = np.asarray(train(jax.random.key(1)))
    np.testing.assert_allclose(out[out != 0], 2.0 / (1.0 - rate), rtol=1e-6)
    assert abs((out == 0).mean() - rate) < 0.02
    assert abs(out.mean() - 2.0) < 0.06
