"""Optimizer and learning-rate schedule from `config.optim` (optax).

Fields of `config.optim` (all documented in `mlx_research.train.config.trainer_defaults`):
name ("adamw" | "sgd"), lr, schedule ("cosine" | "step" | "constant"), warmup_steps, end_lr_factor,
decay_boundaries/decay_factor (step schedule), b1, b2, eps, momentum, nesterov, weight_decay,
grad_clip_norm, wd_exclude (regexes of parameters without weight decay), and the parameter groups:
lr_multipliers (((regex, factor), ...), the first match wins, e.g. DETR's backbone at 0.1 x lr) and
frozen ((regex, ...): no updates, no optimizer state, no weight decay, outside gradient clipping).
Regexes are re.search-ed against "/"-joined parameter paths (`mlx_research.tree.path_name`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from mlx_research.errors import ConfigError
from mlx_research.nn.regularization import decay_mask
from mlx_research.tree import flatten, path_name

_FROZEN, _TRAINABLE = "frozen", "trainable"


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


def lr_multiplier_tree(params: Any, multipliers: Sequence[tuple[str, float]]) -> Any:
    """Per-leaf factor: that of the first (regex, factor) pair whose regex matches, else 1."""
    rules = [(re.compile(pattern), float(factor)) for pattern, factor in multipliers]

    def factor(path: str) -> float:
        return next((f for pattern, f in rules if pattern.search(path)), 1.0)

    return jax.tree_util.tree_map_with_path(lambda path, _: factor(path_name(path)), params)


def frozen_tree(params: Any, frozen: Sequence[str]) -> Any:
    """Per-leaf bool: True where some `frozen` regex matches the parameter's path."""
    patterns = [re.compile(p) for p in frozen]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(p.search(path_name(path)) for p in patterns), params
    )


