"""MKMIA: radiology report generation with medical knowledge and multilevel image-report alignment.

Zhao, Zhao, Gong and Li, "Radiology report generation with medical knowledge and multilevel
image-report alignment: A new method and its verification", Artificial Intelligence in Medicine
146 (2023), doi:10.1016/j.artmed.2023.102714. The paper has no public code; this is a first public
implementation, written from its abstract and the project's design notes (which give its parts and
its four losses, not their equations). How each part of the paper maps to the code:

- Backbone (the paper builds on R2Gen): `MKMIA` *is* an `R2Gen` (subclass) with the same visual
  extractor, encoder, memory-driven decoder, parameter names and cached decoding; with the
  knowledge and alignment switched off it computes R2Gen exactly.
- Medical knowledge enhancement (MKE), general medical knowledge (MK): the dictionary whose keys
  are organs/topics and whose values are their aliases, normal descriptions and abnormality
  candidates ("explicit exception candidates"). Every phrase of it is one *entry*: its tokens
  (``knowledge_tokens [K, Lk]``, built once by the task) go through the text encoder below and
  are mean-pooled over their words, then the learned embeddings of its organ (the key) and of its
  field (alias / description / candidate) are added -> ``[K, D]``, the same for every study.
- MKE, historical knowledge (HK): the patient's prior report (``prior_tokens [B, L]``), encoded
  token by token by the same text encoder plus a learned "history" vector -> ``[B, L, D]``. A
  study without a prior (all PAD) has an empty history: those keys are masked, and a study with no
  key at all (no prior and ``use_dictionary=False``) skips the attention.
- Text encoder (shared by dictionary, history and report): the decoder's token embedding table
  (shared) times sqrt(D) plus sinusoidal positions, ``knowledge_layers`` pre-norm Transformer
  layers with key-padding masks (`TextLayer`), a final R2Gen LayerNorm. A sequence is read up to
  and including its first EOS (`alignment.sequence_mask`).
- Fusion with the image features: `KnowledgeFusion`, a pre-norm residual cross-attention in which
  every visual token (R2Gen encoder output) attends to the dictionary entries and the history
  tokens, then an R2Gen LayerNorm; its output is the memory the decoder attends to.
- Multilevel image-report alignment (MIRA), coarse then fine: the visual tokens *before* fusion
  (so that the alignment shapes the image features themselves, not a copy of the prior report)
  and the ground-truth report's words from the text encoder are projected to ``align_dim``
  (`__call__` outputs ``regions``, ``words``); the global embeddings are their (masked) means.
  Losses in `mlx_research.models.report.alignment`: coarse = cosine similarity loss + InfoNCE,
  fine = KL divergence between region-word alignment distributions. The report loss is the
  token cross-entropy (the task combines them; see `mlx_research.train.tasks.mkmia`).

Switches (ablations): ``use_dictionary``, ``use_history`` (both False: no fusion layer) and
``alignment`` ("multilevel" | "coarse" | "none"; "none" builds no projection).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlx_research.config_fields import config_field
from mlx_research.models.decoding import Step, cached_step
from mlx_research.models.report.alignment import masked_mean, sequence_mask
from mlx_research.models.report.r2gen import R2Gen
from mlx_research.models.report.relational_memory import ACTIVATION_AXES, R2GenLayerNorm
from mlx_research.nn.attention import make_padding_mask
from mlx_research.nn.position import sinusoidal_position_encoding
from mlx_research.nn.transformer import TransformerLayerBase

Array = jax.Array
Dtype = Any

ALIGNMENTS = ("multilevel", "coarse", "none")
KNOWLEDGE_FIELDS = ("aliases", "normal", "abnormal")
"""Dictionary fields; a phrase's field index is its position here."""


class TextLayer(TransformerLayerBase):
    """Pre-norm Transformer encoder layer with a key-padding mask (R2Gen's layer plus a mask)."""

    @nn.compact
    def __call__(self, x: Array, valid: Array, deterministic: bool = True) -> Array:
        """``x: [B, L, D]``, ``valid: [B, L]`` bool -> ``[B, L, D]`` (only valid keys attended)."""

        def self_attention(h: Array) -> Array:
            return self._attention("self_attn")(h, h, make_padding_mask(None, valid),
                                                deterministic=deterministic)

        x = self._pre_norm(x, R2GenLayerNorm(dtype=self.dtype, name="norm_attn"),
                           self_attention, deterministic)
        return self._pre_norm(x, R2GenLayerNorm(dtype=self.dtype, name="norm_ffn"),
                              lambda h: self._mlp()(h, deterministic), deterministic)


