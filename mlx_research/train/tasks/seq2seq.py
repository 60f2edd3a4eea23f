"""Synthetic sequence-to-sequence task (reverse / sort / copy) with an encoder-decoder Transformer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlx_research.data import seq2seq as data
from mlx_research.losses.classification import cross_entropy
from mlx_research.models.decoding import greedy_decode
from mlx_research.models.seq2seq import Seq2SeqTransformer
from mlx_research.train.errors import ConfigError
from mlx_research.train.tasks import base


def shift_right(targets: jax.Array) -> jax.Array:
    """[B, T] targets -> decoder inputs [B, T]: BOS, then targets[:, :-1]."""
    bos = jnp.full((targets.shape[0], 1), data.BOS_ID, targets.dtype)
    return jnp.concatenate([bos, targets[:, :-1]], axis=1)


class Task(base.Task):
    """Learn `task` (reverse, sort or copy) of random token sequences; scored by greedy decoding."""

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict(
            dict(
                d_model=128,  # model width
                nhead=4,  # attention heads
                num_encoder_layers=2,
                num_decoder_layers=2,
                dim_feedforward=512,  # FFN hidden size
                dropout=0.1,
                norm_first=True,  # pre-LN (True) or post-LN (False) blocks
                pipeline=False,  # stacked layers run as a GPipe pipeline over mesh axis "stage"
                pipeline_microbatches=1,  # GPipe micro-batches per (data-parallel) batch
            )
        )
        c.data = ml_collections.ConfigDict(
            dict(
                task="reverse",  # "reverse" | "sort" | "copy"
                vocab_size=32,  # including PAD=0, BOS=1, EOS=2
                min_len=4,  # sequence length range (symbols)
                max_len=16,
                num_train=1_000_000,  # size of the (generated on the fly) training split
            )
        )
        c.eval = ml_collections.ConfigDict(
            dict(
                num_examples=512,  # evaluation split size
                batch_size=256,  # global evaluation batch
            )
        )
        c.label_smoothing = 0.0
        return c

    @staticmethod
    def validate_config(config: ml_collections.ConfigDict) -> None:
        m, stages = config.model, config.mesh.get("stage", 1)
        if not m.pipeline:
            if stages > 1:
                raise ConfigError(f"config: mesh.stage={stages} needs model.pipeline=True")
            return
        if m.pipeline_microbatches < 1:
            raise ConfigError(f"config: 'model.pipeline_microbatches' must be >= 1, got "
                              f"{m.pipeline_microbatches}")
        for key in ("num_encoder_layers", "num_decoder_layers"):
            if stages > 1 and m[key] % stages:
                raise ConfigError(f"config: model.{key}={m[key]} is not divisible by "
                                  f"mesh.stage={stages}")
        if m.dropout > 0:
            raise ConfigError(f"config: model.pipeline=True does not support dropout in training; "
                              f"set model.dropout=0 (got {m.dropout})")
        micro = config.batch_size // config.grad_accum_steps
        for name, size in (("batch_size / grad_accum_steps", micro),
                           ("eval.batch_size", config.eval.batch_size)):
            if size % m.pipeline_microbatches:
                raise ConfigError(f"config: {name} = {size} is not divisible by "
                                  f"model.pipeline_microbatches={m.pipeline_microbatches}")

    def __init__(self, config: ml_collections.ConfigDict, dtype: Any):
        super().__init__(config, dtype)
        self.model = Seq2SeqTransformer(
            vocab_size=config.data.vocab_size, dtype=dtype, pad_id=data.PAD_ID, **config.model
        )

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

    def eval_source(self):
        return self._source("eval", self.config.eval.num_examples)

    def model_inputs(self, batch):
        return dict(inputs=batch["inputs"], decoder_inputs=shift_right(batch["targets"]))

    def loss(self, params, model_state, batch, rng):
        logits = self.model.apply(
            {"params": params, **model_state},
            **self.model_inputs(batch),
            train=True,
            rngs={"dropout": rng},
        )
        targets = batch["targets"]
        loss = cross_entropy(
            logits, targets, ignore_index=data.PAD_ID, label_smoothing=self.config.label_smoothing
        )
        real = targets != data.PAD_ID
        accuracy = jnp.sum((logits.argmax(-1) == targets) & real) / jnp.maximum(real.sum(), 1)
        return loss, ({"token_accuracy_teacher_forced": accuracy}, model_state)

    def predict(self, variables, inputs: jax.Array) -> jax.Array:
        """Greedy decoding: inputs [B, S] -> predicted targets [B, S + 1]."""
        memory = self.model.apply(variables, inputs, method=Seq2SeqTransformer.encode)

        def logits_fn(tokens):
            return self.model.apply(
                variables, tokens, memory, inputs, method=Seq2SeqTransformer.decode
            )

        return greedy_decode(
            logits_fn, inputs.shape[0], inputs.shape[1] + 1, data.BOS_ID, data.EOS_ID, data.PAD_ID
        )

    def eval_outputs(self, variables, batch):
        predicted, targets = self.predict(variables, batch["inputs"]), batch["targets"]
        real = (targets != data.PAD_ID) & batch["valid"][:, None]
        correct = (predicted == targets) & real
        return {
            "correct_tokens": correct.sum(),
            "tokens": real.sum(),
            "correct_sequences": jnp.sum(jnp.all(correct == real, axis=1) & batch["valid"]),
            "sequences": batch["valid"].sum(),
        }

    def finalize_eval(self, sums):
        return {
            "token_accuracy": float(sums["correct_tokens"] / max(sums["tokens"], 1)),
            "sequence_accuracy": float(sums["correct_sequences"] / max(sums["sequences"], 1)),
        }

    def images(self, variables, batch):
        """Correctness map of 16 examples: a row each; green right token, red wrong, black padding."""
        predicted = np.asarray(self.predict(variables, batch["inputs"][:16]))
        targets = np.asarray(batch["targets"][:16])
        real = targets != data.PAD_ID
        picture = np.zeros((targets.shape[0], targets.shape[1], 3), np.uint8)
        picture[real & (predicted == targets)] = (40, 180, 60)
        picture[real & (predicted != targets)] = (220, 40, 40)
        return {"eval_predictions": np.kron(picture, np.ones((8, 8, 1), np.uint8))}
