"""NADM (Findings of EMNLP 2023): normal-abnormal semantic decoupling with an abnormal memory.

"Normal-Abnormal Decoupling Memory for Medical Report Generation"; reference code
github.com/kzzjk/NADM (``modeling/encoder/my_encoder.py``, ``losses/my_loss.py``,
``losses/my_label_smoothing.py``). Built on `R2Gen` (same visual extractor, encoder, relational-
memory decoder and cached decoding); what NADM adds, paper -> code:

- **Abnormal memory** Omega (`AbnormalMemory`, ``L_m``): the patch features V (``att_embed``,
  ReLU and LN, the reference's visual embedding; before dropout) of abnormal images are matched
  one-to-one to memory entries; every image's features read the memory before the encoder.
- **Abnormal semantics** (``P_a``): a query token attends to the encoder output (`SemanticHead`)
  and predicts which vocabulary words the report uses as abnormal semantics (token tag 3); this
  branch is what optimises the visual network.
- **Normal semantics** (``P_n``), learned *on top of* the abnormal ones: the embeddings of the
  selected abnormal words and a slot token attend to the encoder output under stop-gradient (no
  gradient reaches the visual network or the abnormal words from here: the decoupling).
- **Semantic features** ``S_f``: the embeddings of the top-``semantic_topk`` abnormal and normal
  words (training: the report's words first, then the most probable others; evaluation: the most
  probable), word embedding -> LN -> dropout as in the reference.
- **Report decoder** conditioned on ``V_f`` and ``S_f``: R2Gen's decoder cross-attends to the
  concatenation [encoder output; S_f]. As in the reference (whose decoder gets ``ATT_FEATS.
  detach()``), the report loss does not train the visual network unless
  ``report_trains_visual``.
- **Losses** (`decoupled_report_loss`): token cross-entropy split by token tag into normal
  sentence, abnormal sentence, normal semantic, abnormal semantic and the whole report (the
  design notes' 5 parts), each a mean over its tokens, combined with learned homoscedastic-
  uncertainty weights (parameter ``report_uncertainty`` [5]); the task adds ``L_m`` and the
  asymmetric losses of the two semantic heads. Token tags are ids the caller defines (the task
  passes `data.knowledge.TAGS` indices): a plain ``[B, T]`` int array, the number of tags and
  which ids mark the abnormal and normal semantic words.

Differences from the reference, for static shapes and reuse of R2Gen's layers: the semantic heads
are query-attention layers (R2Gen decoder layers without memory) instead of BERT layers over the
image tokens; the decoder attends to one concatenated context instead of two attentions whose
outputs are concatenated and projected; the memory is read once before the encoder instead of
inside each attention of the encoder and decoder; the reference fills the 25 training tags with
arbitrary non-report words (``topk`` over ties) where this fills them with the model's most
probable words, as at evaluation.

``decouple=False`` gives R2Gen (with the LN above, and the abnormal memory if enabled) trained by
plain token cross-entropy; ``abnormal_memory=False`` drops the memory and ``L_m``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mlx_research.config_fields import config_field
from mlx_research.losses.weighting import uncertainty_weighted_sum
from mlx_research.models.decoding import Step, cached_step
from mlx_research.models.report.abnormal_memory import AbnormalMemory
from mlx_research.models.report.r2gen import R2Gen
from mlx_research.models.report.relational_memory import (
    ACTIVATION_AXES,
    DecoderLayer,
    R2GenLayerNorm,
    dense,
    torch_bias_init,
)
from mlx_research.ops.matching import MATCHERS

Array = jax.Array
Dtype = Any

UNCERTAINTY_FORMS = ("kendall", "liebel", "notes")
# torch nn.Linear's default kernel init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# ------------------------------------------------------------------ targets and losses

def semantic_targets(tokens: Array, tags: Array, vocab_size: int, abnormal_tag: int,
                     normal_tag: int) -> tuple[Array, Array]:
    """Multi-hot semantic targets: the words a report uses as abnormal / normal semantics.

    Args:
      tokens: ``[B, T]`` int report ids.
      tags: ``[B, T]`` int token tag of each token (padding: neither semantic tag).
      vocab_size: V.
      abnormal_tag: the tag of abnormal semantic words.
      normal_tag: the tag of normal semantic words.

    Returns:
      ``(abnormal, normal)``: ``[B, V]`` float32 each; 1 where a token of that id carries
      ``abnormal_tag`` (resp. ``normal_tag``).
    """
    rows = jnp.arange(tokens.shape[0])[:, None]

    def multi_hot(tag: int) -> Array:
        hit = (tags == tag).astype(jnp.float32)
        return jnp.zeros((tokens.shape[0], vocab_size), jnp.float32).at[rows, tokens].max(hit)

    return multi_hot(abnormal_tag), multi_hot(normal_tag)


def report_part_losses(token_losses: Array, tokens: Array, tags: Array, num_tags: int,
                       pad_id: int = 0) -> tuple[Array, Array]:
    """Mean token loss of each report part over the batch: every tag, then the whole report.

    Args:
      token_losses: ``[B, T]`` per-token losses.
      tokens: ``[B, T]`` target ids; ``pad_id`` tokens belong to no part.
      tags: ``[B, T]`` tag of each token, in ``[0, num_tags)``.
      num_tags: number of token tags.
      pad_id: padding id.

    Returns:
      ``(means [num_tags + 1], present [num_tags + 1] bool)``; an empty part has mean 0 and
      ``present`` False.
    """
    real = tokens != pad_id
    masks = jnp.stack([real & (tags == i) for i in range(num_tags)] + [real])
    sums = jnp.sum(jnp.where(masks, token_losses.astype(jnp.float32), 0.0), axis=(1, 2))
    counts = jnp.sum(masks, axis=(1, 2))
    return sums / jnp.maximum(counts, 1), counts > 0


def uncertainty_terms(losses: Array, uncertainty: Array, form: str) -> Array:
    """Per-task terms of a homoscedastic-uncertainty weighting (they sum to the total).

    - "kendall": ``exp(-s) L + s`` (``s = log sigma^2``);
    - "liebel": ``0.5 / sigma^2 L + log(1 + sigma^2)``;
    - "notes" (the design notes): ``1 / sigma^2 L + log(1 + sigma)`` (needs ``sigma > -1``).

    Args:
      losses: ``[T]``.
      uncertainty: ``[T]`` s or sigma.
      form: one of `UNCERTAINTY_FORMS`.

    Returns:
      ``[T]``.
    """
    if form not in UNCERTAINTY_FORMS:
        raise ValueError(f"uncertainty form must be one of {UNCERTAINTY_FORMS}, got {form!r}")
    if form == "notes":
        return losses / jnp.square(uncertainty) + jnp.log1p(uncertainty)
    return jax.vmap(lambda loss, s: uncertainty_weighted_sum(loss[None], s[None], form))(
        losses, uncertainty)


def decoupled_report_loss(token_losses: Array, tokens: Array, tags: Array, uncertainty: Array,
                          form: str, pad_id: int = 0) -> tuple[Array, Array]:
    """NADM's report loss ``L_r``: the uncertainty-weighted sum of the parts' mean losses.

    A part without tokens in the batch is left out entirely (its weighted loss and its
    regulariser), so its uncertainty gets no gradient.

    Args:
      token_losses: ``[B, T]`` per-token cross-entropy.
      tokens: ``[B, T]`` target ids.
      tags: ``[B, T]`` tag of each token, in ``[0, P - 1)``.
      uncertainty: ``[P]`` one per report part: each tag, then the whole report.
      form: one of `UNCERTAINTY_FORMS`.
      pad_id: padding id.

    Returns:
      ``(loss, part means [P])``.
    """
    num_tags = uncertainty.shape[0] - 1
    parts, present = report_part_losses(token_losses, tokens, tags, num_tags, pad_id)
    terms = uncertainty_terms(parts, uncertainty, form)
    return jnp.sum(jnp.where(present, terms, 0.0)), parts


# ------------------------------------------------------------------ modules

class SemanticHead(nn.Module):
    """Multi-label word classifier: query tokens attend to a context; the last query predicts.

    Layers are R2Gen's `DecoderLayer` (self-attention among the queries, cross-attention to the
    context, FFN; pre-norm), then LN, dropout (the reference's 0.1) and a Dense to the vocabulary.

    Attributes:
      vocab_size: classes V.
      num_layers: decoder layers.
      d_model, num_heads, d_ff, dropout: layer sizes and dropout.
      dtype: computation dtype (logits float32).
    """

    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int
    d_ff: int
    dropout: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries: Array, context: Array, train: bool = False) -> Array:
        """``queries [B, Q, D]``, ``context [B, N, D]`` -> logits ``[B, V]`` float32."""
        mask = jnp.ones((1, 1, queries.shape[1], queries.shape[1]), bool)
        x = queries
        for i in range(self.num_layers):
            layer = DecoderLayer(d_model=self.d_model, nhead=self.num_heads,
                                 dim_feedforward=self.d_ff, dropout=self.dropout,
                                 dtype=self.dtype, name=f"layers_{i}")
            x = layer(x, context, None, mask, not train)
        x = R2GenLayerNorm(dtype=self.dtype, name="norm")(x[:, -1])
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        classifier = dense(self.vocab_size, ("embed", "vocab"), torch_bias_init(self.d_model),
                           self.dtype, "classifier", _TORCH_KERNEL_INIT)
        return classifier(x).astype(jnp.float32)


class NADM(R2Gen):
    """NADM on R2Gen: images ``[B, V, H, W, C]`` and decoder inputs ``[B, T]`` -> outputs dict.

    Attributes (besides `R2Gen`'s; its ``use_memory`` is still the decoder's relational memory):
      abnormal_memory: use the abnormal-pattern memory (`AbnormalMemory`) and ``L_m`` (False:
        the no-memory ablation).
      memory_size: memory entries; -1 = twice the patch features per image (reference 98 / 49).
      matcher: memory matching: "device" (optax Hungarian) | "scipy" (host)
        (`mlx_research.ops.matching.linear_sum_assignment`).
      decouple: semantic heads, semantic features and the partitioned report loss; False: R2Gen
        (with the memory if enabled) and plain token cross-entropy.
      semantic_topk: abnormal and normal words each in the semantic features fed to the decoder
        (reference 25).
      semantic_layers: layers of each semantic head (reference 3).
      uncertainty_form: report-part weights: "kendall" | "liebel" | "notes" (initial s = 0 /
        sigma = 1).
      report_trains_visual: the report loss reaches the visual network (the reference detaches
        the decoder's visual features; only with ``decouple``).
      num_token_tags: token tags of the report loss (NADM's 4: normal / abnormal sentence,
        normal / abnormal semantic); ``report_uncertainty`` has one entry per tag and one for
        the whole report.
    """

    abnormal_memory: bool = config_field(True)
    memory_size: int = config_field(-1, low=-1)
    matcher: str = config_field("device", choices=MATCHERS)
    decouple: bool = config_field(True)
    semantic_topk: int = config_field(25, low=1)
    semantic_layers: int = config_field(3, low=1)
    uncertainty_form: str = config_field("liebel", choices=UNCERTAINTY_FORMS)
    report_trains_visual: bool = config_field(False)
    num_token_tags: int = 4

    def setup(self) -> None:
        super().setup()
        if self.matcher not in MATCHERS:
            raise ValueError(f"NADM.matcher: unknown {self.matcher!r}; expected one of {MATCHERS}")
        if self.uncertainty_form not in UNCERTAINTY_FORMS:
            raise ValueError(f"NADM.uncertainty_form: unknown {self.uncertainty_form!r}; "
                             f"expected one of {UNCERTAINTY_FORMS}")
        self.feature_norm = R2GenLayerNorm(dtype=self.dtype)
        if self.abnormal_memory:
            self.memory = AbnormalMemory(self.memory_size, self.num_heads, self.dropout,
                                         self.matcher, self.dtype)
        if not self.decouple:
            return
        if not 1 <= self.semantic_topk <= self.vocab_size:
            raise ValueError(f"NADM.semantic_topk = {self.semantic_topk} must be in "
                             f"[1, vocab_size = {self.vocab_size}]")
        head = dict(vocab_size=self.vocab_size, num_layers=self.semantic_layers,
                    d_model=self.d_model, num_heads=self.num_heads, d_ff=self.d_ff,
                    dropout=self.dropout, dtype=self.dtype)
        self.abnormal_head = SemanticHead(**head)
        self.normal_head = SemanticHead(**head)
        token = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (None, "embed"))
        self.abnormal_query = self.param("abnormal_query", token, (1, self.d_model))
        self.normal_slot = self.param("normal_slot", token, (1, self.d_model))
        self.tag_embed = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype,
                                  embedding_init=nn.with_logical_partitioning(
                                      nn.initializers.normal(1.0), ("vocab", "embed")))
        self.tag_norm = R2GenLayerNorm(dtype=self.dtype)
        self.tag_dropout = nn.Dropout(self.dropout)
        init = (nn.initializers.zeros if self.uncertainty_form == "kendall"
                else nn.initializers.ones)
        self.report_uncertainty = self.param("report_uncertainty", init,
                                             (self.num_token_tags + 1,))

    def patch_features(self, images: Array, train: bool = False) -> Array:
        """R2Gen's visual extractor and ``att_embed`` + ReLU, then LN (the reference's visual
        embedding; it puts the features on the scale of the N(0, 1) memory entries); no dropout.

        Returns:
          ``[B, N, d_model]``.
        """
        return self.feature_norm(nn.relu(self.att_embed(self.view_patches(images, train))))

    def _tags(self, logits: Array, targets: Array | None, train: bool) -> Array:
        """Embeddings ``[B, K, D]`` of the top-K words: the targets' first in training."""
        scores = jax.nn.sigmoid(lax.stop_gradient(logits))
        if train and targets is not None:
            scores = scores + targets
        _, ids = lax.top_k(scores, self.semantic_topk)
        return self.tag_dropout(self.tag_norm(self.tag_embed(ids)), deterministic=not train)

    def context(self, images: Array, abnormal_targets: Array | None = None,
                normal_targets: Array | None = None, abnormal: Array | None = None,
                train: bool = False) -> tuple[Array, dict[str, Array]]:
        """What the report decoder attends to, and the auxiliary outputs.

        Args:
          images: ``[B, V, H, W, C]``.
          abnormal_targets: ``[B, vocab]`` multi-hot (`semantic_targets`), used in training.
          normal_targets: ``[B, vocab]`` multi-hot, used in training.
          abnormal: ``[B]`` bool, the images matched to the memory in training; None: no ``L_m``.
          train: dropout, batch statistics, target-first word selection.

        Returns:
          ``(context [B, N (+ 2 K), D], aux)``; aux: ``memory_loss`` (scalar, 0 without memory or
          ``abnormal``) and, with ``decouple``, ``abnormal_logits`` / ``normal_logits``
          ``[B, vocab]``.
        """
        features = self.patch_features(images, train)
        x = self.feature_dropout_layer(features, deterministic=not train)
        aux = {"memory_loss": jnp.zeros((), jnp.float32)}
        if self.abnormal_memory:
            x, aux["memory_loss"] = self.memory(x, features, abnormal if train else None, train)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        for layer in self.encoder_layers:
            x = layer(x, not train)
        visual = self.encoder_norm(x)
        if not self.decouple:
            return visual, aux
        batch = images.shape[0]
        query = jnp.broadcast_to(self.abnormal_query.astype(self.dtype), (batch, 1, self.d_model))
        aux["abnormal_logits"] = self.abnormal_head(query, visual, train)
        abnormal_tags = self._tags(aux["abnormal_logits"], abnormal_targets, train)
        slot = jnp.broadcast_to(self.normal_slot.astype(self.dtype), (batch, 1, self.d_model))
        queries = jnp.concatenate([lax.stop_gradient(abnormal_tags), slot], axis=1)
        aux["normal_logits"] = self.normal_head(queries, lax.stop_gradient(visual), train)
        normal_tags = self._tags(aux["normal_logits"], normal_targets, train)
        if not self.report_trains_visual:
            visual = lax.stop_gradient(visual)
        return jnp.concatenate([visual, abnormal_tags, normal_tags], axis=1), aux

    def __call__(self, images: Array, decoder_inputs: Array,
                 abnormal_targets: Array | None = None, normal_targets: Array | None = None,
                 abnormal: Array | None = None, train: bool = False) -> dict[str, Array]:
        """Teacher-forced forward pass (arguments as `context`, plus ``decoder_inputs [B, T]``).

        Returns:
          ``{"logits": [B, T, vocab] float32, **aux}`` (see `context`) and, with ``decouple``,
          ``"uncertainty"``: the ``[num_token_tags + 1]`` parameter of
          `decoupled_report_loss`.
        """
        context, aux = self.context(images, abnormal_targets, normal_targets, abnormal, train)
        outputs = {"logits": self.decode(context, decoder_inputs, train), **aux}
        if self.decouple:
            outputs["uncertainty"] = self.report_uncertainty
        return outputs


def make_step(model: NADM, variables: dict[str, Any], images: Array,
              max_len: int) -> tuple[Step, dict[str, Any]]:
    """`NADM.context` of ``images [B, V, H, W, C]`` in evaluation mode (predicted semantic words),
    then the cached decoding step of `R2Gen.decode_step` over it and its initial cache (for
    `mlx_research.models.decoding.search`)."""
    context, _ = model.apply(variables, images, method=NADM.context)
    return cached_step(model, variables, R2Gen.decode_step, (context,), max_len)
