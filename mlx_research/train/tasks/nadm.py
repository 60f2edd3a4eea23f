"""NADM report generation (`mlx_research.models.report.nadm`) on the data and evaluator of the
report task (synthetic chest X-rays by default, or an R2Gen folder).

Loss per (micro-)batch:
``L = L_r + loss.memory_weight L_m + loss.abnormal_weight ASL(P_a, y_a) + loss.normal_weight
ASL(P_n, y_n)``.

- ``L_r``: token cross-entropy split by token tag (normal sentence, abnormal sentence, normal
  semantic, abnormal semantic, whole report), each part a mean over its tokens in the batch,
  combined with learned uncertainty weights (``model.uncertainty_form``); with
  ``model.decouple=False`` the plain mean token cross-entropy.
- ``L_m``: the abnormal-memory loss over the batch's abnormal images, a study being abnormal when
  its "No Finding" label is not positive (the reference counts a study as abnormal when its
  report has abnormal semantic words; the labels say the same on the synthetic data).
- ``ASL``: the asymmetric loss (gamma_neg 5, gamma_pos 0, clip 0.05, focusing weight without
  gradient, as the reference) summed over the vocabulary and averaged over the batch; targets
  ``y_a`` / ``y_n`` are the words tagged abnormal / normal semantic in the report.

The parts are means over the batch with learned weights, which a per-token normaliser cannot
express, so `loss` returns ``(B * L, B)``: the trainer's division gives ``L`` exactly for the
batch; with gradient accumulation it averages the micro-batches' ``L``.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from mlx_research.config_checks import check_ranges, from_config
from mlx_research.data.knowledge import TAGS
from mlx_research.data.tokenizer import BOS_ID, PAD_ID
from mlx_research.errors import ConfigError
from mlx_research.losses.classification import asymmetric_loss, cross_entropy
from mlx_research.models.decoding import Cache, Step, shift_right
from mlx_research.models.report import nadm
from mlx_research.train.tasks import report

_RANGES = {
    "loss.memory_weight": (0, None),
    "loss.abnormal_weight": (0, None),
    "loss.normal_weight": (0, None),
    "loss.asl_gamma_neg": (0, None),
    "loss.asl_gamma_pos": (0, None),
    "loss.asl_clip": (0, 1),
}
_REPORT_PARTS = (*TAGS, "report")  # the parts of the report loss: each token tag, the report


class Task(report.Task):
    """NADM: R2Gen + abnormal memory + decoupled normal/abnormal semantics."""

    model_parts = (nadm.NADM,)
    uses_extras = True

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        c = super().default_config()
        c.loss = ml_collections.ConfigDict(dict(
            memory_weight=1.0,  # L_m
            abnormal_weight=0.1,  # ASL of the abnormal semantics (reference 0.1)
            normal_weight=0.1,  # ASL of the normal semantics (reference 0.1)
            asl_gamma_neg=5.0, asl_gamma_pos=0.0, asl_clip=0.05,  # ASL (reference values)
        ))
        return c

    @classmethod
    def validate_config(cls, config: ml_collections.ConfigDict) -> None:
        super().validate_config(config)
        check_ranges(config, _RANGES)

    def _build_model(self) -> nadm.NADM:
        if self.config.model.semantic_topk > self.output_size():
            raise ConfigError(f"config: 'model.semantic_topk' = {self.config.model.semantic_topk} "
                              f"exceeds the vocabulary ({self.output_size()} ids)")
        return from_config(nadm.NADM, self.config.model, vocab_size=self.output_size(),
                           max_len=self.max_len, pad_id=PAD_ID, dtype=self.dtype,
                           num_token_tags=len(TAGS))

    def model_inputs(self, batch):
        tokens = batch["tokens"]
        abnormal_targets, normal_targets = nadm.semantic_targets(
            tokens, batch["token_tags"], self.output_size(),
            abnormal_tag=TAGS.index("abnormal_semantic"), normal_tag=TAGS.index("normal_semantic"))
        return {"images": batch["image"], "decoder_inputs": shift_right(tokens, BOS_ID),
                "abnormal_targets": abnormal_targets, "normal_targets": normal_targets,
                "abnormal": batch["labels"][:, self.observations().index("No Finding")] < 0.5}

    def loss(self, params, model_state, batch, rng):
        inputs = self.model_inputs(batch)
        outputs, new_state = self.model.apply(
            {"params": params, **model_state}, **inputs, train=True, rngs={"dropout": rng},
            mutable=list(model_state))
        m, w = self.model, self.config.loss
        tokens, logits = batch["tokens"], outputs["logits"]
        real = tokens != PAD_ID
        token_losses = cross_entropy(logits, tokens, ignore_index=PAD_ID, reduction="none")
        metrics = {"token_accuracy_teacher_forced":
                   jnp.sum((logits.argmax(-1) == tokens) & real) / jnp.maximum(real.sum(), 1)}
        total = jnp.zeros((), jnp.float32)
        if m.abnormal_memory:
            metrics["loss_memory"] = outputs["memory_loss"]
            total += w.memory_weight * outputs["memory_loss"]
        if m.decouple:
            report_loss, parts = nadm.decoupled_report_loss(
                token_losses, tokens, batch["token_tags"], outputs["uncertainty"],
                m.uncertainty_form, PAD_ID)
            metrics.update({f"ce_{name}": parts[i] for i, name in enumerate(_REPORT_PARTS)})
            for name, weight in (("abnormal", w.abnormal_weight), ("normal", w.normal_weight)):
                semantic = asymmetric_loss(
                    outputs[f"{name}_logits"], inputs[f"{name}_targets"],
                    gamma_neg=w.asl_gamma_neg, gamma_pos=w.asl_gamma_pos, clip=w.asl_clip,
                    disable_torch_grad_focal_loss=True, reduction="none").sum(-1).mean()
                metrics[f"loss_semantic_{name}"] = semantic
                total += weight * semantic
        else:
            report_loss = jnp.sum(token_losses) / jnp.maximum(real.sum(), 1)
        metrics["loss_report"] = report_loss
        total += report_loss
        batch_size = tokens.shape[0]
        return (batch_size * total, jnp.float32(batch_size)), (metrics, {**model_state,
                                                                         **new_state})

    def decoding_step(self, variables, batch) -> tuple[Step, Cache]:
        """Decoding over `NADM.context` (predicted semantic words), and its initial cache."""
        return nadm.make_step(self.model, variables, batch["image"], self.max_len)
