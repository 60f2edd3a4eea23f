"""The pure train and eval steps (jitted by the trainer with explicit shardings)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from mlx_research.train.state import TrainState
from mlx_research.train.tasks.base import Batch, Task


def split_microbatches(batch: Batch, num: int) -> Batch:
    """[B, ...] leaves -> [num, B / num, ...]; micro-batch j takes rows j, j + num, ... so that
    every micro-batch keeps an equal share of each data-parallel device's rows."""
    return jax.tree.map(
        lambda x: x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1), batch
    )


def _loss_and_grads(task: Task, state: TrainState, batch: Batch, rng: jax.Array, accum_steps: int):
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)
    if accum_steps == 1:
        (loss, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
        return dict(metrics, loss=loss), model_state, grads

    def body(carry, inputs):
        grads_sum, model_state = carry
        micro_batch, index = inputs
        (loss, (metrics, model_state)), grads = grad_fn(
            state.params, model_state, micro_batch, jax.random.fold_in(rng, index)
        )
        return (jax.tree.map(jnp.add, grads_sum, grads), model_state), dict(metrics, loss=loss)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, model_state), metrics = jax.lax.scan(
        body,
        (zeros, state.model_state),
        (split_microbatches(batch, accum_steps), jnp.arange(accum_steps)),
    )
    grads = jax.tree.map(lambda g: g / accum_steps, grads)
    return jax.tree.map(jnp.mean, metrics), model_state, grads


def make_train_step(
    task: Task, tx: optax.GradientTransformation, schedule: optax.Schedule, accum_steps: int = 1
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """One optimizer update. With accum_steps > 1 the gradient is the mean over sequential
    micro-batches (equal to the full-batch gradient when the loss is a mean over examples).

    A step whose loss, gradients or updated parameters are not finite changes nothing but
    `bad_step`, and every later step is skipped too, so the state stays the last good one.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(state.rng, state.step)
        metrics, model_state, grads = _loss_and_grads(task, state, batch, rng, accum_steps)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = (
            jnp.isfinite(metrics["loss"])
            & jnp.isfinite(optax.tree.norm(grads))
            & jnp.isfinite(optax.tree.norm(params))
        )
        ok = finite & (state.bad_step < 0)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = TrainState(
            step=state.step + ok.astype(state.step.dtype),
            params=keep(params, state.params),
            model_state=keep(model_state, state.model_state),
            opt_state=keep(opt_state, state.opt_state),
            rng=state.rng,
            bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step),
        )
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
        return new_state, metrics

    return train_step


def make_eval_step(task: Task) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """Per-batch evaluation sums of the task for the current parameters."""

    def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        return task.eval_outputs({"params": state.params, **state.model_state}, batch)

    return eval_step
