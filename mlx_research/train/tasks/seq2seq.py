"""Synthetic sequence-to-sequence task (reverse / sort / copy) with an encoder-decoder Transformer.

Loss: token cross-entropy summed over the non-padding target tokens, normalised by their number.
Evaluator kind "decode": greedy or beam-search decoding (KV-cached) of the held-out split; token
accuracy (over target tokens incl. EOS) and sequence accuracy (every token right).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlx_research.config_checks import (
    check_batch_divisible,
    check_choices,
    check_ranges,
    from_config,
)
from mlx_research.data import seq2seq as data
from mlx_research.errors import ConfigError
from mlx_research.evaluation.base import SumEvaluator
from mlx_research.losses.classification import cross_entropy
from mlx_research.models.decoding import search, shift_right
from mlx_research.models.seq2seq import Seq2SeqTransformer, make_step
from mlx_research.train.tasks import base


_RANGES = {
    "data.vocab_size": (4, 2**31 - 1),  # PAD, BOS, EOS and at least one symbol
    "data.min_len": (1, None),
    "data.max_len": (1, None),
    "data.num_train": (1, None),
    "label_smoothing": (0, 1),
}


class Task(base.Task):
    """Learn `task` (reverse, sort or copy) of random token sequences; scored by greedy decoding."""

    model_parts = (Seq2SeqTransformer,)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        c = super().default_config()
        c.data = ml_collections.ConfigDict(
            dict(
                task="reverse",  # "reverse" | "sort" | "copy"
                vocab_size=32,  # including PAD=0, BOS=1, EOS=2
                min_len=4,  # sequence length range (symbols)
                max_len=16,
                num_train=1_000_000,  # size of the (generated on the fly) training split
                relabel_symbols=False,  # augmentation: random renaming of the symbols per example
            )
        )
        c.evals = ml_collections.ConfigDict({"decode": {"type": "decode"}})
        c.label_smoothing = 0.0
        return c

    @classmethod
    def evaluator_kinds(cls):
        return {"decode": base.EvaluatorKind(
            defaults=dict(
                num_examples=512,  # evaluation split size
                batch_size=256,  # global evaluation batch
                beam_size=1,  # 1 = greedy decoding, else beam search
                length_penalty=1.0,  # beam search: score = log-prob sum / length ** penalty
            ),
            ranges={"num_examples": (1, None), "beam_size": (1, None),
                    "length_penalty": (0, None)},
            build=cls.decode_evaluator)}

    @classmethod
    def validate_config(cls, config: ml_collections.ConfigDict) -> None:
        super().validate_config(config)
        check_choices(config, {"data.task": ("reverse", "sort", "copy")})
        check_ranges(config, _RANGES)
        d, m = config.data, config.model
        if d.min_len > d.max_len:
            raise ConfigError(f"config: 'data.min_len' = {d.min_len} exceeds 'data.max_len' = "
                              f"{d.max_len}")
        if m.d_model % m.nhead:
            raise ConfigError(f"config: 'model.d_model' = {m.d_model} is not divisible by "
                              f"'model.nhead' = {m.nhead}")
        stages = config.mesh.get("stage", 1)
        if not m.pipeline:
            if stages > 1:
                raise ConfigError(f"config: mesh.stage={stages} needs model.pipeline=True")
            return
        for key in ("num_encoder_layers", "num_decoder_layers"):
            if stages > 1 and m[key] % stages:
                raise ConfigError(f"config: model.{key}={m[key]} is not divisible by "
                                  f"mesh.stage={stages}")
        if m.dropout > 0:
            raise ConfigError(f"config: model.pipeline=True does not support dropout in training; "
                              f"set model.dropout=0 (got {m.dropout})")
        check_batch_divisible(config, m.pipeline_microbatches,
                              f"model.pipeline_microbatches={m.pipeline_microbatches}")

    def __init__(self, config: ml_collections.ConfigDict, dtype: Any):
        super().__init__(config, dtype)
        self.model = from_config(Seq2SeqTransformer, config.model,
                                 vocab_size=config.data.vocab_size, dtype=dtype,
                                 pad_id=data.PAD_ID)

    def _source(self, split: str, size: int) -> data.SyntheticSeq2Seq:
        d = self.config.data
        return data.SyntheticSeq2Seq(
            task=d.task,
            num_examples=size,
            vocab_size=d.vocab_size,
            min_len=d.min_len,
            max_len=d.max_len,
            seed=self.config.seed,
            split=split,
        )

    def train_source(self):
        return self._source("train", self.config.data.num_train)

    def train_transform(self, example, rng):
        d = self.config.data
        if not d.relabel_symbols:
            return example
        return data.relabel_symbols(example, rng, d.task, d.vocab_size)

    def model_inputs(self, batch):
        return dict(inputs=batch["inputs"], decoder_inputs=shift_right(batch["targets"], data.BOS_ID))

    def loss(self, params, model_state, batch, rng):
        logits = self.model.apply(
            {"params": params, **model_state},
            **self.model_inputs(batch),
            train=True,
            rngs={"dropout": rng},
        )
        targets = batch["targets"]
        real = targets != data.PAD_ID
        loss_sum = cross_entropy(
            logits,
            targets,
            ignore_index=data.PAD_ID,
            label_smoothing=self.config.label_smoothing,
            reduction="sum",
        )
        correct = jnp.sum((logits.argmax(-1) == targets) & real)
        accuracy = correct / jnp.maximum(real.sum(), 1)
        return (loss_sum, real.sum()), ({"token_accuracy_teacher_forced": accuracy}, model_state)

    def decode(self, variables, inputs: jax.Array, beam_size: int,
               length_penalty: float) -> jax.Array:
        """inputs [B, S] -> predicted targets [B, S + 1] (greedy with beam_size = 1, or beam
        search)."""
        max_len = inputs.shape[1] + 1
        step, cache = make_step(self.model, variables, inputs, max_len)
        return search(
            step,
            cache,
            beam_size,
            batch_size=inputs.shape[0],
            max_len=max_len,
            bos_id=data.BOS_ID,
            eos_id=data.EOS_ID,
            pad_id=data.PAD_ID,
            length_penalty=length_penalty,
        )

    def decode_evaluator(self, settings: ml_collections.ConfigDict) -> SumEvaluator:
        """Token and sequence accuracy of `decode` on the held-out split (an `evals` entry of
        kind "decode")."""
        decode_and_compare = functools.partial(self._decode_and_compare,
                                               beam_size=settings.beam_size,
                                               length_penalty=settings.length_penalty)
        return SumEvaluator(self._source("eval", settings.num_examples), decode_and_compare,
                            _accuracies, _correctness_map)

    def _decode_and_compare(self, variables, batch, beam_size: int, length_penalty: float):
        """Per example: correct [T] and real [T] token flags, sequence_correct []."""
        predicted = self.decode(variables, batch["inputs"], beam_size, length_penalty)
        targets = batch["targets"]
        real = targets != data.PAD_ID
        correct = (predicted == targets) & real
        return {"correct": correct, "real": real, "sequence_correct": jnp.all(correct == real, 1)}


def _accuracies(sums: dict[str, float]) -> dict[str, float]:
    return {
        "token_accuracy": sums["correct"] / max(sums["real"], 1),
        "sequence_accuracy": sums["sequence_correct"] / max(sums["count"], 1),
    }


def _correctness_map(predictions, batch) -> dict[str, np.ndarray]:
    """16 examples, a row each: green right token, red wrong, black padding."""
    correct, real = predictions["correct"][:16], predictions["real"][:16]
    picture = np.zeros((*real.shape, 3), np.uint8)
    picture[correct] = (40, 180, 60)
    picture[real & ~correct] = (220, 40, 40)
    return {"predictions": np.kron(picture, np.ones((8, 8, 1), np.uint8))}
