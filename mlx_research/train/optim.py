"""Optimizer and learning-rate schedule from `config.optim` (optax).

Fields of `config.optim` (all documented in `mlx_research.train.config.trainer_defaults`):
name ("adamw" | "sgd"), lr, schedule ("cosine" | "step" | "constant"), warmup_steps, end_lr_factor,
decay_boundaries/decay_factor (step schedule), b1, b2, eps, momentum, nesterov, weight_decay,
grad_clip_norm, wd_exclude (regexes of parameters without weight decay), lr_multipliers
({regex: factor}, e.g. DETR's backbone at 0.1 x lr).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from mlx_research.nn.regularization import decay_mask
from mlx_research.tree import path_name


def make_schedule(optim: Any, total_steps: int) -> optax.Schedule:
    """Linear warmup followed by cosine, step or constant decay; returns step -> lr."""
    lr, warmup = float(optim.lr), int(optim.warmup_steps)
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=lr * float(optim.end_lr_factor),
        )
    if optim.schedule == "step":
        decay = optax.piecewise_constant_schedule(
            lr, {int(b) - warmup: float(optim.decay_factor) for b in optim.decay_boundaries}
        )
    elif optim.schedule == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise ValueError(
            f"config.optim.schedule={optim.schedule!r}: expected cosine, step or constant"
        )
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    """Multiplies each update leaf by a fixed factor (torch param-group lr multipliers)."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def lr_multiplier_tree(params: Any, multipliers: Mapping[str, float]) -> Any:
    """Per-leaf factor: the first regex (re.search on the "/"-joined path) that matches, else 1."""
    rules = [(re.compile(p), float(f)) for p, f in multipliers.items()]

    def factor(path: str) -> float:
        return next((f for pattern, f in rules if pattern.search(path)), 1.0)

    return jax.tree_util.tree_map_with_path(lambda path, _: factor(path_name(path)), params)


def make_optimizer(
    optim: Any, params: Any, total_steps: int
) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """Builds the optax chain: clip -> optimizer (+ masked decoupled weight decay) -> lr multipliers.

    Args:
        optim: `config.optim`.
        params: parameter tree (arrays or ShapeDtypeStructs) used for the decay mask and multipliers.
        total_steps: length of the run (cosine decay horizon).
    Returns:
        (transformation, schedule).
    """
    schedule = make_schedule(optim, total_steps)
    mask = decay_mask(params, exclude=tuple(optim.wd_exclude))
    if optim.name == "adamw":
        opt = optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=mask,
        )
    elif optim.name == "sgd":
        opt = optax.chain(
            optax.add_decayed_weights(optim.weight_decay, mask),
            optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov),
        )
    else:
        raise ValueError(f"config.optim.name={optim.name!r}: expected adamw or sgd")
    parts = []
    if optim.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    parts.append(opt)
    if optim.lr_multipliers:
        parts.append(scale_by_tree(lr_multiplier_tree(params, dict(optim.lr_multipliers))))
    return optax.chain(*parts), schedule
