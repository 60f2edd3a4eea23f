"""Losses for learned memories / codebooks: VQ-VAE codebook-commitment and row orthogonality."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mlx_research.losses.reduction import reduce_loss

# Norm floor when normalising rows, torch F.normalize's default eps.
_NORMALIZE_EPS = 1e-12


def codebook_loss(
    z: ArrayLike,
    q: ArrayLike,
    commitment_cost: float = 0.0,
    reduction: str = "mean",
) -> jax.Array:
    """VQ-VAE codebook + commitment loss ``(sg[z] - q)^2 + beta (z - sg[q])^2`` per element.

    The first term moves the selected entries ``q`` toward the features (no gradient into
    ``z``); the second, weighted by ``commitment_cost`` (beta), commits the features to their
    entries (no gradient into ``q``). NADM uses ``mse(sg[feat], q)``, i.e. ``commitment_cost=0``.

    Args:
      z: [..., D] features (encoder outputs).
      q: [..., D] memory / codebook entries matched to ``z``.
      commitment_cost: weight beta of the commitment term.
      reduction: "mean" (over all elements) | "sum" | "none".

    Returns:
      Scalar, or [..., D] for "none".
    """
    z, q = jnp.asarray(z), jnp.asarray(q)
    codebook = jnp.square(jax.lax.stop_gradient(z) - q)
    commitment = jnp.square(z - jax.lax.stop_gradient(q))
    return reduce_loss(codebook + commitment_cost * commitment, reduction)


def orthogonality_loss(w: ArrayLike, normalize: bool = False, reduction: str = "mean") -> jax.Array:
    """Squared deviation of the rows' Gram matrix from the identity, ``(W W^T - I)^2``.

    Rows of ``w`` are the memory entries, so the Gram matrix is [K, K] (``W W^T``; in a
    column-entry convention this would be ``W^T W``). With ``normalize=True`` rows are first
    L2-normalised (``x / max(||x||, 1e-12)``, finite for zero rows), which matches NADM's
    ``mse(normalize(Omega) normalize(Omega)^T, I)``; "mean" is over the K*K entries (torch
    ``mse_loss``).

    Args:
      w: [K, D] matrix whose rows are memory entries.
      normalize: L2-normalise the rows first.
      reduction: "mean" | "sum" | "none" ([K, K]).

    Returns:
      Scalar, or [K, K] for "none".
    """
    w = jnp.asarray(w)
    if normalize:
        norm = jnp.sqrt(jnp.maximum(jnp.sum(w * w, axis=-1, keepdims=True), _NORMALIZE_EPS**2))
        w = w / norm
    gram = w @ w.T
    return reduce_loss(jnp.square(gram - jnp.eye(w.shape[0], dtype=gram.dtype)), reduction)
