"""GPipe pipeline parallelism over the "stage" mesh axis.

The model is cut into S stages of identical structure whose weights are stacked on a leading axis
sharded over the stage axis, so each stage's devices hold one slice. The batch is split into M
micro-batches that flow through the stages like an assembly line: at iteration t, stage s works on
micro-batch t - s. The loop runs M + S - 1 iterations; in S - 1 of them each stage idles (the
bubble), i.e. a fraction (S - 1) / (M + S - 1) of the time, see `bubble_fraction`.

Written by hand because neither jax nor flax ships a pipeline schedule. Backward is jax.grad of the
forward loop (GPipe: all forward micro-batches, then all backward); wrap ``stage_fn`` in
`jax.checkpoint` to keep only stage inputs instead of every intermediate activation.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

StageFn = Callable[[Any, jax.Array], jax.Array]


def bubble_fraction(num_stages: int, num_microbatches: int) -> float:
    """Fraction of a GPipe schedule each stage spends idle: (S - 1) / (M + S - 1)."""
    if num_stages < 1 or num_microbatches < 1:
        raise ValueError(f"need num_stages >= 1 and num_microbatches >= 1, got {num_stages} and "
                         f"{num_microbatches}")
    return (num_stages - 1) / (num_microbatches + num_stages - 1)


def _check_args(stage_params: Any, inputs: jax.Array, num_stages: int,
                num_microbatches: int) -> None:
    if num_microbatches < 1 or inputs.shape[0] % num_microbatches:
        raise ValueError(f"batch size {inputs.shape[0]} is not divisible by num_microbatches="
                         f"{num_microbatches}")
    for path, leaf in jax.tree_util.tree_leaves_with_path(stage_params):
        shape = jnp.shape(leaf)
        if not shape or shape[0] != num_stages:
            raise ValueError(f"stage_params{jax.tree_util.keystr(path)} has shape {shape}; "
                             f"expected a leading axis of size {num_stages} (one slice per stage)")


def _gpipe_loop(stage_fn: StageFn, params: Any, micro: jax.Array, *, num_stages: int,
                stage_axis: str) -> jax.Array:
    """Per-stage body of the pipeline (inside shard_map, manual over the stage axis).

    Args:
      params: this stage's slice of the stacked weights, leaves [1, ...].
      micro: all micro-batches [M, b, ...] (replicated over stages; only stage 0 reads them).

    Returns:
      [M, b, ...] the last stage's outputs, identical on every stage.
    """
    params = jax.tree.map(lambda p: p[0], params)
    num_micro = micro.shape[0]
    stage = lax.axis_index(stage_axis)
    is_first, is_last = stage == 0, stage == num_stages - 1
    shift_right = [(s, (s + 1) % num_stages) for s in range(num_stages)]

    def step(state: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = jnp.where(is_first, micro[jnp.minimum(t, num_micro - 1)], state)
        y = stage_fn(params, x)
        if y.shape != x.shape or y.dtype != x.dtype:
            raise ValueError(f"stage_fn must map {x.shape} {x.dtype} to the same shape and dtype, "
                             f"got {y.shape} {y.dtype}")
        valid = (t >= stage) & (t - stage < num_micro)
        y = jnp.where(valid, y, lax.stop_gradient(y))
        return lax.ppermute(y, stage_axis, shift_right), y

    # The shift buffer starts as real data (not zeros) so that bubble iterations never evaluate
    # stage_fn at a point where its derivative may be singular (e.g. a norm at 0): even a zero
    # cotangent times an infinite Jacobian would put NaN into the gradients.
    state0 = lax.pcast(micro[0], stage_axis, to="varying")
    _, ys = lax.scan(step, state0, jnp.arange(num_micro + num_stages - 1))
    outputs = ys[num_stages - 1:]
    return lax.psum(jnp.where(is_last, outputs, jnp.zeros_like(outputs)), stage_axis)


def pipeline_apply(
    stage_fn: StageFn,
    stage_params: Any,
    inputs: jax.Array,
    *,
    mesh: Mesh,
    num_microbatches: int,
    stage_axis: str = "stage",
) -> jax.Array:
    """Applies S stages in sequence to ``inputs`` with a GPipe schedule over ``stage_axis``.

    Equivalent to ``x = stage_fn(params[s], x) for s in range(S)`` for a per-example ``stage_fn``,
    in value and gradient. Only the stage axis is manual (`jax.shard_map` with
    ``axis_names={stage_axis}``); the other mesh axes stay automatic, so inputs sharded over "data"
    and weights sharded over "model" keep their shardings inside ``stage_fn``. Micro-batch m holds
    examples m, m + M, m + 2M, ... so that a batch split over "data" in contiguous blocks splits
    every micro-batch evenly over "data" without moving data.

    Args:
      stage_fn: ``(params_of_one_stage, x [b, ...]) -> y [b, ...]``, same shape and dtype.
      stage_params: pytree whose leaves have a leading axis S = ``mesh.shape[stage_axis]``
        (stage weights stacked), sharded over ``stage_axis``.
      inputs: [B, ...] with B divisible by ``num_microbatches``.
      mesh: device mesh containing ``stage_axis``.
      num_microbatches: M, number of micro-batches per batch.
      stage_axis: name of the pipeline mesh axis.

    Returns:
      [B, ...] the last stage's outputs, replicated over the stage axis (one psum of the
      outputs over the stage axis, masked to the last stage). With S == 1 this is
      ``stage_fn(params[0], inputs)`` on the whole batch, no micro-batching.
    """
    if stage_axis not in mesh.shape:
        raise ValueError(f"mesh axes {dict(mesh.shape)} have no pipeline axis {stage_axis!r}")
    num_stages = mesh.shape[stage_axis]
    _check_args(stage_params, inputs, num_stages, num_microbatches)
    if num_stages == 1:
        return stage_fn(jax.tree.map(lambda p: p[0], stage_params), inputs)

    batch, rest = inputs.shape[0], inputs.shape[1:]
    micro_size = batch // num_microbatches
    micro = inputs.reshape(micro_size, num_microbatches, *rest).swapaxes(0, 1)
    loop = jax.shard_map(
        lambda params, x: _gpipe_loop(stage_fn, params, x, num_stages=num_stages,
                                      stage_axis=stage_axis),
        mesh=mesh,
        in_specs=(P(stage_axis), P()),
        out_specs=P(),
        axis_names={stage_axis},
    )
    outputs = loop(stage_params, micro)
    return outputs.swapaxes(0, 1).reshape(batch, *rest)
