"""Transformer encoder/decoder with torch.nn.Transformer* arguments and DETR positions.

Layers follow ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``
(post-LN by default, pre-LN with ``norm_first=True``; dropout on attention weights,
inside the FFN and on every residual branch). As in DETR's ``transformer.py``, optional
positional embeddings are added to attention queries and keys (never to values) at every
layer: ``pos`` for encoder/memory tokens, ``query_pos`` for decoder queries.
``TransformerDecoder(...)(..., decode=True)`` decodes incrementally: self-attention keeps its
keys/values in the ``"cache"`` collection (see ``MultiHeadAttention``); cross-attention to
``memory`` is recomputed at every step (no cache), so ``memory`` must be passed at every call.
Matrices are initialised with Xavier-uniform and biases with zeros, as torch
``nn.Transformer`` and DETR reset them; one difference: torch draws the Q/K/V projections from
one fused ``[3E, E]`` matrix (bound sqrt(6 / 4E)) where each projection here has its own
(bound sqrt(6 / 2E)). Activations are ``[B, T, D]`` with logical axes
``("batch", "length", "embed")``.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlx_research.nn.activations import get_activation
from mlx_research.nn.attention import MultiHeadAttention
from mlx_research.nn.barrier import grad_barrier

Array = jax.Array
Dtype = Any
Activation = str | Callable[[Array], Array]

_ACTIVATION_AXES = ("batch", "length", "embed")


def _with_pos(x: Array, pos: Array | None) -> Array:
    return x if pos is None else x + pos


def _layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


def _check_width(x: Array, d_model: int) -> None:
    if x.shape[-1] != d_model:
        raise ValueError(f"input width {x.shape[-1]} does not match d_model {d_model}")


class MlpBlock(nn.Module):
    """Position-wise FFN: Dense(D -> dim_feedforward), activation, dropout, Dense(-> D).

    Kernels carry logical names ``wi: ("embed", "mlp")``, ``wo: ("mlp", "embed")``.

    Attributes:
      dim_feedforward: hidden width.
      dropout: dropout rate after the activation.
      activation: a name for ``get_activation`` or a callable.
      dtype: computation dtype.
      param_dtype: parameter dtype.
    """

    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Activation = "relu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        """Applies the FFN to ``x: [..., D]``; returns ``[..., D]``."""
        act = (
            get_activation(self.activation) if isinstance(self.activation, str) else self.activation
        )
        init = nn.initializers.xavier_uniform()
        h = nn.Dense(
            self.dim_feedforward,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
            name="wi",
        )(x)
        h = nn.Dropout(self.dropout)(act(h), deterministic=deterministic)
        return nn.Dense(
            x.shape[-1],
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            name="wo",
        )(h)


class TransformerLayerBase(nn.Module):
    """Base of the Transformer layers here and in the models: attention, FFN, residual branch.

    A layer builds its sublayers with `_attention` and `_mlp` and joins each to the residual
    stream with `_residual` (``x + dropout(branch)``), or with `_pre_norm`
    (``x + dropout(sublayer(norm(x)))``) for a pre-norm sublayer with any norm. Parameter names
    are the caller's (attention) or ``mlp``.

    Attributes:
      d_model: model width D (the attention's projected and output width).
      nhead: number of attention heads.
      dim_feedforward: FFN hidden width.
      dropout: dropout rate (attention weights, FFN, residual branches).
      activation: FFN activation name or callable.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      attention_implementation: ``jax.nn.dot_product_attention`` backend of the attention
        without weight dropout: None / "xla", or "cudnn" (flash attention, GPU, bf16/fp16).
    """

    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Activation = "relu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_implementation: str | None = None

    def _attention(self, name: str) -> MultiHeadAttention:
        return MultiHeadAttention(
            num_heads=self.nhead,
            qkv_features=self.d_model,
            out_features=self.d_model,
            dropout_rate=self.dropout,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            implementation=self.attention_implementation,
            name=name,
        )

    def _mlp(self) -> MlpBlock:
        return MlpBlock(
            dim_feedforward=self.dim_feedforward,
            dropout=self.dropout,
            activation=self.activation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )

    def _residual(self, x: Array, branch: Array, deterministic: bool) -> Array:
        """``x + dropout(branch)``; the backward pass computes the cotangents of the branch and
        of the sum once (`grad_barrier`) instead of recomputing them in each consumer."""
        branch = nn.Dropout(self.dropout)(grad_barrier(branch), deterministic=deterministic)
        return grad_barrier(x + branch)

    def _pre_norm(
        self,
        x: Array,
        norm: Callable[[Array], Array],
        sublayer: Callable[[Array], Array],
        deterministic: bool,
    ) -> Array:
        """The pre-norm sublayer ``x + dropout(sublayer(norm(x)))``."""
        return self._residual(x, sublayer(norm(x)), deterministic)


class _TorchLayer(TransformerLayerBase):
    """`TransformerLayerBase` with torch's LayerNorm, pre- or post-norm (attributes below)."""

    layer_norm_eps: float = 1e-5
    norm_first: bool = False

    def _norm(self, name: str) -> nn.LayerNorm:
        return _layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name)


