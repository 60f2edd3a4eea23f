"""R2Gen (Chen et al., EMNLP 2020): report generation with a memory-driven Transformer.

Follows the reference code (github.com/cuhksz-nlp/R2Gen, `modules/encoder_decoder.py`,
`visual_extractor.py`, `att_model.py`):

- visual extractor: a CNN backbone's last feature map as patch features ``[B, h*w, C]``; every
  view of a study goes through the same extractor (one call per view, as R2Gen, so batch norm sees
  each view's batch) and the views' patches are concatenated;
- ``att_embed``: Dense(d_model), ReLU, Dropout(``feature_dropout``, R2Gen's ``drop_prob_lm`` 0.5);
  no position encoding on the visual tokens (R2Gen's ``src_embed`` is the identity);
- encoder: pre-norm layers ``x + dropout(sublayer(LN(x)))`` (self-attention, FFN) and a final LN;
- decoder: token embedding * sqrt(d_model) + sinusoidal positions, dropout; pre-norm layers
  (self-attention, cross-attention to the encoder output, FFN) whose norms are memory-driven
  conditional layer norms (`ConditionalLayerNorm`, conditioned on the `RelationalMemory` state
  after each token), then a final plain LN (as R2Gen's ``Decoder.norm``) and a separate (untied)
  output Dense.

Every LN is R2Gen's (`R2GenLayerNorm`: unbiased std, eps 1e-6 on the std). With
``use_memory=False`` (R2Gen's "base" Transformer) the decoder norms are that LN. Decoder-input
keys equal to ``pad_id`` are masked, except position 0 (BOS), which R2Gen always keeps.
Initialisation: the embedding and every Transformer/memory kernel Xavier-uniform (R2Gen's re-init),
``att_embed`` and the output Dense torch's default Linear init; attention and FFN biases zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mlx_research.config_fields import config_field
from mlx_research.models.backbone import Backbone
from mlx_research.models.decoding import DecodeState, Step, cached_step
from mlx_research.models.report.relational_memory import (
    ACTIVATION_AXES,
    DecoderLayer,
    EncoderLayer,
    R2GenLayerNorm,
    RelationalMemory,
    dense,
    torch_bias_init,
)
from mlx_research.nn.attention import combine_masks, make_causal_mask, make_padding_mask
from mlx_research.nn.position import sinusoidal_position_encoding

Array = jax.Array
Dtype = Any

# torch nn.Linear's default kernel init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class R2Gen(nn.Module):
    """R2Gen model: images ``[B, V, H, W, C]`` and decoder inputs ``[B, T]`` -> logits.

    Attributes (defaults: R2Gen's):
      vocab_size: output classes (token ids ``0 .. vocab_size - 1``).
      max_len: longest decoder input sequence (positions).
      backbone: ``"small_cnn"``, ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``; its last
        feature map gives the patches (submodule ``backbone``, for ``init_from.prefix``).
      small_cnn_features: stage widths of ``"small_cnn"`` (stride 2 each).
      norm: backbone norm: ``"batch"`` | ``"frozen_batch"`` (torchvision weights) | ``"group"``.
      d_model: Transformer width (also the relational memory's width).
      d_ff: FFN hidden width.
      num_heads: attention heads.
      num_layers: encoder and decoder layers each.
      dropout: dropout of the Transformer (embeddings, attention weights, FFN, residual branches).
      feature_dropout: dropout after ``att_embed``, the patch-feature projection (R2Gen's
        ``drop_prob_lm``).
      use_memory: relational memory + MCLN (conditional layer norm); False gives a plain
        pre-norm Transformer decoder.
      rm_num_slots: memory rows.
      rm_num_heads: heads of the memory attention.
      rm_d_model: memory width; must equal ``d_model`` (R2Gen concatenates tokens and memory rows).
      pad_id: padding token id of the decoder inputs.
      dtype: computation dtype (logits float32).
    """

    vocab_size: int
    max_len: int
    backbone: str = config_field("small_cnn")
    small_cnn_features: Sequence[int] = config_field((32, 64, 128))
    norm: str = config_field("batch")
    d_model: int = config_field(512, low=1)
    d_ff: int = config_field(512, low=1)
    num_heads: int = config_field(8, low=1)
    num_layers: int = config_field(3, low=1)
    dropout: float = config_field(0.1, low=0, high=0.99)
    feature_dropout: float = config_field(0.5, low=0, high=0.99)
    use_memory: bool = config_field(True)
    rm_num_slots: int = config_field(3, low=1)
    rm_num_heads: int = config_field(8, low=1)
    rm_d_model: int = config_field(512, low=1)
    pad_id: int = 0
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        if self.use_memory and self.rm_d_model != self.d_model:
            raise ValueError(f"R2Gen.rm_d_model ({self.rm_d_model}) must equal d_model "
                             f"({self.d_model}): tokens join the memory rows")
        # The data pipeline normalises the images (R2Gen's transforms.Normalize).
        self.extractor = Backbone(
            arch=self.backbone, small_cnn_features=tuple(self.small_cnn_features), norm=self.norm,
            normalize=False, body_name="backbone", dtype=self.dtype)
        (feature_width,) = self.extractor.widths()
        self.att_embed = dense(self.d_model, ("mlp", "embed"), torch_bias_init(feature_width),
                               self.dtype, "att_embed", _TORCH_KERNEL_INIT)
        self.feature_dropout_layer = nn.Dropout(self.feature_dropout)
        self.embed_dropout = nn.Dropout(self.dropout)
        layer = dict(d_model=self.d_model, nhead=self.num_heads, dim_feedforward=self.d_ff,
                     dropout=self.dropout, dtype=self.dtype)
        self.encoder_layers = [EncoderLayer(**layer) for _ in range(self.num_layers)]
        self.encoder_norm = R2GenLayerNorm(dtype=self.dtype)
        self.embed = nn.Embed(
            self.vocab_size,
            self.d_model,
            dtype=self.dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.xavier_uniform(), ("vocab", "embed")
            ),
        )
        if self.use_memory:
            self.relational_memory = RelationalMemory(
                self.rm_num_slots, self.rm_num_heads, self.dropout, self.dtype
            )
        self.decoder_layers = [DecoderLayer(**layer) for _ in range(self.num_layers)]
        self.decoder_norm = R2GenLayerNorm(dtype=self.dtype)
        self.logit = dense(self.vocab_size, ("embed", "vocab"), torch_bias_init(self.d_model),
                           self.dtype, "logit", _TORCH_KERNEL_INIT)
        self.decode_state = DecodeState(keep_first=True)

    def encode(self, images: Array, train: bool = False) -> Array:
        """Visual extractor, ``att_embed`` and encoder.

        Args:
          images: ``[B, V, H, W, C]`` float32, V views.
          train: dropout on, and batch norm on batch statistics (apply with
            ``mutable=["batch_stats"]`` then, for ``norm="batch"``).

        Returns:
          ``[B, V * h * w, d_model]`` (h, w: the backbone's last feature map).
        """
        x = nn.relu(self.att_embed(self.view_patches(images, train)))
        x = self.feature_dropout_layer(x, deterministic=not train)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        for layer in self.encoder_layers:
            x = layer(x, not train)
        return self.encoder_norm(x)

    def view_patches(self, images: Array, train: bool = False) -> Array:
        """The visual extractor on each view (one call per view, so batch norm sees each view's
        batch), the views' patches concatenated.

        Args:
          images: ``[B, V, H, W, C]`` float32, normalised by the data pipeline.
          train: batch norm on batch statistics.

        Returns:
          ``[B, V * h * w, C_map]``: the backbone's deepest map, flattened per view.
        """
        patches = []
        for view in range(images.shape[1]):
            (feature_map,) = self.extractor(images[:, view], train)
            patches.append(feature_map.reshape(images.shape[0], -1, feature_map.shape[-1]))
        return jnp.concatenate(patches, axis=1)

    def _embed(self, tokens: Array, start: Array | int = 0) -> Array:
        """``embed(tokens) * sqrt(d_model)`` plus the positions ``start .. start + T - 1``."""
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"decoder inputs of length {length} exceed R2Gen.max_len {self.max_len}")
        table = sinusoidal_position_encoding(self.max_len, self.d_model)
        positions = lax.dynamic_slice_in_dim(table, start, length)
        return self.embed(tokens) * jnp.sqrt(jnp.float32(self.d_model)).astype(self.dtype) + (
            positions.astype(self.dtype)
        )

    def _decoder(
        self, embedded: Array, encoded: Array, self_mask: Array, train: bool, decode: bool
    ) -> Array:
        """Relational memory and decoder layers on ``embedded: [B, T, D]`` -> logits ``[B, T, V]``.

        The memory and the decoder layers each get their own dropout of the embeddings (R2Gen
        calls its embedding module twice).
        """
        drop = self.embed_dropout
        memory = None
        if self.use_memory:
            memory = self.relational_memory(drop(embedded, not train), not train, decode=decode)
        x = nn.with_logical_constraint(drop(embedded, not train), ACTIVATION_AXES)
        for layer in self.decoder_layers:
            x = layer(x, encoded, memory, self_mask, not train, decode)
        return self.logit(self.decoder_norm(x)).astype(jnp.float32)

    def _full_mask(self, tokens: Array) -> Array:
        """Causal and key padding mask ``[B, 1, T, T]``; position 0 is always a key."""
        valid = jnp.asarray(tokens != self.pad_id).at[:, 0].set(True)
        return combine_masks(make_causal_mask(tokens.shape[1]), make_padding_mask(None, valid))

    def decode(self, encoded: Array, decoder_inputs: Array, train: bool = False) -> Array:
        """Teacher-forced decoding.

        Args:
          encoded: ``[B, N, D]`` from `encode`.
          decoder_inputs: ``[B, T]`` int32, BOS first.
          train: dropout on.

        Returns:
          ``[B, T, vocab_size]`` float32 logits.
        """
        return self._decoder(self._embed(decoder_inputs), encoded,
                             self._full_mask(decoder_inputs), train, decode=False)

    def decode_step(self, tokens: Array, encoded: Array) -> Array:
        """Incremental `decode` with a cache (``"cache"`` collection, must be mutable).

        The first call, without a cache, takes the full length ``tokens [B, T_max]``, creates the
        cache (zeros; usually under ``jax.eval_shape``, see `make_step`) and returns `decode`'s
        logits. Every later call takes the next position ``[B, 1]`` and returns its logits, equal
        to those of `decode` on the whole prefix (dropout off).

        Cache layout (batch-leading except the int32 scalars): ``decode_state/{position, valid
        [B, T_max]}`` (`mlx_research.models.decoding.DecodeState`, position 0 always a key); for
        every decoder layer i ``decoder_layers_{i}/self_attn/{cached_key, cached_value}
        [B, T_max, H, D_head]`` and ``cache_index``; with ``use_memory``
        ``relational_memory/{memory [B, rm_num_slots, D], cache_index}``. Cross-attention to
        ``encoded`` is recomputed at every step.

        Args:
          tokens: ``[B, T_max]`` at creation, then ``[B, 1]`` int32.
          encoded: ``[B, N, D]``.

        Returns:
          ``[B, T_max, vocab_size]`` at creation, then ``[B, 1, vocab_size]`` float32 logits.
        """
        position, valid = self.decode_state(tokens != self.pad_id)
        if position is None:
            return self._decoder(self._embed(tokens), encoded, self._full_mask(tokens),
                                 False, decode=True)
        return self._decoder(self._embed(tokens, position), encoded,
                             make_padding_mask(None, valid), False, decode=True)

    def __call__(self, images: Array, decoder_inputs: Array, train: bool = False) -> Array:
        """``images [B, V, H, W, C]``, ``decoder_inputs [B, T]`` -> logits ``[B, T, vocab]``."""
        return self.decode(self.encode(images, train), decoder_inputs, train)


def make_step(
    model: R2Gen, variables: dict[str, Any], images: Array, max_len: int
) -> tuple[Step, dict[str, Any]]:
    """Encodes ``images`` once (evaluation mode); the cached decoding step and its initial cache.

    Args:
      model: the model.
      variables: ``{"params": ..., "batch_stats": ...}``.
      images: ``[B, V, H, W, C]``.
      max_len: number of decoding steps (at most ``model.max_len``).

    Returns:
      ``(step, cache)`` of `R2Gen.decode_step` over the encoder output
      (`mlx_research.models.decoding.cached_step`), for `mlx_research.models.decoding.search`.
    """
    encoded = model.apply(variables, images, method=R2Gen.encode)
    return cached_step(model, variables, R2Gen.decode_step, (encoded,), max_len)
