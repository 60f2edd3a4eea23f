"""Scaled dot-product attention, attention masks and multi-head attention.

Layout is JAX's: queries ``[B, Tq, H, D]``, keys/values ``[B, Tk, H, D]``; masks and
biases broadcast to ``[B, H, Tq, Tk]``. Boolean masks use ``True`` = attend.

Rows whose every key is masked out produce an output of **zeros** (and attention weights
of zeros) with finite gradients; PyTorch gives NaN there.

``MultiHeadAttention.__call__(..., decode=True)`` is incremental (KV-cached) self-attention for
autoregressive decoding; see the class doc.
"""

from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Dtype = Any


def make_padding_mask(q_valid: Array | None, k_valid: Array) -> Array:
    """Attention mask from per-token validity flags.

    Args:
      q_valid: ``[B, Tq]`` bool (True = real token), or None to mask keys only.
      k_valid: ``[B, Tk]`` bool (True = real token).

    Returns:
      ``[B, 1, Tq, Tk]`` bool, or ``[B, 1, 1, Tk]`` when ``q_valid`` is None.
    """
    k_valid = jnp.asarray(k_valid, dtype=bool)
    if q_valid is None:
        return k_valid[:, None, None, :]
    q_valid = jnp.asarray(q_valid, dtype=bool)
    return q_valid[:, None, :, None] & k_valid[:, None, None, :]


