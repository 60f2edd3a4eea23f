"""Normalization layers vs float64 numpy formulas with torch defaults (eps=1e-5, momentum 0.1)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlx_research.nn.normalization import (
    BatchNorm,
    FrozenBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    get_norm,
)

EPS = 1e-5


def _input(shape, seed=0, std=1e-3):
    # std 1e-3 -> variances ~1e-6, so eps=1e-5 dominates and a wrong eps (flax's 1e-6) fails.
    rng = np.random.default_rng(seed)
    return (rng.normal(0.5 * std, std, size=shape)).astype(np.float32)


def _affine(c, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 0.5, c).astype(np.float32), rng.normal(0.0, 0.5, c).astype(np.float32)


def _init(layer, x, **kwargs):
    # Jitting a whole init/apply compiles once, far faster than op-by-op eager dispatch.
    return jax.jit(lambda x: layer.init(jax.random.key(0), x, **kwargs))(x)


def _apply(layer, variables, x, **kwargs):
    return jax.jit(lambda v, x: layer.apply(v, x, **kwargs))(variables, x)


def _with_affine(variables, scale, bias):
    params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    return {**variables, "params": params}


def test_batch_norm_train_uses_batch_stats_and_updates_unbiased_running_var():
    x = _input((4, 3, 2, 5))
    scale, bias = _affine(5)
    layer = BatchNorm()
    variables = _with_affine(_init(layer, x, use_running_average=True), scale, bias)
    # A running var on the scale of the batch var (~1e-6) makes the n / (n - 1) factor visible.
    old_var = np.full(5, 2e-6, np.float32)
    variables["batch_stats"] = {"mean": jnp.zeros(5), "var": jnp.asarray(old_var)}
    y, updates = _apply(layer, variables, x, use_running_average=False, mutable="batch_stats")

    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 1, 2))
    var = x64.var(axis=(0, 1, 2))  # biased, used to normalize
    expected = (x64 - mean) / np.sqrt(var + EPS) * scale + bias
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)

    n = 4 * 3 * 2
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(stats["var"], 0.9 * old_var + 0.1 * var * n / (n - 1), rtol=1e-5)


def test_batch_norm_eval_uses_running_stats_after_one_update():
    x = _input((3, 4, 4, 2), std=1.0)
    x_eval = _input((2, 4, 4, 2), seed=5, std=1.0)
    scale, bias = _affine(2)
    layer = BatchNorm()
    variables = _with_affine(_init(layer, x, use_running_average=True), scale, bias)
    _, updates = _apply(layer, variables, x, use_running_average=False, mutable="batch_stats")
    variables = {**variables, **updates}
    y = _apply(layer, variables, x_eval, use_running_average=True)

    x64 = x.astype(np.float64)
    running_mean = 0.9 * 0.0 + 0.1 * x64.mean(axis=(0, 1, 2))
    running_var = 0.9 * 1.0 + 0.1 * x64.var(axis=(0, 1, 2), ddof=1)
    expected = (x_eval - running_mean) / np.sqrt(running_var + EPS) * scale + bias
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)

    _, unchanged = _apply(layer, variables, x_eval, use_running_average=True, mutable="batch_stats")
    np.testing.assert_array_equal(unchanged["batch_stats"]["var"], variables["batch_stats"]["var"])


def test_batch_norm_train_rejects_one_value_per_channel():
    x = jnp.ones((1, 1, 1, 3))
    layer = BatchNorm()
    variables = _init(layer, x, use_running_average=True)
    with pytest.raises(ValueError, match="more than 1 value"):
        _apply(layer, variables, x, use_running_average=False, mutable="batch_stats")


def test_instance_norm_matches_torch_defaults():
    x = _input((2, 3, 4, 5))
    layer = InstanceNorm()
    variables = _init(layer, x)
    assert variables == {}  # affine=False, no running stats
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(1, 2), keepdims=True)
    var = x64.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(
        _apply(layer, variables, x), (x64 - mean) / np.sqrt(var + EPS), rtol=1e-4, atol=1e-5
    )


def test_group_norm_with_g_groups():
    x = _input((2, 3, 3, 8))
    scale, bias = _affine(8)
    layer = GroupNorm(num_groups=4)
    variables = _with_affine(_init(layer, x), scale, bias)
    x64 = x.astype(np.float64).reshape(2, 3, 3, 4, 2)
    mean = x64.mean(axis=(1, 2, 4), keepdims=True)
    var = x64.var(axis=(1, 2, 4), keepdims=True)
    expected = ((x64 - mean) / np.sqrt(var + EPS)).reshape(2, 3, 3, 8) * scale + bias
    np.testing.assert_allclose(_apply(layer, variables, x), expected, rtol=1e-4, atol=1e-5)


def test_layer_norm_over_last_axis():
    x = _input((2, 3, 6))
    scale, bias = _affine(6)
    layer = LayerNorm()
    variables = _with_affine(_init(layer, x), scale, bias)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = x64.var(axis=-1, keepdims=True)
    expected = (x64 - mean) / np.sqrt(var + EPS) * scale + bias
    np.testing.assert_allclose(_apply(layer, variables, x), expected, rtol=1e-4, atol=1e-5)


def test_get_norm_builds_each_layer_and_rejects_unknown_names():
    assert isinstance(get_norm("batch", use_running_average=True), BatchNorm)
    assert isinstance(get_norm("layer"), LayerNorm)
    assert isinstance(get_norm("instance"), InstanceNorm)
    assert isinstance(get_norm("frozen_batch"), FrozenBatchNorm)
    group = get_norm("group")
    assert isinstance(group, GroupNorm) and group.num_groups == 32
    assert get_norm("batch").momentum == 0.9 and group.epsilon == EPS
    with pytest.raises(ValueError, match="batch, layer, instance, group, frozen_batch"):
        get_norm("weight")


def test_group_norm_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="does not divide"):
        get_norm("group").init(jax.random.key(0), jnp.ones((1, 2, 2, 48)))


def test_frozen_batch_norm_formula_and_buffers_outside_params():
    x = _input((2, 3, 3, 4), std=1.0)
    layer = FrozenBatchNorm()
    variables = _init(layer, x)
    assert "params" not in variables
    assert set(variables["batch_stats"]) == {"scale", "bias", "mean", "var"}
    np.testing.assert_allclose(_apply(layer, variables, x), x / np.sqrt(1.0 + EPS), rtol=1e-6)

    rng = np.random.default_rng(3)
    stats = {
        "scale": rng.normal(size=4),
        "bias": rng.normal(size=4),
        "mean": rng.normal(size=4),
        "var": rng.uniform(0.5, 2.0, 4),
    }
    frozen = {"batch_stats": {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}}
    expected = (x - stats["mean"]) / np.sqrt(stats["var"] + EPS) * stats["scale"] + stats["bias"]
    y, mutated = _apply(layer, frozen, x, mutable="batch_stats")
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    for k in stats:
        np.testing.assert_array_equal(mutated["batch_stats"][k], frozen["batch_stats"][k])


def test_batch_norm_train_flag_given_at_construction_in_a_module():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            return get_norm("batch", use_running_average=not train)(x)

    x = _input((4, 3), std=1.0)
    variables = Net().init(jax.random.key(0), x, False)
    step = jax.jit(lambda v, x: Net().apply(v, x, True, mutable="batch_stats"))
    _, updates = step(variables, x)
    n = 4
    expected_var = 0.9 + 0.1 * x.astype(np.float64).var(axis=0) * n / (n - 1)
    np.testing.assert_allclose(
        updates["batch_stats"]["BatchNorm_0"]["var"], expected_var, rtol=1e-5
    )


def test_synced_batch_norm_counts_values_across_the_named_axis():
    x = _input((4, 3, 2), std=1.0)  # 4 "devices" x 3 samples x 2 channels
    layer = BatchNorm(axis_name="devices")
    variables = _init(layer, x[0], use_running_average=True)
    step = jax.vmap(
        lambda xi: layer.apply(variables, xi, use_running_average=False, mutable="batch_stats"),
        axis_name="devices",
    )
    y, updates = jax.jit(step)(x)
    flat = x.reshape(12, 2).astype(np.float64)
    expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + EPS)
    np.testing.assert_allclose(np.asarray(y).reshape(12, 2), expected, rtol=1e-5, atol=1e-5)
    expected_var = 0.9 + 0.1 * flat.var(0, ddof=1)  # n = 12 across devices, not 3
    np.testing.assert_allclose(updates["batch_stats"]["var"][0], expected_var, rtol=1e-5)
