"""NADM's abnormal-pattern memory: a codebook Omega matched one-to-one to the visual features of
abnormal images, and read by every image through attention.

From the reference code (github.com/kzzjk/NADM, ``modeling/encoder/my_encoder.py``
``MYEncoder.codebook`` and ``layers/my_layers.py`` ``LowRank``):

- Omega is ``M x D`` (``nn.Embedding``, N(0, 1) initial entries; 98 entries for 49 grid features).
- For each abnormal image, the Euclidean distances between its ``N`` features and the ``M``
  entries form an ``N x M`` cost matrix; the Hungarian algorithm assigns every feature a different
  entry (``N <= M``), without gradient; ``q(V)`` are the assigned entries.
- ``L_m = mse(sg[V], q(V)) + mse(normalize(Omega) normalize(Omega)^T, I)`` over the abnormal
  images of the batch; a batch without one has no memory loss (0 here).
- ``q(V)`` itself does not enter the forward pass (the reference's straight-through ``quantized``
  is returned and unused); the memory does, as extra keys and values of the encoder's attention.
  Here (`AbnormalMemory`) the features read the memory once, before the encoder, with a pre-norm
  residual multi-head attention whose keys and values are the entries.

The matching runs inside the jitted step through `mlx_research.ops.matching.linear_sum_assignment`
("device": optax's Hungarian algorithm; "scipy": a host callback). On the shared 2-core CPU, a
batch of 16 studies with 242 features and 484 entries took ~1.2 s a step on "device" against
~0.1 s with "scipy" (the on-device solver is for accelerators).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlx_research.losses.memory import codebook_loss, orthogonality_loss
from mlx_research.models.report.relational_memory import R2GenLayerNorm
from mlx_research.nn.attention import MultiHeadAttention
from mlx_research.ops.matching import linear_sum_assignment

Array = jax.Array
Dtype = Any


def euclidean_distances(x: Array, y: Array) -> Array:
    """Pairwise Euclidean distances, as the reference's ``sqrt(|x|^2 + |y|^2 - 2 x y^T)``
    (clamped at 0 before the root).

    Args:
      x: ``[N, D]``.
      y: ``[M, D]``.

    Returns:
      ``[N, M]`` float32.
    """
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    squared = jnp.sum(x * x, -1)[:, None] + jnp.sum(y * y, -1)[None, :] - 2.0 * x @ y.T
    return jnp.sqrt(jnp.maximum(squared, 0.0))


def memory_assignment(features: Array, memory: Array, abnormal: Array,
                      method: str = "device") -> Array:
    """The memory entry of every feature of every abnormal image (minimum total distance, each
    entry at most once per image).

    Args:
      features: ``[B, N, D]`` visual features.
      memory: ``[M, D]`` entries, ``M >= N``.
      abnormal: ``[B]`` bool, the images that are matched.
      method: ``linear_sum_assignment`` backend ("device" | "scipy").

    Returns:
      ``[B, N]`` int32 entry index per feature; -1 for every feature of a normal image.
    """
    num_features, num_entries = features.shape[1], memory.shape[0]
    if num_entries < num_features:
        raise ValueError(f"the abnormal memory has {num_entries} entries for {num_features} "
                         "visual features per image; every feature needs its own entry "
                         "(raise model.memory_size)")
    cost = jax.vmap(euclidean_distances, in_axes=(0, None))(
        jax.lax.stop_gradient(features), jax.lax.stop_gradient(memory))

    def match(cost: Array, valid: Array) -> Array:
        rows, cols = linear_sum_assignment(
            cost, valid_rows=jnp.full((num_features,), valid), method=method)
        # rows are -1 on unused slots: send them out of range so that the scatter drops them
        rows = jnp.where(rows >= 0, rows, num_features)
        return jnp.full((num_features,), -1, jnp.int32).at[rows].set(cols, mode="drop")

    return jax.vmap(match)(cost, jnp.asarray(abnormal, bool))


def abnormal_memory_loss(features: Array, memory: Array, abnormal: Array,
                         method: str = "device") -> tuple[Array, Array]:
    """NADM's memory loss ``L_m`` and the matching it uses.

    ``L_m = mean_{abnormal i} mean_{n, d} (sg[V_i] - q(V_i))^2 + mean((nO nO^T - I)^2)`` with
    ``nO`` the L2-normalised entries, when the batch holds at least one abnormal image; exactly 0
    (with zero gradients) otherwise. Normal images contribute nothing.

    Args:
      features: ``[B, N, D]`` visual features (no gradient flows into them).
      memory: ``[M, D]`` entries (Omega).
      abnormal: ``[B]`` bool.
      method: matching backend (see `memory_assignment`).

    Returns:
      ``(loss, assignment)``: a float32 scalar and ``[B, N]`` int32 (see `memory_assignment`).
    """
    abnormal = jnp.asarray(abnormal, bool)
    assignment = memory_assignment(features, memory, abnormal, method)
    matched = memory[jnp.maximum(assignment, 0)]  # [B, N, D]; normal images masked below
    per_image = codebook_loss(features.astype(jnp.float32), matched.astype(jnp.float32),
                              reduction="none").mean(axis=(1, 2))
    count = jnp.sum(abnormal)
    codebook = jnp.sum(jnp.where(abnormal, per_image, 0.0)) / jnp.maximum(count, 1)
    orthogonal = orthogonality_loss(memory.astype(jnp.float32), normalize=True)
    return jnp.where(count > 0, codebook + orthogonal, 0.0), assignment


class AbnormalMemory(nn.Module):
    """Omega (parameter ``memory`` ``[M, D]``) read by the features; computes ``L_m`` in training.

    ``x' = x + dropout(MHA(LN(x), Omega))``: every image's features attend to the entries
    (keys and values), the reference's use of the memory in its encoder attention.

    Attributes:
      memory_size: M; -1 gives twice the features per image (the reference's 98 for 49).
      num_heads: heads of the read attention.
      dropout: dropout of the attention weights and of the residual branch.
      matcher: matching backend, "device" | "scipy".
      dtype: computation dtype.
    """

    memory_size: int
    num_heads: int
    dropout: float
    matcher: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, features: Array, abnormal: Array | None,
                 train: bool = False) -> tuple[Array, Array]:
        """Reads the memory and, given ``abnormal``, computes ``L_m``.

        Args:
          x: ``[B, N, D]`` features to enhance (after dropout in training).
          features: ``[B, N, D]`` the features matched to the memory (before dropout).
          abnormal: ``[B]`` bool, or None (no matching: evaluation, initialisation).
          train: dropout on.

        Returns:
          ``(x' [B, N, D], L_m)``; ``L_m`` is 0 when ``abnormal`` is None.
        """
        size = 2 * x.shape[1] if self.memory_size < 0 else self.memory_size
        if size < x.shape[1]:
            raise ValueError(f"AbnormalMemory.memory_size = {size} is below the {x.shape[1]} "
                             "visual features per image (each needs its own entry)")
        memory = self.param("memory", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), (None, "embed")), (size, x.shape[-1]))
        loss = jnp.zeros((), jnp.float32)
        if abnormal is not None:
            loss, _ = abnormal_memory_loss(features, memory, abnormal, self.matcher)
        # All B * N features query the M entries as one sequence, so the entries are projected
        # to keys and values once rather than once per image.
        queries = R2GenLayerNorm(dtype=self.dtype, name="norm")(x).reshape(1, -1, x.shape[-1])
        attention = MultiHeadAttention(self.num_heads, dropout_rate=self.dropout,
                                       dtype=self.dtype, name="read")
        read = attention(queries, memory.astype(self.dtype)[None], deterministic=not train)
        read = read.reshape(x.shape)
        return x + nn.Dropout(self.dropout)(read, deterministic=not train), loss
