"""The one reduction every loss in ``mlx_research.losses`` goes through, so that
``reduction="mean"|"sum"|"none"`` and its error message are the same everywhere."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

REDUCTIONS = ("mean", "sum", "none")


def reduce_loss(
    loss: ArrayLike,
    reduction: str = "mean",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
    """Reduces an element-wise loss as torch does.

    Args:
      loss: [...] element-wise loss.
      reduction: "mean", "sum" or "none"; anything else raises ``ValueError``.
      normalizer: for "mean", divide the sum by this instead of ``loss.size`` (e.g. the sum
        of class weights of non-ignored targets). A zero normalizer gives 0 with zero
        gradients where torch gives NaN.

    Returns:
      A scalar for "mean"/"sum", ``loss`` unchanged for "none".
    """
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{reduction!r} is not a valid value for reduction; expected one of {REDUCTIONS}"
        )
    loss = jnp.asarray(loss)
    if reduction == "none":
        return loss
    total = jnp.sum(loss)
    if reduction == "sum":
        return total
    if normalizer is None:
        return total / loss.size
    return total / jnp.where(normalizer == 0, 1, normalizer)
