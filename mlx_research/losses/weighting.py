"""Learned homoscedastic-uncertainty weighting of several task losses.

Two forms:
  * "kendall" (Kendall, Gal & Cipolla 2018), parameter ``s = log sigma^2``:
    ``sum_i exp(-s_i) L_i + s_i``; optimum ``s_i = log L_i``.
  * "liebel" (Liebel & Koerner 2018), parameter ``sigma``:
    ``sum_i 0.5 / sigma_i^2 L_i + log(1 + sigma_i^2)``; bounded below, used by NADM.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

FORMS = ("kendall", "liebel")


def uncertainty_weighted_sum(
    losses: Sequence[ArrayLike] | ArrayLike,
    uncertainty: ArrayLike,
    form: str = "kendall",
) -> jax.Array:
    """Weighted sum of task losses with learned uncertainties.

    Args:
      losses: T scalar losses, as a sequence or a [T] array.
      uncertainty: [T] ``s = log sigma^2`` for "kendall", ``sigma`` for "liebel".
      form: "kendall" | "liebel".

    Returns:
      Scalar total loss.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if isinstance(losses, (list, tuple)):
        losses = jnp.stack([jnp.asarray(loss) for loss in losses])
    losses = jnp.asarray(losses)
    uncertainty = jnp.asarray(uncertainty)
    if losses.shape != uncertainty.shape or losses.ndim != 1:
        raise ValueError(
            f"need T losses and T uncertainties, got shapes {losses.shape} and {uncertainty.shape}"
        )
    if form == "kendall":
        return jnp.sum(jnp.exp(-uncertainty) * losses + uncertainty)
    variance = jnp.square(uncertainty)
    return jnp.sum(0.5 / variance * losses + jnp.log1p(variance))


class UncertaintyWeighting(nn.Module):
    """Holds the T uncertainty parameters and returns ``uncertainty_weighted_sum(losses)``.

    The parameter is "log_var" (init 0) for "kendall" and "sigma" (init 1) for "liebel", so
    every task starts at weight ``exp(-0) = 1`` ("kendall") or ``0.5 / 1^2`` ("liebel").

    Attributes:
      num_losses: number of tasks T.
      form: "kendall" | "liebel".
    """

    num_losses: int
    form: str = "kendall"

    @nn.compact
    def __call__(self, losses: Sequence[ArrayLike] | ArrayLike) -> jax.Array:
        """Weights and sums the task losses.

        Args:
          losses: T scalar losses, as a sequence or a [T] array.

        Returns:
          Scalar total loss.
        """
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.form == "kendall":
            uncertainty = self.param("log_var", nn.initializers.zeros, (self.num_losses,))
        else:
            uncertainty = self.param("sigma", nn.initializers.ones, (self.num_losses,))
        return uncertainty_weighted_sum(losses, uncertainty, self.form)
