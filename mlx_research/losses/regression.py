"""Regression losses with ``torch.nn.functional`` semantics.

``input`` and ``target`` broadcast against each other, as in torch (which warns when their
sizes differ); integer inputs are promoted to the default float dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mlx_research.losses.reduction import reduce_loss

def _difference(input: ArrayLike, target: ArrayLike) -> jax.Array:
    """``input - target`` broadcast, in a float dtype (integers -> the default float)."""
    diff = jnp.asarray(input) - jnp.asarray(target)
    return diff.astype(jnp.result_type(diff.dtype, float))


def l1_loss(input: ArrayLike, target: ArrayLike, reduction: str = "mean") -> jax.Array:
    """Mean absolute error ``|input - target|`` (torch ``F.l1_loss``).

    The gradient at ``input == target`` is torch's ``sign(0) = 0`` (``jnp.abs`` would give 1).

    Args:
      input: [...] predictions.
      target: [...] broadcastable with ``input``.
      reduction: "mean" | "sum" | "none".

    Returns:
      Scalar, or [...] (the broadcast shape) for "none".
    """
    diff = _difference(input, target)
    return reduce_loss(diff * jnp.sign(diff), reduction)


def mse_loss(input: ArrayLike, target: ArrayLike, reduction: str = "mean") -> jax.Array:
    """Mean squared error ``(input - target)^2`` (torch ``F.mse_loss``).

    Written with ``jnp.square`` rather than ``optax.squared_error``, which requires equal shapes
    and float inputs.

    Args:
      input: [...] predictions.
      target: [...] broadcastable with ``input``.
      reduction: "mean" | "sum" | "none".

    Returns:
      Scalar, or [...] (the broadcast shape) for "none".
    """
    return reduce_loss(jnp.square(_difference(input, target)), reduction)


def huber_loss(
    input: ArrayLike, target: ArrayLike, reduction: str = "mean", delta: float = 1.0
) -> jax.Array:
    """Huber loss (torch ``F.huber_loss``, via ``optax.huber_loss``).

    ``0.5 x^2`` for ``|x| < delta``, else ``delta (|x| - 0.5 delta)``, with ``x = input - target``.

    Args:
      input: [...] predictions.
      target: [...] broadcastable with ``input``.
      reduction: "mean" | "sum" | "none".
      delta: positive threshold between the quadratic and linear parts.

    Returns:
      Scalar, or [...] (the broadcast shape) for "none".
    """
    if delta <= 0:
        raise ValueError(f"huber_loss needs delta > 0, got {delta}")
    loss = optax.huber_loss(_difference(input, target), delta=delta)
    return reduce_loss(loss, reduction)


def smooth_l1_loss(
    input: ArrayLike, target: ArrayLike, reduction: str = "mean", beta: float = 1.0
) -> jax.Array:
    """Smooth L1 loss (torch ``F.smooth_l1_loss``): Huber loss divided by ``beta``.

    ``0.5 x^2 / beta`` for ``|x| < beta``, else ``|x| - 0.5 beta``; ``beta=0`` is exactly L1
    as in torch. The gradient at ``|x| = beta`` is ``sign(x)`` from both sides.

    Args:
      input: [...] predictions.
      target: [...] broadcastable with ``input``.
      reduction: "mean" | "sum" | "none".
      beta: non-negative threshold (torchvision detection uses 1/9).

    Returns:
      Scalar, or [...] (the broadcast shape) for "none".
    """
    if beta < 0:
        raise ValueError(f"smooth_l1_loss does not support negative values for beta, got {beta}")
    if beta == 0:
        return l1_loss(input, target, reduction)
    loss = optax.huber_loss(_difference(input, target), delta=beta) / beta
    return reduce_loss(loss, reduction)
