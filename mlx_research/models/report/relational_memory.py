"""R2Gen's relational memory, its layer norms and the Transformer layers that use them.

From the reference code (github.com/cuhksz-nlp/R2Gen, `modules/encoder_decoder.py`):

- `R2GenLayerNorm`: R2Gen's ``LayerNorm``, ``gamma * (x - mean) / (std + eps) + beta`` with the
  *unbiased* standard deviation (torch ``Tensor.std``) and ``eps`` added to the std, eps 1e-6. It
  differs from ``flax.linen.LayerNorm`` (biased variance, eps inside the square root), so it is
  written here.
- `ConditionalLayerNorm` (memory-driven conditional layer norm, MCLN): the same normalisation with
  ``gamma + MLP_gamma(M_t)`` and ``beta + MLP_beta(M_t)`` for the flattened memory ``M_t`` of each
  decoder position.
- `RelationalMemory`: a recurrent memory of ``num_slots`` rows updated once per decoder input
  token; the teacher-forced path scans it over the sequence (``nn.scan``), the incremental path
  keeps the current memory in the ``"cache"`` collection.
- `EncoderLayer`, `DecoderLayer`: R2Gen's pre-norm sublayers ``x + dropout(sublayer(norm(x)))``
  (`mlx_research.nn.transformer.TransformerLayerBase`); the decoder's norms are MCLNs given a
  memory, `R2GenLayerNorm` otherwise.

Initialisation follows R2Gen, which re-initialises every matrix of its Transformer with
Xavier-uniform: kernels Xavier-uniform; the MCLN MLP biases 0.1 (R2Gen sets them); the gate
biases (``W``, ``U``) torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the attention and MLP
biases zero (as `mlx_research.nn.MultiHeadAttention` / `MlpBlock` start them; torch's default
would be that uniform draw).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlx_research.nn.attention import MultiHeadAttention
from mlx_research.nn.transformer import MlpBlock, TransformerLayerBase

Array = jax.Array
Dtype = Any
Init = Callable[..., Array]

ACTIVATION_AXES = ("batch", "length", "embed")


def torch_bias_init(fan_in: int) -> Init:
    """torch ``nn.Linear``'s default bias initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5

    def init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(
    features: int,
    names: tuple[str, str],
    bias_init: Init,
    dtype: Dtype,
    name: str,
    kernel_init: Init = nn.initializers.xavier_uniform(),
) -> nn.Dense:
    """``nn.Dense`` whose kernel and bias carry the logical axis ``names`` (input, output)."""
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, names),
        bias_init=nn.with_logical_partitioning(bias_init, names[1:]),
        name=name,
    )


def unbiased_layer_norm(x: Array, gamma: Array, beta: Array, eps: float) -> Array:
    """R2Gen's normalisation ``gamma * (x - mean) / (std + eps) + beta`` over the last axis.

    Args:
      x: ``[..., D]``; computed in float32.
      gamma: scale, broadcastable to ``x``.
      beta: shift, broadcastable to ``x``.
      eps: added to the unbiased standard deviation (``D - 1`` divisor).

    Returns:
      float32 ``[..., D]``.
    """
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    std = jnp.std(x, axis=-1, keepdims=True, ddof=1)
    return gamma * (x - mean) / (std + eps) + beta


def _affine(module: nn.Module, width: int) -> tuple[Array, Array]:
    gamma = module.param(
        "gamma", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)), (width,)
    )
    beta = module.param(
        "beta", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)), (width,)
    )
    return gamma, beta


