"""The interface between a model family and the generic trainer.

A task owns what is specific to a problem: its config fields (`model`, `data`, `eval`), the model,
the datasets, the loss and the evaluation. The trainer owns everything else (state, optimizer,
sharding, the jitted steps, checkpoints, metrics). All methods called inside the jitted steps
(`loss`, `eval_outputs`) must be pure functions of arrays.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import ml_collections
import numpy as np

Batch = Mapping[str, Any]


class Task:
    """Base class; subclasses set `self.model` in `__init__` and implement the abstract methods."""

    model: nn.Module

    def __init__(self, config: ml_collections.ConfigDict, dtype: Any):
        self.config = config
        self.dtype = dtype

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        """The task's fields: a ConfigDict with `model`, `data` and `eval` sub-dicts."""
        raise NotImplementedError

    @staticmethod
    def validate_config(config: ml_collections.ConfigDict) -> None:
        """Raises mlx_research.train.config.ConfigError for task-specific inconsistencies."""

    def train_source(self) -> Any:
        """Random-access source (len, getitem) of training examples (dicts of numpy arrays)."""
        raise NotImplementedError

    def eval_source(self) -> Any:
        """Random-access source of evaluation examples."""
        raise NotImplementedError

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
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
        """Training loss: returns (scalar loss, (metrics, updated non-param collections)).

        The trainer logs the returned loss as "loss" next to `metrics` and stops the run when it,
        the gradients or the updated parameters are not finite.
        """
        raise NotImplementedError

    def eval_outputs(self, variables: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
        """Per-batch sums (jitted); the trainer adds them up over the evaluation split."""
        raise NotImplementedError

    def finalize_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics from the summed `eval_outputs`."""
        raise NotImplementedError

    def images(self, variables: dict[str, Any], batch: Batch) -> dict[str, np.ndarray]:
        """Optional pictures of predictions ([H, W, 3] uint8) for one evaluation batch."""
        return {}
