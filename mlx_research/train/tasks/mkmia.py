"""MKMIA report generation (`mlx_research.models.report.mkmia`) on the report task's data.

Everything but the model, the loss and the generation is the report task's (data, vocabulary,
evaluator). Every example carries the patient's prior report (``prior_tokens``, all PAD without
one); the knowledge dictionary's phrases are encoded once into a constant ``[K, Lk]`` token array
(`dictionary_tokens`) held by the model.

Loss (per training batch of B studies):

    L = CE + loss.w_cos * L_cos + loss.w_con * L_con + loss.w_kl * L_kl

- CE: token cross-entropy averaged over the batch's report tokens (EOS included, PAD excluded);
- L_cos: mean over the studies of ``1 - cos(image_global, report_global)`` (coarse);
- L_con: symmetric InfoNCE over the batch at ``loss.temperature`` (coarse);
- L_kl: region-word alignment KL at ``loss.fine_temperature`` (fine; "multilevel" only),
  defined in `mlx_research.models.report.alignment`.

The terms have different normalisers, so `loss` returns ``(B * L, B)``: the trainer's division by
the summed weight gives L for one batch; with gradient accumulation it gives the mean of the
micro-batches' L (the contrastive terms then contrast within a micro-batch). ``alignment="coarse"``
drops L_kl (as does ``loss.w_kl = 0``), ``"none"`` all alignment terms.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from mlx_research.config_checks import check_ranges, from_config
from mlx_research.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary
from mlx_research.errors import ConfigError
from mlx_research.losses.classification import cross_entropy
from mlx_research.models.decoding import Cache, Step, shift_right
from mlx_research.models.report.alignment import coarse_alignment_losses, fine_alignment_kl
from mlx_research.models.report.mkmia import KNOWLEDGE_FIELDS, MKMIA, make_step
from mlx_research.train.tasks import report

_RANGES = {
    "data.knowledge_len": (-1, None),
    "loss.w_cos": (0, None),
    "loss.w_con": (0, None),
    "loss.w_kl": (0, None),
    "loss.temperature": (1e-4, None),
    "loss.fine_temperature": (1e-4, None),
}


def dictionary_tokens(
    knowledge: dict, vocab: Vocabulary, length: int = -1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token arrays of a knowledge dictionary's phrases, one row per phrase.

    Organs in the dictionary's order, within each the fields `KNOWLEDGE_FIELDS` in order, phrases
    in their order. A phrase none of whose words is in the vocabulary (all "<unk>") is left out.

    Args:
      knowledge: ``{organ: {"aliases": [...], "normal": [...], "abnormal": [...]}}``.
      vocab: the report vocabulary.
      length: tokens per row, EOS included (longer phrases are cut); -1: the longest phrase + 1.

    Returns:
      ``(tokens [K, Lk] int32 (EOS, then PAD), organs [K] int32, fields [K] int32)``.

    Raises:
      ValueError: no phrase has a word in the vocabulary.
    """
    phrases = [(organ, field, phrase) for organ, entry in enumerate(knowledge.values())
               for field, name in enumerate(KNOWLEDGE_FIELDS) for phrase in entry[name]
               if any(vocab.token_id(w) != UNK_ID for w in phrase.split())]
    if not phrases:
        raise ValueError("knowledge dictionary: no phrase has a word in the report vocabulary")
    if length < 0:
        length = max(len(p.split()) for _, _, p in phrases) + 1
    tokens = np.stack([vocab.encode(p, length) for _, _, p in phrases])
    organs, fields = (np.array(column, np.int32) for column in list(zip(*phrases))[:2])
    return tokens, organs, fields


def _rows(array: np.ndarray) -> tuple:
    """A numpy array as nested tuples of ints (a hashable module attribute)."""
    return tuple(map(_rows, array)) if array.ndim > 1 else tuple(int(x) for x in array)