class KnowledgeFusion(TransformerLayerBase):
    """Visual tokens attend to knowledge tokens (dictionary entries and history):
    ``LN(x + dropout(MHA(LN(x), LN(k), mask)))`` with R2Gen LayerNorms, the attention skipped for
    a study with no valid key (``LN(x)`` then). No FFN: the decoder's layers follow."""

    @nn.compact
    def __call__(self, x: Array, keys: Array, valid: Array, deterministic: bool = True) -> Array:
        """Fuses knowledge into visual tokens.

        Args:
          x: ``[B, N, D]`` visual tokens.
          keys: ``[B, M, D]`` knowledge tokens.
          valid: ``[B, M]`` bool, the real knowledge tokens.
          deterministic: disables dropout.

        Returns:
          ``[B, N, D]``.
        """
        h = R2GenLayerNorm(dtype=self.dtype, name="norm_query")(x)
        k = R2GenLayerNorm(dtype=self.dtype, name="norm_knowledge")(keys)
        h = self._attention("cross_attn")(h, k, make_padding_mask(None, valid),
                                          deterministic=deterministic)
        x = self._residual(x, jnp.where(valid.any(axis=-1)[:, None, None], h, 0.0), deterministic)
        return nn.with_logical_constraint(R2GenLayerNorm(dtype=self.dtype, name="norm_out")(x),
                                          ACTIVATION_AXES)