def make_causal_mask(length: int) -> Array:
    """Lower-triangular mask: position t attends to positions <= t.

    Returns:
      ``[1, 1, length, length]`` bool.
    """
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of broadcastable boolean masks; None entries are skipped.

    Returns:
      The combined bool mask, or None when every mask is None.
    """
    present = [jnp.asarray(m, dtype=bool) for m in masks if m is not None]
    if not present:
        return None
    combined = present[0]
    for m in present[1:]:
        combined = combined & m
    return combined


def _to_4d(x: Array) -> Array:
    """Prepends unit axes so that ``x`` has rank 4 (numpy broadcasting semantics)."""
    if x.ndim > 4:
        raise ValueError(f"mask/bias must broadcast to [B, H, Tq, Tk]; got rank {x.ndim}")
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _full_mask(mask: Array | None, is_causal: bool, q_len: int, k_len: int) -> Array | None:
    """Combines the user mask with the (top-left aligned) causal mask, rank 4."""
    causal = jnp.tril(jnp.ones((q_len, k_len), dtype=bool))[None, None] if is_causal else None
    if mask is None:
        return causal
    return combine_masks(_to_4d(mask), causal)


def scaled_dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None = None,
    bias: Array | None = None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    return_weights: bool = False,
    implementation: Literal["xla", "cudnn"] | None = None,
) -> Array | tuple[Array, Array]:
    """``softmax(Q K^T * scale + bias, masked) V`` per head.

    Without active dropout and without ``return_weights`` this calls
    ``jax.nn.dot_product_attention`` (cuDNN flash attention when
    ``implementation="cudnn"``); otherwise the weights are formed explicitly.

    Args:
      query: ``[B, Tq, H, D]``.
      key: ``[B, Tk, H, D]``.
      value: ``[B, Tk, H, D]``.
      mask: bool, broadcastable to ``[B, H, Tq, Tk]``; True = attend.
      bias: float, broadcastable to ``[B, H, Tq, Tk]``; added to the scaled logits.
      is_causal: also mask keys after the query position (top-left aligned, as torch).
      scale: logit scale; default ``1 / sqrt(D)``.
      dropout_rate: dropout probability on the attention weights.
      dropout_rng: PRNG key, required when dropout is active.
      deterministic: disables dropout when True.
      return_weights: also return the attention weights actually applied to ``value``
        (after dropout, as torch ``MultiheadAttention``).
      implementation: passed to ``jax.nn.dot_product_attention`` on the fast path.

    Returns:
      ``[B, Tq, H, D]``, and weights ``[B, H, Tq, Tk]`` when ``return_weights``.
      Fully masked query rows give zeros.
    """
    q_len, k_len = query.shape[1], key.shape[1]
    full_mask = _full_mask(mask, is_causal, q_len, k_len)
    row_valid = None
    if mask is not None:
        row_valid = jnp.any(full_mask, axis=-1, keepdims=True)  # [b, h, Tq, 1]
    use_dropout = dropout_rate > 0.0 and not deterministic

    if not use_dropout and not return_weights:
        out = jax.nn.dot_product_attention(
            query,
            key,
            value,
            bias=None if bias is None else _to_4d(jnp.asarray(bias)),
            mask=None if mask is None else _to_4d(jnp.asarray(mask, dtype=bool)),
            scale=scale,
            is_causal=is_causal,
            implementation=implementation,
        )
        if row_valid is not None:
            out = jnp.where(jnp.swapaxes(row_valid, 1, 2), out, jnp.zeros((), out.dtype))
        return out

    if use_dropout and dropout_rng is None:
        raise ValueError("dropout_rng is required when dropout_rate > 0 and not deterministic")
    scale = 1.0 / np.sqrt(query.shape[-1]) if scale is None else scale
    logits = jnp.einsum(
        "bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32
    ) * jnp.float32(scale)
    if bias is not None:
        logits = logits + _to_4d(jnp.asarray(bias)).astype(jnp.float32)
    if full_mask is not None:
        logits = jnp.where(full_mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if row_valid is not None:
        weights = jnp.where(row_valid, weights, 0.0)
    if use_dropout:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        keep_scale = 1.0 / (1.0 - dropout_rate) if dropout_rate < 1.0 else 0.0
        weights = jnp.where(keep, weights, 0.0) * keep_scale
    weights = weights.astype(value.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
    return (out, weights) if return_weights else out


class HeadProjection(nn.Module):
    """Dense layer between ``[..., E]`` and ``[..., H, D]`` (either way) with logical axis names.

    Same parameters as ``nn.DenseGeneral`` (``kernel`` initialised on its flattened 2-D shape,
    then reshaped), but the logical names are attached to the full-rank kernel and bias, which
    ``nn.DenseGeneral`` cannot do (it initialises flattened shapes).

    Attributes:
      features: output feature shape, ``(H, D)`` or ``(E,)``.
      names: logical names of the kernel (input axes then output axes).
      num_input_axes: trailing input axes contracted (1 for ``E``, 2 for ``H, D``).
    """

    features: tuple[int, ...]
    names: tuple[str, ...]
    num_input_axes: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., Array] = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_shape = x.shape[-self.num_input_axes :]
        shape = (*in_shape, *self.features)

        def init(key: Array, shape: tuple[int, ...], dtype: Any) -> Array:
            flat = (int(np.prod(in_shape)), int(np.prod(self.features)))
            return self.kernel_init(key, flat, dtype).reshape(shape)

        kernel = self.param(
            "kernel", nn.with_logical_partitioning(init, self.names), shape, self.param_dtype
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        y = jnp.tensordot(x, kernel, axes=self.num_input_axes)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(
                    nn.initializers.zeros_init(), self.names[self.num_input_axes :]
                ),
                self.features,
                self.param_dtype,
            )
            y = y + bias.astype(y.dtype)
        return y


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query/key/value projections (torch semantics).

    Parameters carry logical axis names: q/k/v kernels ``("embed", "heads", "kv")``, their
    biases ``("heads", "kv")``, the output kernel ``("heads", "kv", "embed")`` and its bias
    ``("embed",)``.

    Attributes:
      num_heads: number of heads H.
      qkv_features: total projected width H * D; default the query input width.
      out_features: output width; default the query input width.
      dropout_rate: dropout on the attention weights (rng stream ``"dropout"``).
      use_bias: add biases to the projections.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      kernel_init: initializer of the (flattened 2-D) projection kernels.
      deterministic: default for ``__call__``'s ``deterministic``.
      implementation: ``jax.nn.dot_product_attention`` backend (None = its default, XLA in
        jax 0.10; "cudnn" = flash attention on GPU, fp16/bf16 only).

    Incremental decoding (``__call__(..., decode=True)``, for self-attention: each call's keys and
    values come from the new position) keeps projected keys and values in the ``"cache"``
    collection (as flax's ``MultiHeadDotProductAttention(decode=True)``):

    - ``cached_key``, ``cached_value``: ``[B, T_max, H, D]`` (batch-leading, so a beam search can
      reorder the cache by gathering axis 0), zeros at initialisation;
    - ``cache_index``: int32 scalar, the number of positions written so far (initially 0).

    The first ``decode=True`` call, with ``"cache"`` mutable and not yet present, creates the cache
    from a full-length input ``[B, T_max, E]`` (usually under ``jax.eval_shape``) and otherwise
    computes ordinary attention. Every later call takes one position ``[B, 1, E]``, writes its key
    and value at ``cache_index``, attends to the cached positions ``<= cache_index`` (plus the
    caller's ``mask``, e.g. key padding ``[B, 1, 1, T_max]``) and increments ``cache_index``.
    Writing past ``T_max`` is not checked (``dynamic_update_slice`` clamps the index).
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., Array] = nn.initializers.xavier_uniform()
    deterministic: bool | None = None
    implementation: Literal["xla", "cudnn"] | None = None

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array | None = None,
        mask: Array | None = None,
        bias: Array | None = None,
        *,
        inputs_v: Array | None = None,
        deterministic: bool | None = None,
        return_weights: bool = False,
        decode: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Attends from ``inputs_q`` to ``inputs_kv``.

        Args:
          inputs_q: ``[B, Tq, Dq]``.
          inputs_kv: ``[B, Tk, Dkv]`` keys (and values); default ``inputs_q`` (self-attention).
          mask: bool broadcastable to ``[B, H, Tq, Tk]``; True = attend.
          bias: float broadcastable to ``[B, H, Tq, Tk]``.
          inputs_v: ``[B, Tk, Dkv]`` values when they differ from the keys' input (DETR adds
            positional embeddings to keys only); default ``inputs_kv``.
          deterministic: disables attention dropout; merged with the attribute.
          return_weights: also return the attention weights ``[B, H, Tq, Tk]``.
          decode: incremental self-attention with the key/value cache (see the class doc);
            after cache creation ``Tq = 1`` and ``Tk = T_max`` (for ``mask`` and the weights).

        Returns:
          ``[B, Tq, out_features]`` (and the weights when requested).
        """
        if inputs_kv is None:
            inputs_kv = inputs_q
        if inputs_v is None:
            inputs_v = inputs_kv
        features = inputs_q.shape[-1]
        qkv_features = self.qkv_features or features
        out_features = self.out_features or features
        if qkv_features % self.num_heads != 0:
            raise ValueError(
                f"qkv_features ({qkv_features}) must be divisible by num_heads ({self.num_heads})"
            )
        head_dim = qkv_features // self.num_heads

        def projection(name: str) -> HeadProjection:
            return HeadProjection(
                (self.num_heads, head_dim),
                ("embed", "heads", "kv"),
                1,
                self.use_bias,
                self.dtype,
                self.param_dtype,
                self.kernel_init,
                name=name,
            )

        query = projection("query")(inputs_q)
        key = projection("key")(inputs_kv)
        value = projection("value")(inputs_v)
        if decode:
            key, value, mask = self._update_cache(key, value, mask)

        dropout_rng = None
        no_dropout = True
        if self.dropout_rate > 0.0:
            no_dropout = nn.merge_param("deterministic", self.deterministic, deterministic)
            if not no_dropout:
                dropout_rng = self.make_rng("dropout")
        result = scaled_dot_product_attention(
            query,
            key,
            value,
            mask,
            bias,
            dropout_rate=self.dropout_rate,
            dropout_rng=dropout_rng,
            deterministic=no_dropout,
            return_weights=return_weights,
            implementation=self.implementation,
        )
        out, weights = result if return_weights else (result, None)
        out = HeadProjection(
            (out_features,),
            ("heads", "kv", "embed"),
            2,
            self.use_bias,
            self.dtype,
            self.param_dtype,
            self.kernel_init,
            name="out",
        )(out)
        return (out, weights) if return_weights else out

    def _update_cache(
        self, key: Array, value: Array, mask: Array | None
    ) -> tuple[Array, Array, Array | None]:
        """Creates the cache, or writes one position and returns the cached keys/values and mask.

        Args:
          key: ``[B, T_max, H, D]`` at cache creation, then ``[B, 1, H, D]``.
          value: as ``key``.
          mask: the caller's mask.

        Returns:
          ``(key, value, mask)`` unchanged at creation; afterwards the cached ``[B, T_max, H, D]``
          keys and values and ``mask`` restricted to the positions ``<=`` the new one.
        """
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        if not initialized:
            return key, value, mask
        if key.shape[1] != 1:
            raise ValueError(f"decode=True takes one position per call; got length {key.shape[1]}")
        index = cache_index.value
        axes = ("batch", "length", "heads", "kv")
        key = nn.with_logical_constraint(
            lax.dynamic_update_slice_in_dim(cached_key.value, key, index, axis=1), axes
        )
        value = nn.with_logical_constraint(
            lax.dynamic_update_slice_in_dim(cached_value.value, value, index, axis=1), axes
        )
        cached_key.value, cached_value.value, cache_index.value = key, value, index + 1
        visible = (jnp.arange(key.shape[1]) <= index)[None, None, None, :]
        return key, value, combine_masks(mask, visible)