class Task(report.Task):
    """MKMIA: R2Gen plus knowledge fusion (dictionary, prior report) and multilevel alignment."""

    model_parts = (MKMIA,)
    uses_extras = True

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        c = super().default_config()
        c.data.knowledge_len = -1  # tokens per dictionary phrase incl. EOS (-1: longest + 1)
        c.loss = ml_collections.ConfigDict(dict(
            w_cos=0.1,  # coarse: cosine similarity loss of the matched image/report embeddings
            w_con=0.5,  # coarse: InfoNCE over the batch
            w_kl=0.5,  # fine: region-word alignment KL (alignment="multilevel")
            temperature=0.1,  # InfoNCE softmax temperature
            fine_temperature=0.1,  # region-word similarity softmax temperature
        ))
        return c

    @classmethod
    def validate_config(cls, config: ml_collections.ConfigDict) -> None:
        super().validate_config(config)
        check_ranges(config, _RANGES)
        if 0 <= config.data.knowledge_len < 2:
            raise ConfigError(f"config: 'data.knowledge_len' = {config.data.knowledge_len} "
                              "leaves no room for a word before EOS (use -1 or >= 2)")

    def _build_model(self) -> MKMIA:
        m = self.config.model
        knowledge = {}
        if m.use_dictionary:
            tokens, organs, fields = dictionary_tokens(self.knowledge(), self.vocab,
                                                       self.config.data.knowledge_len)
            if tokens.shape[1] > self.max_len:
                raise ConfigError(f"config: 'data.knowledge_len': dictionary phrases of "
                                  f"{tokens.shape[1]} tokens exceed the report length "
                                  f"{self.max_len}; set it to at most {self.max_len}")
            knowledge = dict(knowledge_tokens=_rows(tokens), knowledge_organs=_rows(organs),
                             knowledge_fields=_rows(fields))
        return from_config(MKMIA, m, vocab_size=self.output_size(), max_len=self.max_len,
                           pad_id=PAD_ID, eos_id=EOS_ID, dtype=self.dtype, **knowledge)

    def model_inputs(self, batch):
        """Images, teacher-forcing inputs, the prior reports and the report (for the alignment)."""
        return {"images": batch["image"], "decoder_inputs": shift_right(batch["tokens"], BOS_ID),
                "prior_tokens": batch["prior_tokens"], "report_tokens": batch["tokens"]}

    def loss(self, params, model_state, batch, rng):
        """``(B * L, B)`` with L of the module doc; metrics hold every term (``loss_ce``, ...)."""
        out, new_state = self.model.apply(
            {"params": params, **model_state}, **self.model_inputs(batch), train=True,
            rngs={"dropout": rng}, mutable=list(model_state))
        tokens, logits = batch["tokens"], out["logits"]
        real = tokens != PAD_ID
        terms = {"ce": cross_entropy(logits, tokens, ignore_index=PAD_ID, reduction="mean")}
        total = terms["ce"]
        weights = self.config.loss
        if self.model.alignment != "none":
            terms["cos"], terms["con"] = coarse_alignment_losses(
                out["image_global"], out["report_global"], weights.temperature)
            total = total + weights.w_cos * terms["cos"] + weights.w_con * terms["con"]
        if self.model.alignment == "multilevel" and weights.w_kl > 0:
            terms["kl"] = fine_alignment_kl(out["regions"], out["words"], out["word_valid"],
                                            weights.fine_temperature)
            total = total + weights.w_kl * terms["kl"]
        accuracy = jnp.sum((logits.argmax(-1) == tokens) & real) / jnp.maximum(real.sum(), 1)
        metrics = {"token_accuracy_teacher_forced": accuracy,
                   **{f"loss_{name}": value for name, value in terms.items()}}
        size = jnp.float32(tokens.shape[0])
        return (total * size, size), (metrics, {**model_state, **new_state})

    def decoding_step(self, variables: Any, batch: Any) -> tuple[Step, Cache]:
        """Decoding over the images fused with the knowledge and the prior reports."""
        return make_step(self.model, variables, batch["image"], batch["prior_tokens"],
                         self.max_len)
