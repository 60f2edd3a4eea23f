"""Embedding losses: cosine similarity / cosine embedding (torch semantics) and CLIP InfoNCE.

All norms are computed as ``sqrt(max(|x|^2, eps^2))`` (= ``max(|x|, eps)``), so zero vectors
give finite values and finite, not NaN, gradients (of order ``1 / eps`` at the zero vector, as
torch's ``x / max(|x|, eps)`` gives).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mlx_research.losses.reduction import reduce_loss

# torch's cosine_embedding_loss adds this to both squared norms (ATen Loss.cpp, EPSILON).
_COSINE_EMBEDDING_EPS = 1e-12
# Norm floor when L2-normalising embeddings, torch F.normalize's default eps.
_NORMALIZE_EPS = 1e-12


def _clamped_norm(x: jax.Array, axis: int, eps: float) -> jax.Array:
    """``max(||x||_2, eps)`` along ``axis`` (kept), with a finite gradient at ``x = 0``."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def cosine_similarity(x1: ArrayLike, x2: ArrayLike, axis: int = -1, eps: float = 1e-8) -> jax.Array:
    """Cosine similarity along ``axis`` (torch ``F.cosine_similarity``, ``axis`` for ``dim``).

    ``x1 . x2 / (max(||x1||, eps) max(||x2||, eps))``, the formula of current torch (older
    torch clamped the product of the norms instead).

    Args:
      x1: [..., D, ...] first input.
      x2: second input, broadcastable to ``x1``.
      axis: vector axis (default last, JAX layout; torch's default is dim 1).
      eps: lower bound on each norm.

    Returns:
      [...] the broadcast shape without ``axis``.
    """
    x1, x2 = jnp.broadcast_arrays(jnp.asarray(x1), jnp.asarray(x2))
    unit1 = x1 / _clamped_norm(x1, axis, eps)
    unit2 = x2 / _clamped_norm(x2, axis, eps)
    return jnp.sum(unit1 * unit2, axis=axis)


def cosine_similarity_loss(x1: ArrayLike, x2: ArrayLike, reduction: str = "mean") -> jax.Array:
    """``1 - cosine_similarity(x1, x2)`` along the last axis.

    Args:
      x1: [..., D] first embeddings.
      x2: [..., D] second embeddings, broadcastable to ``x1``.
      reduction: "mean" | "sum" | "none".

    Returns:
      Scalar, or [...] for "none".
    """
    return reduce_loss(1 - cosine_similarity(x1, x2), reduction)


def cosine_embedding_loss(
    input1: ArrayLike,
    input2: ArrayLike,
    target: ArrayLike,
    margin: float = 0.0,
    reduction: str = "mean",
) -> jax.Array:
    """Cosine embedding loss (torch ``F.cosine_embedding_loss``).

    ``1 - cos`` where ``target == 1``, ``max(0, cos - margin)`` where ``target == -1``, 0
    otherwise; ``cos = x1 . x2 / sqrt((|x1|^2 + 1e-12)(|x2|^2 + 1e-12))`` as torch computes it.

    Args:
      input1: [N, D] (or [D]) first embeddings.
      input2: [N, D] (or [D]) second embeddings.
      target: [N] (or scalar) labels, +1 similar / -1 dissimilar.
      margin: margin for dissimilar pairs, in [-1, 1].
      reduction: "mean" | "sum" | "none".

    Returns:
      Scalar, or [N] for "none".
    """
    input1, input2, target = jnp.asarray(input1), jnp.asarray(input2), jnp.asarray(target)
    squared1 = jnp.sum(input1 * input1, axis=-1) + _COSINE_EMBEDDING_EPS
    squared2 = jnp.sum(input2 * input2, axis=-1) + _COSINE_EMBEDDING_EPS
    cos = jnp.sum(input1 * input2, axis=-1) / jnp.sqrt(squared1 * squared2)
    loss = jnp.where(
        target == 1, 1 - cos, jnp.where(target == -1, jnp.maximum(cos - margin, 0.0), 0.0)
    )
    return reduce_loss(loss, reduction)


def contrastive_loss(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    temperature: ArrayLike = 0.07,
    logit_scale: ArrayLike | None = None,
    valid: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Symmetric InfoNCE (CLIP) loss between paired embeddings; pair ``i`` is the positive.

    Rows are L2-normalised, ``logits = a b^T * scale`` with ``scale = logit_scale`` if given,
    else ``1 / temperature``; the loss of pair ``i`` is the mean of the image->text and
    text->image cross-entropies at class ``i``
    (``optax.softmax_cross_entropy_with_integer_labels``).
    Padded pairs (``valid == False``) are neither queries nor negatives.

    Args:
      image_emb: [N, D] image embeddings.
      text_emb: [N, D] text embeddings, row ``i`` paired with image ``i``.
      temperature: softmax temperature, used when ``logit_scale`` is None.
      logit_scale: multiplicative scale, e.g. ``exp(learned_log_scale)`` as in CLIP.
      valid: optional [N] bool mask of real pairs.
      reduction: "mean" (over valid pairs, 0 if none) | "sum" | "none" ([N], 0 for padding).

    Returns:
      Scalar, or [N] for "none".
    """
    image_emb, text_emb = jnp.asarray(image_emb), jnp.asarray(text_emb)
    num = image_emb.shape[0]
    scale = 1.0 / jnp.asarray(temperature) if logit_scale is None else jnp.asarray(logit_scale)
    image_unit = image_emb / _clamped_norm(image_emb, -1, _NORMALIZE_EPS)
    text_unit = text_emb / _clamped_norm(text_emb, -1, _NORMALIZE_EPS)
    logits = scale * image_unit @ text_unit.T
    valid = jnp.ones(num, bool) if valid is None else jnp.asarray(valid, bool)
    logits = jnp.where(valid[None, :] & valid[:, None], logits, jnp.finfo(logits.dtype).min)
    labels = jnp.arange(num)
    image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
    loss = jnp.where(valid, 0.5 * (image_to_text + text_to_image), 0.0)
    return reduce_loss(loss, reduction, normalizer=jnp.sum(valid))