def _plain(value: Any) -> Any:
    """A ConfigDict as a dict (its repr spans lines), anything else as it is."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def check_param_groups(optim: Any, params: Any) -> None:
    """Validates `optim.lr_multipliers` and `optim.frozen` against the parameter names.

    Args:
        optim: `config.optim`.
        params: parameter tree (arrays or ShapeDtypeStructs).
    Raises:
        ConfigError: (one line naming the key and the entry) for a malformed entry, a negative
            or non-finite factor, a regex that does not compile or matches no parameter, or a
            `frozen` that freezes every parameter.
    """
    names = list(flatten(params))
    multipliers, frozen = optim.lr_multipliers, optim.frozen
    comma = " (a one-element tuple needs a trailing comma)"
    if not isinstance(multipliers, (tuple, list)):
        raise ConfigError(
            f"config: 'optim.lr_multipliers' must be a tuple of (regex, factor) pairs, "
            f"got {_plain(multipliers)!r}"
        )
    for entry in multipliers:
        if not (
            isinstance(entry, (tuple, list))
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], (int, float))
            and not isinstance(entry[1], bool)
        ):
            raise ConfigError(
                f"config: 'optim.lr_multipliers' entry {entry!r} is not a (regex, factor) pair"
                + (comma if isinstance(entry, str) else "")
            )
        if not (math.isfinite(entry[1]) and entry[1] >= 0):
            raise ConfigError(
                f"config: 'optim.lr_multipliers' entry {tuple(entry)!r}: factor must be >= 0"
            )
    if not isinstance(frozen, (tuple, list)) or not all(isinstance(p, str) for p in frozen):
        raise ConfigError(
            f"config: 'optim.frozen' must be a tuple of regexes, got {_plain(frozen)!r}"
            + (comma if isinstance(frozen, str) else "")
        )
    key_patterns = [("optim.lr_multipliers", p) for p, _ in multipliers]
    key_patterns += [("optim.frozen", p) for p in frozen]
    for key, pattern in key_patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"config: {key!r} regex {pattern!r} does not compile: {e}") from None
        if not any(regex.search(name) for name in names):
            examples = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            raise ConfigError(
                f"config: {key!r} regex {pattern!r} matches no parameter (e.g. {examples})"
            )
    if names and all(jax.tree.leaves(frozen_tree(params, frozen))):
        raise ConfigError(
            f"config: 'optim.frozen' = {tuple(frozen)!r} freezes all {len(names)} parameters"
        )


def make_optimizer(
    optim: Any, params: Any, total_steps: int
) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """Builds the optax chain: clip -> optimizer (+ masked decoupled weight decay) -> multipliers.

    With `optim.frozen`, that chain is the trainable branch of an `optax.multi_transform` and sees
    the trainable parameters only: frozen ones get zero updates (`optax.set_to_zero`), hold no
    optimizer state, take no weight decay and do not count towards the clipping norm. Without
    `optim.frozen` the state has the plain chain's structure (checkpoints stay compatible).

    Args:
        optim: `config.optim`.
        params: parameter tree (arrays or ShapeDtypeStructs) used for the masks and multipliers.
        total_steps: length of the run (cosine decay horizon).
    Returns:
        (transformation, schedule).
    Raises:
        ConfigError: see `check_param_groups`.
    """
    check_param_groups(optim, params)
    schedule = make_schedule(optim, total_steps)
    frozen = frozen_tree(params, optim.frozen)
    decay = decay_mask(params, exclude=tuple(optim.wd_exclude))
    mask = jax.tree.map(lambda d, f: d and not f, decay, frozen)
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
        factors = lr_multiplier_tree(params, optim.lr_multipliers)
        # The trainable branch sees frozen leaves as (empty) MaskedNodes.
        factors = jax.tree.map(lambda m, f: optax.MaskedNode() if f else m, factors, frozen)
        parts.append(scale_by_tree(factors))
    tx = optax.chain(*parts)
    if optim.frozen:
        labels = jax.tree.map(lambda f: _FROZEN if f else _TRAINABLE, frozen)
        tx = optax.multi_transform({_TRAINABLE: tx, _FROZEN: optax.set_to_zero()}, labels)
    return tx, schedule


def map_opt_state_params(
    tx: optax.GradientTransformation,
    f: Callable[..., Any],
    state: Any,
    *rest: Any,
    transform_non_params: Callable[[Any], Any] | None = None,
) -> Any:
    """`optax.tree_map_params` for states of `make_optimizer`: frozen slots stay `MaskedNode`s.

    With `optim.frozen`, the parameter-shaped parts of the state (e.g. Adam's moments) hold an
    empty `optax.MaskedNode` for each frozen parameter; `f(leaf, *rest_leaves)` is applied to the
    others only. E.g. the shardings of the state from those of the parameters:
    `map_opt_state_params(tx, lambda _, s: s, abstract_state, param_shardings,
    transform_non_params=lambda _: replicated)`.
    """
    is_masked = lambda x: isinstance(x, optax.MaskedNode)
    return optax.tree_map_params(
        tx,
        lambda leaf, *others: leaf if is_masked(leaf) else f(leaf, *others),
        state,
        *rest,
        transform_non_params=transform_non_params,
        is_leaf=is_masked,
    )


def _group_name(pattern: str) -> str:
    """A metric-name-safe version of a regex: runs outside [A-Za-z0-9_.-] become "_"."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", pattern).strip("_") or "_"


def group_learning_rates(
    optim: Any, schedule: optax.Schedule, step: jax.Array | int
) -> dict[str, jax.Array]:
    """The learning rates to log: {"lr": schedule(step), "lr/<group>": schedule(step) * factor}.

    One "lr/<group>" per `optim.lr_multipliers` pair, named after its regex sanitised to
    [A-Za-z0-9_.-] (e.g. "^backbone/" -> "lr/backbone"; a clash gets a "_<index>" suffix).
    Works inside jit (`step` may be a traced scalar).
    """
    lr = jnp.asarray(schedule(step))
    rates = {"lr": lr}
    for i, (pattern, factor) in enumerate(optim.lr_multipliers):
        name = f"lr/{_group_name(pattern)}"
        if name in rates:
            name = f"{name}_{i}"
        rates[name] = lr * factor
    return rates
