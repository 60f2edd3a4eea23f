"""Encoder-decoder Transformer for token sequence-to-sequence tasks, and `generate`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mlx_research.models.decoding import (
    Step,
    beam_search,
    greedy_search,
    prefix_cache,
    prefix_step,
)
from mlx_research.nn.attention import make_causal_mask, make_padding_mask, combine_masks
from mlx_research.nn.pipelined import PipelinedDecoder, PipelinedEncoder
from mlx_research.nn.position import sinusoidal_position_encoding
from mlx_research.nn.transformer import TransformerDecoder, TransformerEncoder


class _DecodeState(nn.Module):
    """Seq2Seq incremental-decoding state in the ``"cache"`` collection.

    ``position``: int32 scalar, the position of the next decoder input (initially 0);
    ``valid``: ``[B, T_max]`` bool, which decoder inputs written so far are not padding (their
    keys stay masked like `Seq2SeqTransformer.decode`'s padding mask), initially False.
    """

    @nn.compact
    def __call__(self, valid: jax.Array) -> tuple[jax.Array | None, jax.Array]:
        """Creates the state from ``valid: [B, T_max]``, or records one position ``valid: [B, 1]``.

        Returns:
          ``(position, valid [B, T_max])``: at creation ``position`` is None and ``valid`` the
          argument; afterwards the position just written and the updated flags.
        """
        initialized = self.has_variable("cache", "valid")
        cached = self.variable("cache", "valid", jnp.zeros, valid.shape, bool)
        position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
        if not initialized:
            return None, valid
        index = position.value
        cached.value = lax.dynamic_update_slice_in_dim(cached.value, valid, index, axis=1)
        position.value = index + 1
        return index, cached.value


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
    `generate` drives it (or, pipelined, a full recomputation) with greedy or beam search.
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
    attention_implementation: str = "xla"
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
            self.decode_state = _DecodeState()

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
        creates the cache (all zeros; usually under ``jax.eval_shape``, see `init_cache`) and
        returns `decode`'s logits. Every later call takes the next position ``[B, 1]`` and returns
        its logits, equal to those of `decode` on the whole prefix (dropout off).

        Cache layout (batch-leading except the scalars): ``decode_state/position`` int32 scalar,
        ``decode_state/valid`` ``[B, T_max]`` bool, and for every decoder layer i
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
            if decoder_inputs.shape[1] != 1:
                raise ValueError(f"decode_step takes one position; got {decoder_inputs.shape}")
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


def _without_cache(variables: dict[str, Any]) -> dict[str, Any]:
    return {name: tree for name, tree in variables.items() if name != "cache"}


def init_cache(
    model: Seq2SeqTransformer,
    variables: dict[str, Any],
    memory: jax.Array,
    inputs: jax.Array,
    max_len: int,
) -> dict[str, Any]:
    """The empty ``"cache"`` collection of `Seq2SeqTransformer.decode_step` (zeros, no compute).

    Args:
      model: a non-pipelined model.
      variables: its variables (``{"params": ...}``, other collections; a "cache" is ignored).
      memory: ``[B, S, D]`` encoder output.
      inputs: ``[B, S]`` encoder inputs.
      max_len: T_max, the number of decoding steps.

    Returns:
      The cache collection (layout in `Seq2SeqTransformer.decode_step`).
    """

    def create(variables: dict, memory: jax.Array, inputs: jax.Array) -> dict:
        tokens = jnp.full((inputs.shape[0], max_len), model.pad_id, jnp.int32)
        _, state = model.apply(
            variables, tokens, memory, inputs, method=Seq2SeqTransformer.decode_step,
            mutable=["cache"],
        )
        return state["cache"]

    shapes = jax.eval_shape(create, _without_cache(variables), memory, inputs)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def make_step(
    model: Seq2SeqTransformer, variables: dict[str, Any], inputs: jax.Array, max_len: int
) -> tuple[Step, dict[str, Any]]:
    """Encodes ``inputs`` once and returns a decoding step and its initial cache.

    Without pipelining the step is `Seq2SeqTransformer.decode_step` with the key/value cache;
    with ``model.pipeline`` (no cache) it re-runs `Seq2SeqTransformer.decode` on the whole token
    buffer (`mlx_research.models.decoding.prefix_step`). Either cache also holds the encoder
    memory ``[B, S, D]`` and ``inputs`` (batch-leading, so beam search tiles and reorders them).

    Args:
      model: the model.
      variables: ``{"params": ..., other collections}``.
      inputs: ``[B, S]`` int32 encoder inputs.
      max_len: number of decoding steps.

    Returns:
      ``(step, cache)`` for `greedy_search` / `beam_search`: ``step(tokens [N] int32, cache) ->
      (logits [N, V] float32, cache)``.
    """
    variables = _without_cache(variables)
    memory = model.apply(variables, inputs, method=Seq2SeqTransformer.encode)
    context = {"memory": memory, "inputs": inputs}
    if model.pipeline:

        def logits_fn(tokens: jax.Array, context: dict) -> jax.Array:
            return model.apply(
                variables, tokens, context["memory"], context["inputs"],
                method=Seq2SeqTransformer.decode,
            )

        return prefix_step(logits_fn), prefix_cache(inputs.shape[0], max_len, model.pad_id, context)

    def step(tokens: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        logits, state = model.apply(
            {**variables, "cache": cache["model"]},
            tokens[:, None],
            cache["context"]["memory"],
            cache["context"]["inputs"],
            method=Seq2SeqTransformer.decode_step,
            mutable=["cache"],
        )
        return logits[:, 0], {**cache, "model": state["cache"]}

    cache = {"model": init_cache(model, variables, memory, inputs, max_len), "context": context}
    return step, cache


def generate(
    model: Seq2SeqTransformer,
    variables: dict[str, Any],
    inputs: jax.Array,
    *,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 1,
    length_penalty: float = 1.0,
) -> jax.Array:
    """Generates target sequences: greedy search (``beam_size == 1``) or beam search.

    Encodes once and decodes with the key/value cache (or by full recomputation with
    ``model.pipeline``, see `make_step`). Pure and jittable (``max_len``, ``beam_size`` and the
    token ids static). With ``model.pipeline`` the decoded rows ``B * beam_size`` must be
    divisible by ``model.pipeline_microbatches``.

    Args:
      model: the model.
      variables: ``{"params": ..., other collections}``.
      inputs: ``[B, S]`` int32 encoder inputs (``model.pad_id`` = padding).
      max_len: number of generated tokens, EOS included.
      bos_id: first decoder input.
      eos_id: end of sequence.
      pad_id: fills the outputs after EOS.
      beam_size: 1 for greedy search.
      length_penalty: beam search's length-normalisation exponent (see `beam_search`).

    Returns:
      ``[B, max_len]`` int32 tokens without BOS, ``pad_id`` after the first EOS.
    """
    step, cache = make_step(model, variables, inputs, max_len)
    ids = dict(batch_size=inputs.shape[0], max_len=max_len, bos_id=bos_id, eos_id=eos_id,
               pad_id=pad_id)
    if beam_size == 1:
        return greedy_search(step, cache, **ids)
    return beam_search(step, cache, beam_size=beam_size, length_penalty=length_penalty, **ids)[0]
