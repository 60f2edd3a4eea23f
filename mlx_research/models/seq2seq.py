"""Encoder-decoder Transformer for token sequence-to-sequence tasks, and its decoding step."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mlx_research.config_fields import config_field
from mlx_research.models.decoding import (
    DecodeState,
    Step,
    cached_step,
    prefix_cache,
    prefix_step,
)
from mlx_research.nn.attention import make_causal_mask, make_padding_mask, combine_masks
from mlx_research.nn.pipelined import PipelinedDecoder, PipelinedEncoder
from mlx_research.nn.position import sinusoidal_position_encoding
from mlx_research.nn.transformer import TransformerDecoder, TransformerEncoder


class Seq2SeqTransformer(nn.Module):
    """Shared-vocabulary Transformer with tied input/output embeddings.

    Embeddings start as N(0, 1) and the tied output logits are divided by sqrt(d_model) (as in
    flax's lm1b example), so initial logits have unit scale.

    Token id `pad_id` marks padding in both inputs and decoder inputs.

    With ``pipeline=True`` the encoder and decoder layers have stacked weights (logical axis
    "layers", see `mlx_research.nn.pipelined`) and run as a GPipe pipeline over the mesh's "stage"
    axis with ``pipeline_microbatches`` micro-batches; the same function as the default per-layer
    stacks, with a different parameter tree (``encoder/layers/...`` stacked instead of
    ``encoder/layers_{i}/...``). Both layer counts must be divisible by the stage count, and
    dropout must be 0 when training.

    `decode_step` decodes incrementally with a key/value cache (not with ``pipeline=True``);
    `make_step` gives it (or, pipelined, a full recomputation) to
    `mlx_research.models.decoding.search`.

    Attributes:
      vocab_size: token ids ``0 .. vocab_size - 1``, shared by inputs and targets.
      d_model: model width.
      nhead: attention heads.
      num_encoder_layers, num_decoder_layers: layers.
      dim_feedforward: FFN hidden size.
      dropout: dropout rate.
      norm_first: pre-LN (True) or post-LN (False) blocks.
      pad_id: padding token id.
      pipeline: stacked layers run as a GPipe pipeline over mesh axis "stage".
      pipeline_microbatches: GPipe micro-batches per (data-parallel) batch.
      attention_implementation: attention without weight dropout (dropout 0 or evaluation):
        "xla" | "cudnn" (GPU).
      dtype: computation dtype.
    """

    vocab_size: int
    d_model: int = config_field(128, low=1)
    nhead: int = config_field(4, low=1)
    num_encoder_layers: int = config_field(2, low=1)
    num_decoder_layers: int = config_field(2, low=1)
    dim_feedforward: int = config_field(512, low=1)
    dropout: float = config_field(0.1, low=0, high=0.99)
    norm_first: bool = config_field(True)
    pad_id: int = 0
    pipeline: bool = config_field(False)
    pipeline_microbatches: int = config_field(1, low=1)
    attention_implementation: str = config_field("xla", choices=("xla", "cudnn"))
    dtype: Any = jnp.float32

    def setup(self):
        self.embed = nn.Embed(
            self.vocab_size,
            self.d_model,
            dtype=self.dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0), ("vocab", "embed")
            ),
        )
        common = dict(
            d_model=self.d_model,
            nhead=self.nhead,
            dim_feedforward=self.dim_feedforward,
            dropout=self.dropout,
            norm_first=self.norm_first,
            dtype=self.dtype,
            attention_implementation=self.attention_implementation,
        )
        if self.pipeline:
            micro = dict(num_microbatches=self.pipeline_microbatches)
            self.encoder = PipelinedEncoder(num_layers=self.num_encoder_layers, **micro, **common)
            self.decoder = PipelinedDecoder(num_layers=self.num_decoder_layers, **micro, **common)
        else:
            self.encoder = TransformerEncoder(num_layers=self.num_encoder_layers, **common)
            self.decoder = TransformerDecoder(num_layers=self.num_decoder_layers, **common)
            self.decode_state = DecodeState()

    def _embed(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens)
        return x + sinusoidal_position_encoding(tokens.shape[1], self.d_model).astype(self.dtype)

    def encode(self, inputs: jax.Array, train: bool = False) -> jax.Array:
        """inputs [B, S] int32 -> memory [B, S, D]."""
        if self.pipeline:
            return self.encoder(self._embed(inputs), inputs != self.pad_id, not train)
        mask = make_padding_mask(None, inputs != self.pad_id)
        return self.encoder(self._embed(inputs), mask=mask, deterministic=not train)

    def decode(
        self, decoder_inputs: jax.Array, memory: jax.Array, inputs: jax.Array, train: bool = False
    ) -> jax.Array:
        """decoder_inputs [B, T], memory [B, S, D], inputs [B, S] (for its padding) -> logits [B, T, V]."""
        embedded = self._embed(decoder_inputs)
        tgt_valid, memory_valid = decoder_inputs != self.pad_id, inputs != self.pad_id
        if self.pipeline:
            y = self.decoder(embedded, memory, tgt_valid, memory_valid, deterministic=not train)
        else:
            y = self.decoder(
                embedded,
                memory,
                self_mask=combine_masks(
                    make_causal_mask(decoder_inputs.shape[1]), make_padding_mask(None, tgt_valid)
                ),
                cross_mask=make_padding_mask(None, memory_valid),
                deterministic=not train,
            )
        return self._logits(y)

    def _logits(self, y: jax.Array) -> jax.Array:
        return self.embed.attend(y).astype(jnp.float32) / jnp.sqrt(self.d_model)

    def decode_step(
        self, decoder_inputs: jax.Array, memory: jax.Array, inputs: jax.Array
    ) -> jax.Array:
        """Incremental `decode` with a key/value cache (``"cache"`` collection, must be mutable).

        The first call, without a cache, takes the full length ``decoder_inputs [B, T_max]``: it
        creates the cache (all zeros; usually under ``jax.eval_shape``, see `make_step`) and
        returns `decode`'s logits. Every later call takes the next position ``[B, 1]`` and returns
        its logits, equal to those of `decode` on the whole prefix (dropout off).

        Cache layout (batch-leading except the scalars): ``decode_state/{position, valid}``
        (`mlx_research.models.decoding.DecodeState`) and for every decoder layer i
        ``decoder/layers_{i}/self_attn/{cached_key, cached_value}`` ``[B, T_max, H, D]`` and
        ``cache_index`` int32 scalar. Cross-attention to ``memory`` is recomputed at every step.

        Args:
          decoder_inputs: ``[B, T_max]`` at creation, then ``[B, 1]`` int32.
          memory: ``[B, S, D]`` encoder output.
          inputs: ``[B, S]`` encoder inputs (for their padding).

        Returns:
          ``[B, T_max, V]`` at creation, then ``[B, 1, V]`` float32 logits.
        """
        if self.pipeline:
            raise ValueError("decode_step needs the per-layer decoder; pipeline=True has no cache")
        position, tgt_valid = self.decode_state(decoder_inputs != self.pad_id)
        max_len = tgt_valid.shape[1]
        if position is None:
            embedded = self._embed(decoder_inputs)
            self_mask = combine_masks(
                make_causal_mask(max_len), make_padding_mask(None, tgt_valid)
            )
        else:
            table = sinusoidal_position_encoding(max_len, self.d_model)
            pe = lax.dynamic_slice_in_dim(table, position, 1).astype(self.dtype)
            embedded = self.embed(decoder_inputs) + pe
            self_mask = make_padding_mask(None, tgt_valid)
        y = self.decoder(
            embedded,
            memory,
            self_mask=self_mask,
            cross_mask=make_padding_mask(None, inputs != self.pad_id),
            deterministic=True,
            decode=True,
        )
        return self._logits(y)

    def __call__(
        self, inputs: jax.Array, decoder_inputs: jax.Array, train: bool = False
    ) -> jax.Array:
        """inputs [B, S], decoder_inputs [B, T] (BOS then targets shifted right) -> logits [B, T, V]."""
        return self.decode(decoder_inputs, self.encode(inputs, train), inputs, train)


def make_step(
    model: Seq2SeqTransformer, variables: dict[str, Any], inputs: jax.Array, max_len: int
) -> tuple[Step, dict[str, Any]]:
    """Encodes ``inputs`` once and returns a decoding step and its initial cache.

    Without pipelining the step is `Seq2SeqTransformer.decode_step` with the key/value cache
    (`mlx_research.models.decoding.cached_step`); with ``model.pipeline`` (no cache) it re-runs
    `Seq2SeqTransformer.decode` on the whole token buffer
    (`mlx_research.models.decoding.prefix_step`). Either cache also holds the context: the encoder
    memory ``[B, S, D]`` and ``inputs`` (batch-leading, so beam search tiles and reorders them).
    With ``model.pipeline`` the decoded rows (``B`` times the beam size) must be divisible by
    ``model.pipeline_microbatches``.

    Args:
      model: the model.
      variables: ``{"params": ..., other collections}``.
      inputs: ``[B, S]`` int32 encoder inputs (``model.pad_id`` = padding).
      max_len: number of decoding steps.

    Returns:
      ``(step, cache)`` for `mlx_research.models.decoding.search`: ``step(tokens [N] int32,
      cache) -> (logits [N, V] float32, cache)``.
    """
    memory = model.apply(variables, inputs, method=Seq2SeqTransformer.encode)
    context = (memory, inputs)
    if not model.pipeline:
        return cached_step(model, variables, Seq2SeqTransformer.decode_step, context, max_len)

    def logits_fn(tokens: jax.Array, context: tuple[jax.Array, jax.Array]) -> jax.Array:
        return model.apply(variables, tokens, *context, method=Seq2SeqTransformer.decode)

    return prefix_step(logits_fn), prefix_cache(inputs.shape[0], max_len, model.pad_id, context)
