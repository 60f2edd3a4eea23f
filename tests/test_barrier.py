"""Tests for mlx_research.nn.barrier (gradient barriers kept through XLA CPU's fusion)."""

import jax
import jax.numpy as jnp
import numpy as np

from mlx_research.nn.barrier import CPU_COMPILER_OPTIONS, grad_barrier


def _loss(x, barrier):
    h = jnp.tanh(x) * 1.5
    h = grad_barrier(h) if barrier else h
    return jnp.sum(jnp.sin(h) ** 2 @ x.T)


def test_grad_barrier_is_the_identity_in_value_gradient_and_tangent():
    x = jax.random.normal(jax.random.key(0), (6, 4))
    t = jax.random.normal(jax.random.key(1), (6, 4))
    np.testing.assert_array_equal(grad_barrier(x), x)
    np.testing.assert_allclose(jax.grad(_loss)(x, True), jax.grad(_loss)(x, False), rtol=1e-6)
    np.testing.assert_allclose(jax.jvp(lambda v: _loss(v, True), (x,), (t,))[1],
                               jax.jvp(lambda v: _loss(v, False), (x,), (t,))[1], rtol=1e-6)


def test_barrier_reaches_the_compiled_backward_only_with_the_cpu_options():
    """XLA CPU drops optimization barriers before fusion unless the options keep them."""
    grad = jax.jit(jax.grad(_loss), static_argnums=1)
    x = jnp.ones((8, 4))
    assert "opt-barrier" not in grad.lower(x, True).compile().as_text()
    kept = grad.lower(x, True).compile(CPU_COMPILER_OPTIONS).as_text()
    assert "opt-barrier" in kept
    assert "opt-barrier" not in grad.lower(x, False).compile(CPU_COMPILER_OPTIONS).as_text()