class MKMIA(R2Gen):
    """R2Gen with medical-knowledge fusion and image-report alignment outputs (module doc).

    Attributes (besides `R2Gen`'s):
      knowledge_tokens: ``[K, Lk]`` token ids of the dictionary phrases (EOS, then PAD), a tuple
        of tuples so that the module stays hashable; required with ``use_dictionary``.
      knowledge_organs: ``[K]`` organ (dictionary key) index of each phrase.
      knowledge_fields: ``[K]`` field index of each phrase (`KNOWLEDGE_FIELDS`).
      use_dictionary: fuse the knowledge dictionary's phrases into the visual tokens (MK).
      use_history: fuse the patient's prior report's tokens into the visual tokens (HK).
      alignment: "multilevel" (coarse + fine) | "coarse" (both output the alignment embeddings;
        the task picks the losses) | "none".
      knowledge_layers: Transformer layers of the text encoder of the dictionary, prior and
        report (0: embeddings only).
      align_dim: width A of the alignment embeddings.
      eos_id: end-of-sequence id (text sequences are read up to it).
    """

    knowledge_tokens: tuple[tuple[int, ...], ...] = ()
    knowledge_organs: tuple[int, ...] = ()
    knowledge_fields: tuple[int, ...] = ()
    use_dictionary: bool = config_field(True)
    use_history: bool = config_field(True)
    alignment: str = config_field("multilevel", choices=ALIGNMENTS)
    knowledge_layers: int = config_field(1, low=0)
    align_dim: int = config_field(64, low=1)
    eos_id: int = 2

    def setup(self) -> None:
        super().setup()
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"MKMIA.alignment: unknown {self.alignment!r}; expected one of "
                             f"{ALIGNMENTS}")
        if self.use_dictionary and not self.knowledge_tokens:
            raise ValueError("MKMIA.use_dictionary needs knowledge_tokens (no dictionary phrase)")
        if not len(self.knowledge_tokens) == len(self.knowledge_organs) == len(
                self.knowledge_fields):
            raise ValueError("MKMIA: knowledge_tokens, knowledge_organs and knowledge_fields "
                             "must have one entry per phrase")
        block = dict(d_model=self.d_model, nhead=self.num_heads, dim_feedforward=self.d_ff,
                     dropout=self.dropout, dtype=self.dtype)
        self.text_layers = [TextLayer(**block) for _ in range(self.knowledge_layers)]
        self.text_norm = R2GenLayerNorm(dtype=self.dtype)
        self.text_dropout = nn.Dropout(self.dropout)
        table = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed"))
        if self.use_dictionary:
            self.organ_embed = nn.Embed(max(self.knowledge_organs) + 1, self.d_model,
                                        dtype=self.dtype, embedding_init=table)
            self.field_embed = nn.Embed(len(KNOWLEDGE_FIELDS), self.d_model, dtype=self.dtype,
                                        embedding_init=table)
        if self.use_history:
            self.history_embed = self.param(
                "history_embed",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                (self.d_model,))
        if self.use_dictionary or self.use_history:
            self.fusion = KnowledgeFusion(**block)
        if self.alignment != "none":
            # Bias-free (as CLIP's projections): a shared bias would align every pair at once.
            kernel = nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                  ("embed", None))
            self.visual_proj = nn.Dense(self.align_dim, use_bias=False, dtype=self.dtype,
                                        kernel_init=kernel)
            self.text_proj = nn.Dense(self.align_dim, use_bias=False, dtype=self.dtype,
                                      kernel_init=kernel)

    def encode_text(self, tokens: Array, train: bool = False) -> tuple[Array, Array]:
        """The text encoder (module doc) on token sequences.

        Args:
          tokens: ``[B, L]`` int32 (``L <= max_len``); read up to the first EOS.
          train: dropout on.

        Returns:
          ``(features [B, L, D], valid [B, L] bool)``; features at invalid positions are
          meaningless and must be masked by the caller.
        """
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"text of length {length} exceeds MKMIA.max_len {self.max_len}")
        valid = sequence_mask(tokens, self.pad_id, self.eos_id)
        x = self.embed(tokens) * jnp.sqrt(jnp.float32(self.d_model)).astype(self.dtype)
        x = x + sinusoidal_position_encoding(length, self.d_model).astype(self.dtype)
        x = self.text_dropout(x, deterministic=not train)
        for layer in self.text_layers:
            x = layer(x, valid, not train)
        return self.text_norm(x), valid

    def dictionary(self, train: bool = False) -> Array:
        """The dictionary entries ``[K, D]``: pooled phrase encoding + organ + field embeddings."""
        tokens = jnp.asarray(self.knowledge_tokens, jnp.int32)
        features, valid = self.encode_text(tokens, train)
        return (masked_mean(features, valid)
                + self.organ_embed(jnp.asarray(self.knowledge_organs, jnp.int32))
                + self.field_embed(jnp.asarray(self.knowledge_fields, jnp.int32)))

    def fuse(self, visual: Array, prior_tokens: Array, train: bool = False) -> Array:
        """Knowledge enhancement of the visual tokens ``[B, N, D]`` (identity when both the
        dictionary and the history are off).

        Args:
          visual: ``[B, N, D]`` encoder output.
          prior_tokens: ``[B, L]`` int32 prior report (all PAD: no prior).
          train: dropout on.

        Returns:
          ``[B, N, D]``.
        """
        batch = visual.shape[0]
        keys, valid = [], []
        if self.use_dictionary:
            entries = self.dictionary(train)
            keys.append(jnp.broadcast_to(entries[None], (batch, *entries.shape)))
            valid.append(jnp.ones((batch, entries.shape[0]), bool))
        if self.use_history:
            history, history_valid = self.encode_text(prior_tokens, train)
            keys.append(history + self.history_embed.astype(self.dtype))
            valid.append(history_valid)
        if not keys:
            return visual
        return self.fusion(visual, jnp.concatenate(keys, axis=1), jnp.concatenate(valid, axis=1),
                           not train)

    def encode_fused(self, images: Array, prior_tokens: Array, train: bool = False) -> Array:
        """R2Gen's `encode` then `fuse`: ``[B, V, H, W, C]``, ``[B, L]`` -> memory ``[B, N, D]``."""
        return self.fuse(self.encode(images, train), prior_tokens, train)

    def __call__(
        self,
        images: Array,
        decoder_inputs: Array,
        prior_tokens: Array,
        report_tokens: Array | None = None,
        train: bool = False,
    ) -> dict[str, Array]:
        """Teacher-forced logits and, given the report, the alignment embeddings.

        Args:
          images: ``[B, V, H, W, C]``.
          decoder_inputs: ``[B, T]`` int32, BOS first.
          prior_tokens: ``[B, L]`` int32 prior reports (all PAD: none).
          report_tokens: ``[B, T]`` int32 ground-truth report (EOS, PAD) for the alignment.
          train: dropout on, batch norm on batch statistics.

        Returns:
          ``{"logits": [B, T, vocab_size] float32}``, plus, with ``alignment != "none"`` and
          ``report_tokens``: ``"regions" [B, N, A]`` (projected visual tokens before fusion),
          ``"words" [B, T, A]``, ``"word_valid" [B, T]`` bool, ``"image_global" [B, A]`` (mean
          of the regions), ``"report_global" [B, A]`` (mean of the valid words).
        """
        visual = self.encode(images, train)
        out = {"logits": self.decode(self.fuse(visual, prior_tokens, train), decoder_inputs,
                                     train)}
        if self.alignment == "none" or report_tokens is None:
            return out
        words, word_valid = self.encode_text(report_tokens, train)
        regions = self.visual_proj(visual).astype(jnp.float32)
        words = self.text_proj(words).astype(jnp.float32)
        return {**out, "regions": regions, "words": words, "word_valid": word_valid,
                "image_global": regions.mean(axis=1),
                "report_global": masked_mean(words, word_valid)}


def make_step(model: MKMIA, variables: dict[str, Any], images: Array, prior_tokens: Array,
              max_len: int) -> tuple[Step, dict[str, Any]]:
    """The knowledge-fused memory of the studies (`MKMIA.encode_fused`, evaluation mode), then
    the cached decoding step of `R2Gen.decode_step` over it and its initial cache (for
    `mlx_research.models.decoding.search`).

    Args:
      model: the model.
      variables: ``{"params": ..., "batch_stats": ...}``.
      images: ``[B, V, H, W, C]``.
      prior_tokens: ``[B, L]`` int32 prior reports of the studies (all PAD: none).
      max_len: number of decoding steps (at most ``model.max_len``).

    Returns:
      ``(step, cache)`` (`mlx_research.models.decoding.cached_step`).
    """
    encoded = model.apply(variables, images, prior_tokens, method=MKMIA.encode_fused)
    return cached_step(model, variables, R2Gen.decode_step, (encoded,), max_len)