class R2GenLayerNorm(nn.Module):
    """R2Gen's ``LayerNorm`` (unbiased std, eps on the std); parameters ``gamma``, ``beta``.

    Attributes:
      eps: added to the standard deviation.
      dtype: output dtype.
    """

    eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``x: [..., D]`` -> ``[..., D]``."""
        gamma, beta = _affine(self, x.shape[-1])
        return unbiased_layer_norm(x, gamma, beta, self.eps).astype(self.dtype)


class ConditionalLayerNorm(nn.Module):
    """R2Gen's ``ConditionalLayerNorm`` (MCLN).

    ``out = (gamma + MLP_gamma(m)) * (x - mean) / (std + eps) + (beta + MLP_beta(m))``, each MLP
    ``Dense(D), ReLU, Dense(D)`` on the flattened memory ``m`` of the same position.

    Attributes:
      eps: added to the unbiased standard deviation.
      dtype: computation dtype of the MLPs and of the output.
    """

    eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, memory: Array) -> Array:
        """Normalises ``x`` conditioned on ``memory``.

        Args:
          x: ``[B, T, D]``.
          memory: ``[B, T, num_slots * rm_d_model]`` relational memory after each position's token.

        Returns:
          ``[B, T, D]``.
        """
        width = x.shape[-1]
        gamma, beta = _affine(self, width)
        bias = nn.initializers.constant(0.1)

        def mlp(prefix: str) -> Array:
            h = dense(width, ("embed", "mlp"), bias, self.dtype, f"{prefix}_0")(memory)
            return dense(width, ("mlp", "embed"), bias, self.dtype, f"{prefix}_1")(nn.relu(h))

        gamma_hat = gamma + mlp("mlp_gamma").astype(jnp.float32)
        beta_hat = beta + mlp("mlp_beta").astype(jnp.float32)
        return unbiased_layer_norm(x, gamma_hat, beta_hat, self.eps).astype(self.dtype)


def initial_memory(batch_size: int, num_slots: int, d_model: int) -> Array:
    """R2Gen's ``init_memory``: identity rows, zero-padded (or cut) to ``d_model`` columns.

    Returns:
      ``[batch_size, num_slots, d_model]`` float32.
    """
    return jnp.broadcast_to(jnp.eye(num_slots, d_model), (batch_size, num_slots, d_model))


class RelationalMemoryCell(nn.Module):
    """One update of R2Gen's relational memory (``RelationalMemory.forward_step``).

    With ``kv = [M; x]`` (the memory rows and the token as one more row):
    ``M' = M + MHA(M, kv, kv)``; ``M' = M' + ReLU(MLP(M'))`` (two Dense layers, each followed by
    ReLU); ``[i, f] = W x + U tanh(M)``; ``M_new = sigmoid(i) * tanh(M') + sigmoid(f) * M``.

    Attributes:
      num_heads: heads of the memory attention.
      dropout: dropout on the attention weights.
      dtype: computation dtype.
    """

    num_heads: int
    dropout: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, memory: Array, x: Array, deterministic: bool = True) -> Array:
        """Updates ``memory: [B, S, D]`` with the token ``x: [B, D]``; returns ``[B, S, D]``."""
        width = memory.shape[-1]
        if x.shape[-1] != width:
            raise ValueError(f"token width {x.shape[-1]} must equal the memory width {width}")
        keys = jnp.concatenate([memory, x[:, None].astype(memory.dtype)], axis=1)
        attn = MultiHeadAttention(
            self.num_heads, dropout_rate=self.dropout, dtype=self.dtype, name="attn"
        )
        update = memory + attn(memory, keys, deterministic=deterministic)
        mlp = MlpBlock(width, dropout=0.0, dtype=self.dtype, name="mlp")
        update = update + nn.relu(mlp(update))
        bias = torch_bias_init(width)
        gates = dense(2 * width, ("embed", "mlp"), bias, self.dtype, "W")(x[:, None])
        gates = gates + dense(2 * width, ("embed", "mlp"), bias, self.dtype, "U")(jnp.tanh(memory))
        input_gate, forget_gate = jnp.split(gates, 2, axis=-1)
        return nn.sigmoid(input_gate) * jnp.tanh(update) + nn.sigmoid(forget_gate) * memory


class RelationalMemory(nn.Module):
    """R2Gen's ``RelationalMemory`` run over a token sequence, from `initial_memory`.

    Incremental decoding (``decode=True``) keeps the memory after the last token in the
    ``"cache"`` collection: ``memory`` ``[B, num_slots, D]`` and ``cache_index`` (int32 scalar,
    tokens consumed so far). The first ``decode=True`` call (cache absent, ``"cache"`` mutable)
    creates them (zeros) from a full-length input and otherwise computes the scan; every later call
    takes one token ``[B, 1, D]``, starting from `initial_memory` when ``cache_index`` is 0 (so a
    zero cache is a valid start).

    Attributes:
      num_slots: memory rows S.
      num_heads: heads of the memory attention.
      dropout: dropout on the memory attention weights.
      dtype: computation dtype.
    """

    num_slots: int
    num_heads: int
    dropout: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, decode: bool = False) -> Array:
        """The memory after each token.

        Args:
          x: ``[B, T, D]`` token embeddings (memory width D); ``T = 1`` when decoding with a cache.
          deterministic: disables dropout.
          decode: incremental decoding (see the class doc).

        Returns:
          ``[B, T, num_slots * D]``: row t is the flattened memory after token t.
        """
        batch, length, width = x.shape
        cell = RelationalMemoryCell(self.num_heads, self.dropout, self.dtype, name="cell")
        start = initial_memory(batch, self.num_slots, width).astype(self.dtype)
        if decode and self.has_variable("cache", "memory"):
            if length != 1:
                raise ValueError(f"decoding takes one token at a time; got {x.shape}")
            cached = self.variable("cache", "memory", jnp.zeros, start.shape, start.dtype)
            index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
            previous = jnp.where(index.value == 0, start, cached.value)
            cached.value = cell(previous, x[:, 0], deterministic)
            index.value = index.value + 1
            return cached.value.reshape(batch, 1, -1)
        if decode:
            self.variable("cache", "memory", jnp.zeros, start.shape, start.dtype)
            self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))

        def body(cell: RelationalMemoryCell, memory: Array, token: Array) -> tuple[Array, Array]:
            memory = cell(memory, token, deterministic)
            return memory, memory.reshape(batch, -1)

        scan = nn.scan(
            body,
            variable_broadcast="params",
            split_rngs={"params": False, "dropout": True},
            in_axes=1,
            out_axes=1,
        )
        return scan(cell, start, x)[1]


class EncoderLayer(TransformerLayerBase):
    """R2Gen's ``EncoderLayer``: pre-norm self-attention and FFN sublayers (`R2GenLayerNorm`)."""

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        """``x: [B, N, D]`` -> ``[B, N, D]`` (every visual token attends to every other)."""
        x = self._pre_norm(
            x, R2GenLayerNorm(dtype=self.dtype, name="norm1"),
            lambda h: self._attention("self_attn")(h, deterministic=deterministic), deterministic)
        x = self._pre_norm(x, R2GenLayerNorm(dtype=self.dtype, name="norm2"),
                           lambda h: self._mlp()(h, deterministic), deterministic)
        return nn.with_logical_constraint(x, ACTIVATION_AXES)


class DecoderLayer(TransformerLayerBase):
    """R2Gen's ``DecoderLayer``: pre-norm self-attention, cross-attention and FFN sublayers whose
    norms are `ConditionalLayerNorm` (``memory`` given) or `R2GenLayerNorm` (``memory`` None)."""

    @nn.compact
    def __call__(
        self,
        x: Array,
        encoded: Array,
        memory: Array | None,
        self_mask: Array,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """Decodes one layer.

        Args:
          x: ``[B, T, D]``.
          encoded: ``[B, N, D]`` encoder output.
          memory: ``[B, T, num_slots * D]`` relational memory per position, or None.
          self_mask: bool broadcastable to ``[B, H, T, T]`` (``[B, 1, 1, T_max]`` key padding
            when decoding with the cache).
          deterministic: disables dropout.
          decode: self-attention with the key/value cache (`MultiHeadAttention` ``decode``).

        Returns:
          ``[B, T, D]``.
        """

        def norm(name: str) -> Callable[[Array], Array]:
            if memory is None:
                return R2GenLayerNorm(dtype=self.dtype, name=name)
            return lambda h: ConditionalLayerNorm(dtype=self.dtype, name=name)(h, memory)

        def self_attention(h: Array) -> Array:
            return self._attention("self_attn")(h, h, self_mask, deterministic=deterministic,
                                                decode=decode)

        def cross_attention(h: Array) -> Array:
            return self._attention("cross_attn")(h, encoded, deterministic=deterministic)

        x = self._pre_norm(x, norm("norm1"), self_attention, deterministic)
        x = self._pre_norm(x, norm("norm2"), cross_attention, deterministic)
        x = self._pre_norm(x, norm("norm3"), lambda h: self._mlp()(h, deterministic),
                           deterministic)
        return nn.with_logical_constraint(x, ACTIVATION_AXES)