class TransformerEncoderLayer(_TorchLayer):
    """Self-attention + FFN block (torch ``TransformerEncoderLayer`` with DETR's ``pos``).

    Attributes:
      d_model: model width D.
      nhead: number of attention heads.
      dim_feedforward: FFN hidden width.
      dropout: dropout rate (attention weights, FFN, residual branches).
      activation: FFN activation name or callable.
      layer_norm_eps: LayerNorm epsilon.
      norm_first: pre-LN when True, post-LN otherwise.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      attention_implementation: ``jax.nn.dot_product_attention`` backend of the attention
        without weight dropout: None / "xla", or "cudnn" (flash attention, GPU, bf16/fp16).
    """

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        pos: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """Encodes ``x``.

        Args:
          x: ``[B, S, D]``.
          mask: bool broadcastable to ``[B, H, S, S]`` (e.g. ``[B, 1, 1, S]`` padding).
          pos: ``[B, S, D]`` (or broadcastable) added to queries and keys.
          deterministic: disables dropout.

        Returns:
          ``[B, S, D]``.
        """
        _check_width(x, self.d_model)
        attn, norm1, norm2 = self._attention("self_attn"), self._norm("norm1"), self._norm("norm2")
        mlp = self._mlp()

        def self_attention(h: Array) -> Array:
            qk = _with_pos(h, pos)
            return attn(qk, qk, mask, inputs_v=h, deterministic=deterministic)

        if self.norm_first:
            x = self._pre_norm(x, norm1, self_attention, deterministic)
            x = self._pre_norm(x, norm2, lambda h: mlp(h, deterministic), deterministic)
        else:
            x = norm1(self._residual(x, self_attention(x), deterministic))
            x = norm2(self._residual(x, mlp(x, deterministic), deterministic))
        return nn.with_logical_constraint(x, _ACTIVATION_AXES)


class TransformerDecoderLayer(_TorchLayer):
    """Self-attention, cross-attention and FFN block (torch ``TransformerDecoderLayer``).

    Attributes are those of ``TransformerEncoderLayer``.
    """

    @nn.compact
    def __call__(
        self,
        tgt: Array,
        memory: Array,
        self_mask: Array | None = None,
        cross_mask: Array | None = None,
        pos: Array | None = None,
        query_pos: Array | None = None,
        deterministic: bool = True,
        *,
        decode: bool = False,
        cross_bias: Array | None = None,
    ) -> Array:
        """Decodes ``tgt`` attending to ``memory``.

        Args:
          tgt: ``[B, T, D]`` decoder tokens / object queries' content.
          memory: ``[B, S, D]`` encoder output.
          self_mask: bool broadcastable to ``[B, H, T, T]`` (causal and/or padding).
          cross_mask: bool broadcastable to ``[B, H, T, S]`` (memory padding).
          pos: ``[B, S, D]`` memory positions, added to cross-attention keys.
          query_pos: ``[B, T, D]`` query positions, added to self-attention queries/keys
            and to cross-attention queries.
          deterministic: disables dropout.
          decode: incremental decoding with a self-attention key/value cache (``"cache"``
            collection, see ``MultiHeadAttention``): a first call with the full length
            ``T_max`` creates the cache, then each call takes one position (``T = 1``) and
            ``self_mask`` broadcasts to ``[B, H, 1, T_max]`` (e.g. key padding; positions after
            the current one are masked by the cache) and ``query_pos`` is that position's.
          cross_bias: float broadcastable to ``[B, H, T, S]``, added to the cross-attention
            logits (e.g. a spatial prior), or None.

        Returns:
          ``[B, T, D]``.
        """
        _check_width(tgt, self.d_model)
        self_attn, cross_attn = self._attention("self_attn"), self._attention("cross_attn")
        norm1, norm2, norm3 = self._norm("norm1"), self._norm("norm2"), self._norm("norm3")
        mlp = self._mlp()
        memory_keys = _with_pos(memory, pos)

        def self_attention(h: Array) -> Array:
            qk = _with_pos(h, query_pos)
            return self_attn(
                qk, qk, self_mask, inputs_v=h, deterministic=deterministic, decode=decode
            )

        def cross_attention(h: Array) -> Array:
            return cross_attn(
                _with_pos(h, query_pos),
                memory_keys,
                cross_mask,
                cross_bias,
                inputs_v=memory,
                deterministic=deterministic,
            )

        if self.norm_first:
            tgt = self._pre_norm(tgt, norm1, self_attention, deterministic)
            tgt = self._pre_norm(tgt, norm2, cross_attention, deterministic)
            tgt = self._pre_norm(tgt, norm3, lambda h: mlp(h, deterministic), deterministic)
        else:
            tgt = norm1(self._residual(tgt, self_attention(tgt), deterministic))
            tgt = norm2(self._residual(tgt, cross_attention(tgt), deterministic))
            tgt = norm3(self._residual(tgt, mlp(tgt, deterministic), deterministic))
        return nn.with_logical_constraint(tgt, _ACTIVATION_AXES)


