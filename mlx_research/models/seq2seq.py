"""Encoder-decoder Transformer for token sequence-to-sequence tasks."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    """

    vocab_size: int
    d_model: int = 128
    nhead: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dim_feedforward: int = 512
    dropout: float = 0.1
    norm_first: bool = True
    pad_id: int = 0
    pipeline: bool = False
    pipeline_microbatches: int = 1
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
        )
        if self.pipeline:
            micro = dict(num_microbatches=self.pipeline_microbatches)
            self.encoder = PipelinedEncoder(num_layers=self.num_encoder_layers, **micro, **common)
            self.decoder = PipelinedDecoder(num_layers=self.num_decoder_layers, **micro, **common)
        else:
            self.encoder = TransformerEncoder(num_layers=self.num_encoder_layers, **common)
            self.decoder = TransformerDecoder(num_layers=self.num_decoder_layers, **common)

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
        return self.embed.attend(y).astype(jnp.float32) / jnp.sqrt(self.d_model)

    def __call__(
        self, inputs: jax.Array, decoder_inputs: jax.Array, train: bool = False
    ) -> jax.Array:
        """inputs [B, S], decoder_inputs [B, T] (BOS then targets shifted right) -> logits [B, T, V]."""
        return self.decode(decoder_inputs, self.encode(inputs, train), inputs, train)
