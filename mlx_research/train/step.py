"""The pure train step (jitted by the trainer with explicit shardings)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mlx_research.prng import step_key
from mlx_research.train.state import TrainState
from mlx_research.train.tasks.base import Batch, Task


def split_microbatches(batch: Batch, num: int) -> Batch:
    """[B, ...] leaves -> [num, B / num, ...]; micro-batch j takes rows j, j + num, ... so that
    every micro-batch keeps an equal share of each data-parallel device's rows."""
    return jax.tree.map(
        lambda x: x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1), batch
    )


def loss_and_grads(
    task: Task, params: Any, model_state: Any, batch: Batch, rng: jax.Array, accum_steps: int = 1
) -> tuple[jax.Array, Any, dict[str, jax.Array], Any]:
    """The batch's normalised loss and its gradient, over `accum_steps` sequential micro-batches.

    Loss sums, weights and gradients of the sums are added over the micro-batches and divided
    once by the total weight, so the result is the full-batch gradient whatever the normaliser
    (tokens, boxes, examples). Micro-batch j draws its random numbers from fold_in(rng, j).
    Metrics are the mean over micro-batches. A total weight of 0 gives a zero loss and gradient.

    Returns:
        (loss, grads, metrics with "loss" and "loss_weight", updated model_state).
    """

    def objective(params, model_state, batch, rng):
        (loss_sum, weight), (metrics, model_state) = task.loss(params, model_state, batch, rng)
        return loss_sum, (weight, metrics, model_state)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    if accum_steps == 1:
        (loss_sum, (weight, metrics, model_state)), grads = grad_fn(
            params, model_state, batch, rng
        )
    else:

        def body(carry, inputs):
            loss_sum, weight, grads, model_state = carry
            micro_batch, index = inputs
            (micro_loss, (micro_weight, metrics, model_state)), micro_grads = grad_fn(
                params, model_state, micro_batch, jax.random.fold_in(rng, index)
            )
            grads = jax.tree.map(jnp.add, grads, micro_grads)
            return (loss_sum + micro_loss, weight + micro_weight, grads, model_state), metrics

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros, model_state)
        (loss_sum, weight, grads, model_state), metrics = jax.lax.scan(
            body, init, (split_microbatches(batch, accum_steps), jnp.arange(accum_steps))
        )
        metrics = jax.tree.map(jnp.mean, metrics)
    weight = jnp.asarray(weight, jnp.float32)
    scale = jnp.where(weight > 0, 1.0 / jnp.where(weight > 0, weight, 1.0), 0.0)
    grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    loss = loss_sum * scale
    return loss, grads, dict(metrics, loss=loss, loss_weight=weight), model_state


def make_train_step(
    task: Task,
    tx: optax.GradientTransformation,
    learning_rates: Callable[[jax.Array], dict[str, jax.Array]],
    accum_steps: int = 1,
    rng_impl: str = "threefry2x32",
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """One optimizer update on the full-batch gradient (see `loss_and_grads`).

    `learning_rates(step)` gives the logged learning rate of each parameter group. Dropout and
    other random numbers come from fold_in(state.rng, state.step): different at every step, the
    same for a step replayed after a resume; ``rng_impl`` (`mlx_research.prng.RNG_IMPLS`) is the
    generator that turns that key into bits.

    A step whose loss, gradients or updated parameters are not finite changes nothing but
    `bad_step`, and every later step is skipped too, so the state stays the last good one.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = step_key(jax.random.fold_in(state.rng, state.step), rng_impl)
        loss, grads, metrics, model_state = loss_and_grads(
            task, state.params, state.model_state, batch, rng, accum_steps
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(params))
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
        return new_state, dict(metrics, grad_norm=grad_norm, **learning_rates(state.step))

    return train_step
