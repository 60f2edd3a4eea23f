"""Balanced positive/negative sampling with static shapes (torchvision
``BalancedPositiveNegativeSampler``).

torchvision draws ``randperm`` over the positive and the negative indices of each image. Here each
eligible entry gets an independent uniform score, non-eligible entries get ``-inf``, and
``lax.top_k`` takes the highest scores: a uniformly random subset of the requested size, with
static shapes, jit- and vmap-compatible (one key per image under ``vmap``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

Array = jax.Array


def _random_subset(key: Array, eligible: Array, k_max: int, count: Array | int) -> Array:
    """Mask of ``min(count, sum(eligible))`` entries drawn uniformly from ``eligible``.

    ``k_max`` is a static upper bound on ``count``.
    """
    n = eligible.shape[-1]
    k = min(k_max, n)
    if k <= 0:
        return jnp.zeros_like(eligible)
    scores = jnp.where(eligible, jax.random.uniform(key, eligible.shape), -jnp.inf)
    values, indices = lax.top_k(scores, k)
    chosen = (values > -jnp.inf) & (jnp.arange(k) < count)
    return jnp.zeros_like(eligible).at[indices].max(chosen)


def balanced_sample(
    key: Array,
    labels: ArrayLike,
    num_samples: int,
    positive_fraction: float,
    valid: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """Samples at most ``num_samples`` entries with at most ``positive_fraction`` positives.

    torchvision's rule: ``num_pos = min(int(num_samples * positive_fraction), #positives)``,
    ``num_neg = min(num_samples - num_pos, #negatives)``; positives and negatives are chosen
    uniformly at random without replacement among the eligible entries.

    Args:
      key: PRNG key (one per image: ``jax.vmap(balanced_sample, (0, 0, None, None))`` over a
        batch of keys and labels).
      labels: [N] int, torchvision's matched-index convention: ``>= 1`` positive, ``0``
        negative, ``< 0`` ignored (``-1`` below the background threshold, ``-2`` between
        thresholds, or padding).
      num_samples: static total number of samples per image (torchvision
        ``batch_size_per_image``).
      positive_fraction: static maximum fraction of positives.
      valid: optional [N] bool; False rows (padding) are never sampled, as if labelled ``-1``.

    Returns:
      ``(pos_mask, neg_mask)``, each [N] bool, disjoint; ``pos_mask.sum() == num_pos`` and
      ``neg_mask.sum() == num_neg`` exactly as above.
    """
    labels = jnp.asarray(labels)
    positive = labels >= 1
    negative = labels == 0
    if valid is not None:
        valid = jnp.asarray(valid, bool)
        positive &= valid
        negative &= valid
    max_pos = int(num_samples * positive_fraction)
    pos_key, neg_key = jax.random.split(key)
    pos_mask = _random_subset(pos_key, positive, max_pos, max_pos)
    num_pos = jnp.sum(pos_mask, dtype=jnp.int32)
    neg_mask = _random_subset(neg_key, negative, num_samples, num_samples - num_pos)
    return pos_mask, neg_mask
