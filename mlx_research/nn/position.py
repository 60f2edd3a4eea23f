"""Position encodings: fixed sinusoidal (1-D and DETR's 2-D) and learned embeddings."""

import math
import numbers
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any


def sinusoidal_position_encoding(length: int, dim: int, max_timescale: float = 10000.0) -> Array:
    """Sinusoidal encoding of "Attention Is All You Need".

    ``PE[p, 2i] = sin(p / max_timescale^(2i/dim))``, ``PE[p, 2i+1] = cos(same)``.

    Args:
      length: number of positions L.
      dim: encoding width (even).
      max_timescale: the base of the geometric wavelength progression.

    Returns:
      ``[length, dim]`` float32.
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    position = jnp.arange(length, dtype=jnp.float32)[:, None]
    inv_timescale = jnp.exp(
        -math.log(max_timescale) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    )
    angles = position * inv_timescale  # [L, dim/2]
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(length, dim)


def sine_position_encoding_2d(
    mask: Array,
    num_pos_feats: int = 128,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
) -> Array:
    """DETR's ``PositionEmbeddingSine`` for an image feature map.

    Positions are cumulative counts of valid pixels along each axis (optionally
    normalised by the last count to ``[0, scale]``), encoded with interleaved sin/cos;
    the y encoding comes first, then x.

    Args:
      mask: ``[B, H, W]`` bool, True = valid pixel (DETR's mask is the negation).
      num_pos_feats: features per axis F (even).
      temperature: wavelength base.
      normalize: scale positions by the valid extent of each row/column.
      scale: range of normalised positions.

    Returns:
      ``[B, H, W, 2 * num_pos_feats]`` float32.
    """
    if num_pos_feats % 2:
        raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
    valid = jnp.asarray(mask).astype(jnp.float32)
    y_embed = jnp.cumsum(valid, axis=1)
    x_embed = jnp.cumsum(valid, axis=2)
    if normalize:
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = jnp.arange(num_pos_feats, dtype=jnp.float32)
    dim_t = jnp.float32(temperature) ** (2 * (dim_t // 2) / num_pos_feats)

    def encode(embed: Array) -> Array:
        pos = embed[..., None] / dim_t  # [B, H, W, F]
        stacked = jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1)
        return stacked.reshape(pos.shape)

    return jnp.concatenate([encode(y_embed), encode(x_embed)], axis=-1)


class LearnedPositionEmbedding(nn.Module):
    """Learned absolute position embeddings (table ``[num_embeddings, features]``).

    The table carries logical axis names ``("length", "embed")``.

    Attributes:
      num_embeddings: maximum number of positions.
      features: embedding width.
      embedding_init: table initializer; default N(0, 1) as ``torch.nn.Embedding``.
      param_dtype: table dtype.
    """

    num_embeddings: int
    features: int
    embedding_init: Callable[..., Array] = nn.initializers.normal(stddev=1.0)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, positions: int | Array) -> Array:
        """Looks up position embeddings.

        Args:
          positions: an int length L (positions ``0..L-1``) or an int array of positions
            of any shape ``[...]``.

        Returns:
          ``[L, features]`` for an int, else ``[..., features]``.
        """
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, ("length", "embed")),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )
        if isinstance(positions, numbers.Integral):
            if positions > self.num_embeddings:
                raise ValueError(f"length {positions} exceeds num_embeddings {self.num_embeddings}")
            return table[: int(positions)]
        return jnp.take(table, jnp.asarray(positions), axis=0)


class LearnedPositionEmbedding2D(nn.Module):
    """DETR's ``PositionEmbeddingLearned``: learned row and column embeddings.

    Channel order follows DETR: column (x) embedding first, then row (y) embedding.
    Tables are initialised uniformly in [0, 1) as in DETR and carry logical axis names
    ``("length", "embed")``.

    Attributes:
      num_pos_feats: features per axis F.
      max_size: maximum height and width.
      param_dtype: table dtype.
    """

    num_pos_feats: int = 256
    max_size: int = 50
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Position embeddings for a feature map.

        Args:
          x: ``[B, H, W]`` mask or ``[B, H, W, C]`` features; only the shape is used.

        Returns:
          ``[B, H, W, 2 * num_pos_feats]``.
        """
        batch, height, width = x.shape[:3]
        if height > self.max_size or width > self.max_size:
            raise ValueError(f"feature map {height}x{width} exceeds max_size {self.max_size}")
        init = nn.with_logical_partitioning(nn.initializers.uniform(scale=1.0), ("length", "embed"))
        shape = (self.max_size, self.num_pos_feats)
        row_embed = self.param("row_embed", init, shape, self.param_dtype)
        col_embed = self.param("col_embed", init, shape, self.param_dtype)
        x_emb = jnp.broadcast_to(col_embed[None, :width], (height, width, self.num_pos_feats))
        y_emb = jnp.broadcast_to(row_embed[:height, None], (height, width, self.num_pos_feats))
        pos = jnp.concatenate([x_emb, y_emb], axis=-1)
        return jnp.broadcast_to(pos[None], (batch, *pos.shape))
