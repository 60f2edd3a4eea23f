"""Evaluators: per-example predictions on the devices, scores on the host.

An evaluator owns its data (`source` + deterministic `transform`), a pure per-example
`predict(variables, batch)` that its evaluation loop (`mlx_research.evaluation.loop`) jits once
per run, and host-side scoring. For every evaluation the loop runs

    evaluator.reset()
    for batch in eval pipeline(source, transform):      # each example has "index" and "valid"
        predictions = jitted predict(variables, batch)   # dict of [B, ...] arrays
        # gathered from every process; process 0 keeps the rows with valid=True
        evaluator.update(predictions, indices)           # process 0 only
    scores = evaluator.result()                          # process 0 only; {metric: float}

Ground truth that is not an array (file names, report text, COCO annotations) stays with the
evaluator on the host and is looked up by example index in `update`. Padded rows of the last batch
never reach `update`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

from mlx_research.data.pipeline import RandomAccessSource

Batch = Mapping[str, Any]
Predictions = dict[str, np.ndarray]


class Evaluator:
    """Base class. Subclasses set `self.source` and implement `predict`, `update`, `result`."""

    source: RandomAccessSource

    def transform(self, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Eval transform of one example (deterministic; e.g. resize). Default: unchanged."""
        return example

    def predict(self, variables: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
        """Pure and jittable: per-example predictions, every leaf with the batch as axis 0."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forgets the updates of a previous evaluation."""

    def update(self, predictions: Predictions, indices: np.ndarray) -> None:
        """Host side: predictions of the examples `indices` ([n] int, valid rows only)."""
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        """Scores of everything `update` has seen since `reset`."""
        raise NotImplementedError

    def images(self, predictions: Predictions, batch: Batch) -> dict[str, np.ndarray]:
        """Optional pictures ([H, W, 3] uint8) of the first evaluation batch, made on the host
        from the same `predict` outputs (`batch`: process 0's rows, numpy)."""
        del predictions, batch
        return {}

    def write_outputs(self, directory: str, step: int) -> None:
        """Optional files after `result()` (process 0), e.g. generated reports beside their
        references, under `directory` = <workdir>/eval/<evaluator name>. Default: nothing."""
        del directory, step


class SumEvaluator(Evaluator):
    """Sums per-example predictions over the split, then `finalize` turns the sums into scores.

    Every prediction leaf is summed over all its axes (e.g. `correct: [B, T] bool` gives the
    number of correct tokens); `sums["count"]` is the number of examples. `finalize(sums)` returns
    `{metric: float}`.
    """

    def __init__(
        self,
        source: RandomAccessSource,
        predict: Callable[[dict[str, Any], Batch], dict[str, jax.Array]],
        finalize: Callable[[dict[str, float]], dict[str, float]],
        images: Callable[[Predictions, Batch], dict[str, np.ndarray]] | None = None,
    ):
        self.source = source
        self._predict, self._finalize, self._images = predict, finalize, images
        self.sums: dict[str, float] = {}

    def predict(self, variables, batch):
        return self._predict(variables, batch)

    def reset(self) -> None:
        self.sums = {}

    def update(self, predictions: Predictions, indices: np.ndarray) -> None:
        for key, value in predictions.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(np.sum(value, dtype=np.float64))
        self.sums["count"] = self.sums.get("count", 0.0) + len(indices)

    def result(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._finalize(dict(self.sums)).items()}

    def images(self, predictions, batch):
        return self._images(predictions, batch) if self._images else {}
