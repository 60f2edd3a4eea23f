"""The interface between a model family and the generic trainer.

A task owns what is specific to a problem: its config fields (`model`, declared on the model's
dataclasses, see `mlx_research.config_fields`; `data`; its default `evals`), the model, the
training data and its augmentation, the loss and the kinds of evaluator it can build. The
trainer owns everything else (state, optimizer, sharding, the jitted steps, checkpoints,
metrics, when to evaluate). `loss` and every evaluator's `predict` run inside jitted steps and
must be pure functions of arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mlx_research.config_checks import check_model_config, model_config
from mlx_research.evaluation.base import Evaluator

Batch = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class EvaluatorKind:
    """An evaluator a `config.evals` entry names by its `type`.

    Attributes:
      defaults: the kind's own settings and their defaults (e.g. `num_examples`, `beam_size`);
        every entry also has the trainer's `type`, `every_steps` and `batch_size`
        (`config.EVALUATOR_FIELDS`), whose defaults a kind may change here too.
      build: `(task, settings) -> Evaluator`, `settings` the entry with every field filled in.
      ranges: `{setting: (low, high)}`, closed, None = unbounded (checked as
        `evals.<name>.<setting>`).
      choices: `{setting: allowed values}`.
    """

    defaults: Mapping[str, Any]
    build: Callable[[Task, ml_collections.ConfigDict], Evaluator]
    ranges: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    choices: Mapping[str, tuple] = dataclasses.field(default_factory=dict)


class Task:
    """Base class; subclasses set `model_parts`, build `self.model` in `__init__` (with
    `config_checks.from_config`) and implement the abstract methods.

    Attributes:
      model_parts: the dataclasses whose `config_fields` make up ``config.model``: the model,
        then e.g. its criterion and postprocess.
      model: the model.
    """

    model_parts: tuple[type, ...] = ()
    model: nn.Module

    def __init__(self, config: ml_collections.ConfigDict, dtype: Any):
        self.config = config
        self.dtype = dtype

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """The task's fields: here `model` (`model_config` of `model_parts`); subclasses add `data`
        (merged into the trainer's `data.num_workers`) and `evals`, the evaluators a run has by
        default, each as `{"type": kind}` (or with some settings; the rest take the kind's
        defaults)."""
        c = ml_collections.ConfigDict()
        c.model = model_config(*cls.model_parts)
        return c

    @classmethod
    def validate_config(cls, config: ml_collections.ConfigDict) -> None:
        """Raises mlx_research.errors.ConfigError for a `model` field outside its range or
        choices; subclasses add task-specific inconsistencies, including data paths that do not
        exist (one line naming the key and the path)."""
        check_model_config(config, *cls.model_parts)

    def prepare_workdir(self, workdir: str) -> None:
        """Called once by the trainer (primary process) before training or evaluation: writes files
        a reader of the workdir needs besides checkpoints (e.g. a vocabulary), or checks that those a
        previous run wrote still agree. Default: nothing."""
        del workdir

    def train_source(self) -> Any:
        """Random-access source (len, getitem) of training examples (dicts of numpy arrays)."""
        raise NotImplementedError

    def train_transform(
        self, example: dict[str, np.ndarray], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Training augmentation of one example. `rng` is seeded by the run seed and the
        example's position in the training stream, so a resumed run draws the same numbers."""
        del rng
        return example

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        """Model variables ({"params": ..., "batch_stats": ...}) for an example batch."""
        return self.model.init(
            {"params": rng, "dropout": rng}, **self.model_inputs(batch), train=False
        )

    def model_inputs(self, batch: Batch) -> dict[str, Any]:
        """Keyword arguments of `self.model` taken from a batch."""
        raise NotImplementedError

    def loss(
        self, params: Any, model_state: dict[str, Any], batch: Batch, rng: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], tuple[dict[str, jax.Array], dict[str, Any]]]:
        """Training loss as a sum and its normaliser.

        Returns ((loss_sum, weight), (metrics, updated non-param collections)): `loss_sum` summed
        over the batch's examples (tokens, boxes), `weight` what it is to be divided by (number of
        tokens, boxes, examples). The trainer adds both up over micro-batches and devices and
        divides once, so gradient accumulation and data parallelism give the full-batch gradient
        for any normalisation. `rng` differs at every step and micro-batch (dropout).
        """
        raise NotImplementedError

    @classmethod
    def evaluator_kinds(cls) -> dict[str, EvaluatorKind]:
        """{type: EvaluatorKind}: the evaluators `config.evals` entries can name. Default: none."""
        return {}
