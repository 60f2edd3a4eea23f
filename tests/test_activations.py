"""Tests for mlx_research.nn.activations against float64 numpy/scipy formulas."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from mlx_research.nn.activations import (
    GatedLinearUnit,
    PReLU,
    RReLU,
    elu,
    gelu,
    get_activation,
    glu,
    leaky_relu,
    relu,
    rrelu,
    sigmoid,
    silu,
    swish,
    tanh,
)

X = np.array([-30.0, -3.0, -1.5, -0.5, 0.0, 0.25, 1.0, 2.5, 30.0])
SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


NUMPY_REFERENCES = [
    (sigmoid, {}, _np_sigmoid),
    (tanh, {}, np.tanh),
    (relu, {}, lambda x: np.maximum(x, 0.0)),
    (leaky_relu, {}, lambda x: np.where(x > 0, x, 0.01 * x)),
    (leaky_relu, {"negative_slope": 0.2}, lambda x: np.where(x > 0, x, 0.2 * x)),
    (elu, {}, lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))),
    (elu, {"alpha": 0.7}, lambda x: np.where(x > 0, x, 0.7 * np.expm1(np.minimum(x, 0.0)))),
    (gelu, {}, lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))),
    (gelu, {"approximate": "tanh"}, _np_gelu_tanh),
    (silu, {}, lambda x: x * _np_sigmoid(x)),
    (rrelu, {}, lambda x: np.where(x > 0, x, (1 / 8 + 1 / 3) / 2 * x)),
]


@pytest.mark.parametrize(("fn", "kwargs", "reference"), NUMPY_REFERENCES)
def test_activation_matches_numpy(fn, kwargs, reference):
    out = jax.jit(lambda x: fn(x, **kwargs))(jnp.asarray(X, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), reference(X), rtol=1e-5, atol=1e-6)


def test_swish_is_silu_and_gelu_rejects_unknown_approximation():
    assert swish is silu
    with pytest.raises(ValueError, match="approximate"):
        gelu(jnp.ones(2), approximate="erf")


def test_gradients_match_closed_forms():
    x = jnp.asarray([-2.0, -0.5, 0.0, 0.5, 2.0], jnp.float32)
    xn = np.asarray(x, np.float64)
    pdf = np.exp(-0.5 * xn**2) / np.sqrt(2.0 * np.pi)
    u = SQRT_2_OVER_PI * (xn + 0.044715 * xn**3)
    gelu_tanh_grad = 0.5 * (1.0 + np.tanh(u)) + 0.5 * xn * (1.0 - np.tanh(u) ** 2) * SQRT_2_OVER_PI * (
        1.0 + 3.0 * 0.044715 * xn**2
    )
    cases = [
        (lambda v: elu(v, 0.7), np.where(xn > 0, 1.0, 0.7 * np.exp(xn))),
        (lambda v: leaky_relu(v, 0.2), np.where(xn > 0, 1.0, 0.2)),
        (gelu, 0.5 * (1.0 + erf(xn / np.sqrt(2.0))) + xn * pdf),
        (lambda v: gelu(v, "tanh"), gelu_tanh_grad),
    ]
    for fn, expected in cases:
        grad = jax.jit(jax.vmap(jax.grad(fn)))(x)
        np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-6)


def test_elu_gradient_finite_for_large_inputs():
    grad = jax.grad(lambda v: jnp.sum(elu(v)))(jnp.asarray([-100.0, 100.0], jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), [0.0, 1.0], atol=1e-30)


def test_glu_gates_first_half_by_second_half():
    x = np.random.default_rng(0).normal(size=(2, 4, 3))
    out = jax.jit(glu, static_argnums=1)(jnp.asarray(x, jnp.float32), 1)
    expected = x[:, :2] * _np_sigmoid(x[:, 2:])
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        glu(jnp.asarray(x, jnp.float32))


def test_rrelu_training_and_evaluation():
    lower, upper = 0.1, 0.4
    x = jnp.concatenate([-jnp.linspace(0.5, 2.0, 200), jnp.linspace(0.1, 1.0, 50)])
    train = jax.jit(lambda v, k: rrelu(v, k, lower, upper, training=True))
    key = jax.random.key(0)
    out = np.asarray(train(x, key))
    slopes = out[:200] / np.asarray(x[:200])
    assert np.all((slopes >= lower - 1e-6) & (slopes <= upper + 1e-6))
    assert len(np.unique(np.round(slopes, 6))) > 150
    assert slopes.std() > 0.05
    np.testing.assert_array_equal(out[200:], np.asarray(x[200:]))
    np.testing.assert_array_equal(out, np.asarray(train(x, key)))
    assert not np.array_equal(out, np.asarray(train(x, jax.random.key(1))))
    evaluated = rrelu(x, lower=lower, upper=upper)
    expected = (lower + upper) / 2 * np.asarray(x[:200])
    np.testing.assert_allclose(np.asarray(evaluated[:200]), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="key"):
        rrelu(x, training=True)


def test_get_activation_lookup():
    x = jnp.asarray([-1.0, 0.5], jnp.float32)
    assert get_activation("ReLU") is relu
    expected = _np_gelu_tanh(np.asarray(x, np.float64))
    np.testing.assert_allclose(np.asarray(get_activation("gelu_tanh")(x)), expected, rtol=1e-6)
    for name in ("identity", "linear"):
        np.testing.assert_array_equal(np.asarray(get_activation(name)(x)), np.asarray(x))
    with pytest.raises(ValueError, match="valid names:.*gelu_tanh.*swish"):
        get_activation("mish")


def test_prelu_shapes_values_and_slope_gradient():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4)), jnp.float32)
    shared = PReLU()
    params = shared.init(jax.random.key(0), x)
    np.testing.assert_array_equal(np.asarray(params["params"]["weight"]), [0.25])
    per_channel = PReLU(num_parameters=4, negative_slope_init=0.1)
    pc_params = per_channel.init(jax.random.key(0), x)
    assert pc_params["params"]["weight"].shape == (4,)
    w = jnp.asarray([0.1, 0.2, 0.3, 0.4], jnp.float32)
    out = jax.jit(per_channel.apply)({"params": {"weight": w}}, x)
    xn = np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(out), np.where(xn > 0, xn, np.asarray(w) * xn), rtol=1e-6)
    grad = jax.grad(lambda p: jnp.sum(per_channel.apply(p, x)))({"params": {"weight": w}})
    expected = np.where(xn > 0, 0.0, xn).sum(axis=(0, 1))
    np.testing.assert_allclose(np.asarray(grad["params"]["weight"]), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="num_parameters"):
        PReLU(num_parameters=3).init(jax.random.key(0), x)


def test_rrelu_module_train_and_eval():
    x = -jnp.linspace(0.5, 1.5, 64)
    module = RReLU(lower=0.2, upper=0.3)
    evaluated = module.apply({}, x, deterministic=True)
    np.testing.assert_allclose(np.asarray(evaluated), 0.25 * np.asarray(x), rtol=1e-6)
    train = jax.jit(lambda k: module.apply({}, x, deterministic=False, rngs={"rrelu": k}))
    out = train(jax.random.key(3))
    slopes = np.asarray(out / x)
    assert np.all((slopes >= 0.2 - 1e-6) & (slopes <= 0.3 + 1e-6)) and slopes.std() > 0.01
    np.testing.assert_array_equal(np.asarray(out), np.asarray(train(jax.random.key(3))))
    with pytest.raises(flax.errors.InvalidRngError, match="rrelu"):
        RReLU(deterministic=False).apply({}, x)


@pytest.mark.parametrize(("features", "use_bias"), [(None, True), (5, False)])
def test_gated_linear_unit_formula(features, use_bias):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3)), jnp.float32)
    module = GatedLinearUnit(features=features, use_bias=use_bias)
    variables = module.init(jax.random.key(0), x)
    out = jax.jit(module.apply)(variables, x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    xn = np.asarray(x, np.float64)

    def dense(name):
        return xn @ p[name]["kernel"] + (p[name]["bias"] if use_bias else 0.0)

    value = xn if features is None else dense("value")
    assert ("bias" in p["gate"]) == use_bias
    assert ("value" in p) == (features is not None)
    assert out.shape == (2, 3 if features is None else features)
    np.testing.assert_allclose(np.asarray(out), value * _np_sigmoid(dense("gate")), rtol=1e-5, atol=1e-6)
