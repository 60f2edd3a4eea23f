"""`grad_barrier`: the identity, whose backward pass computes its cotangent once.

XLA fuses cheap elementwise producers into each of their consumers, recomputing them. In the
backward pass of a residual network the cotangent of the residual stream is such a chain (the
LayerNorm backward and dropout mask of every later layer), and XLA on CPU fuses the whole chain
into every transposing copy the weight gradients need: in the suite's Transformer step those
copies took 17% of the time. Passing the cotangent through ``jax.lax.optimization_barrier``
makes XLA materialise it instead.

XLA's CPU pipeline drops optimization barriers before fusion (its ``cse_barrier_expander``
pass) unless a compilation disables that pass with `CPU_COMPILER_OPTIONS`, as the trainer's
train step does on CPU; GPU and TPU keep barriers through fusion by default (their speed with
the barriers is not measured yet: no GPU or TPU was at hand).
"""

import jax

CPU_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "cse_barrier_expander"}
"""``jax.jit(..., compiler_options=...)`` that keep optimization barriers through fusion on CPU."""


@jax.custom_jvp
def grad_barrier(x: jax.Array) -> jax.Array:
    """Returns ``x``; tangents (and so cotangents) go through ``jax.lax.optimization_barrier``."""
    return x


@grad_barrier.defjvp
def _grad_barrier_jvp(primals, tangents):
    return primals[0], jax.lax.optimization_barrier(tangents[0])