class _StackBase(nn.Module):
    """Attributes shared by the encoder and decoder stacks."""

    num_layers: int
    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Activation = "relu"
    layer_norm_eps: float = 1e-5
    norm_first: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    final_norm: bool | None = None
    attention_implementation: str | None = None

    def _layer_kwargs(self) -> dict[str, Any]:
        names = (
            "d_model",
            "nhead",
            "dim_feedforward",
            "dropout",
            "activation",
            "layer_norm_eps",
            "norm_first",
            "dtype",
            "param_dtype",
            "attention_implementation",
        )
        return {name: getattr(self, name) for name in names}

    def _final_norm(self) -> nn.LayerNorm | None:
        use = self.norm_first if self.final_norm is None else self.final_norm
        if not use:
            return None
        return _layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "norm")


class TransformerEncoder(_StackBase):
    """A stack of ``num_layers`` encoder layers.

    Attributes:
      num_layers: number of layers.
      final_norm: LayerNorm after the last layer; default (None) when ``norm_first``,
        as needed by pre-LN stacks.
      (others): as ``TransformerEncoderLayer``.
    """

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        pos: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """Encodes ``x: [B, S, D]`` (arguments as the layer's); returns ``[B, S, D]``."""
        x = nn.with_logical_constraint(x, _ACTIVATION_AXES)
        for i in range(self.num_layers):
            x = TransformerEncoderLayer(**self._layer_kwargs(), name=f"layers_{i}")(
                x, mask, pos, deterministic
            )
        norm = self._final_norm()
        return x if norm is None else norm(x)


class TransformerDecoder(_StackBase):
    """A stack of ``num_layers`` decoder layers.

    Attributes:
      num_layers: number of layers.
      final_norm: LayerNorm after the last layer (and on every intermediate output);
        default (None) when ``norm_first``. DETR uses ``final_norm=True``.
      return_intermediate: return every layer's output, stacked, for auxiliary losses.
      (others): as ``TransformerDecoderLayer``.
    """

    return_intermediate: bool = False

    @nn.compact
    def __call__(
        self,
        tgt: Array,
        memory: Array,
        self_mask: Array | None = None,
        cross_mask: Array | None = None,
        pos: Array | None = None,
        query_pos: Array | None = None,
        deterministic: bool = True,
        *,
        decode: bool = False,
    ) -> Array:
        """Decodes (arguments as the layer's, ``decode`` included).

        Returns:
          ``[B, T, D]``, or ``[num_layers, B, T, D]`` when ``return_intermediate``
          (each layer's output passed through the final norm when there is one).
        """
        x = nn.with_logical_constraint(tgt, _ACTIVATION_AXES)
        norm = self._final_norm()
        intermediate = []
        for i in range(self.num_layers):
            x = TransformerDecoderLayer(**self._layer_kwargs(), name=f"layers_{i}")(
                x, memory, self_mask, cross_mask, pos, query_pos, deterministic, decode=decode
            )
            if self.return_intermediate:
                intermediate.append(x if norm is None else norm(x))
        if self.return_intermediate:
            return jnp.stack(intermediate)
        return x if norm is None else norm(x)
